"""Held-out evaluation with test-time self-reflection."""

from spark_vl.evaluate.audit import disagreements
from spark_vl.evaluate.core import evaluate, held_out_digest, held_out_judge_prompts

__all__ = ["disagreements", "evaluate", "held_out_digest", "held_out_judge_prompts"]
