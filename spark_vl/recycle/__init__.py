"""SPARK: recycle verified rollouts into judge and self-reflection prompts."""

from spark_vl.recycle.core import RecycleResult, recycle

__all__ = ["RecycleResult", "recycle"]
