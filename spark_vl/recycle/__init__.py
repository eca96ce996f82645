"""SPARK: recycle verified rollouts into judge and self-reflection prompts."""

from spark_vl.recycle.core import (POSITIVE_LABELS, RecycleResult, Templates, pairwise_judge_sample,
                                   pointwise_judge_sample, recycle, reflection_sample, reply_is_intact)

__all__ = ["POSITIVE_LABELS", "RecycleResult", "Templates", "pairwise_judge_sample", "pointwise_judge_sample",
           "recycle", "reflection_sample", "reply_is_intact"]
