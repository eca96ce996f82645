"""Rollout engines: sample responses to image prompts behind one protocol (`engines.py`)."""

from spark_vl.rollout.engines import ENGINES, Engines, RolloutEngine

__all__ = ["ENGINES", "Engines", "RolloutEngine"]
