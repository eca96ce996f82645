"""Held-out evaluation with test-time self-reflection."""

from spark_vl.evaluate.core import evaluate, held_out_judge_prompts, solve_prompt, wrong_answers

__all__ = ["evaluate", "held_out_judge_prompts", "solve_prompt", "wrong_answers"]
