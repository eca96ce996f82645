"""Verifiers: boxed task answers by math equivalence, judge verdicts by label, with deadlines."""

from spark_vl.verify.extract import extract_answer, extract_verdict, normalise, well_formed
from spark_vl.verify.grading import Grade, GradeItem, GradingPool, grade_one, judge_reward, task_reward

__all__ = ["Grade", "GradeItem", "GradingPool", "extract_answer", "extract_verdict", "grade_one",
           "judge_reward", "normalise", "task_reward", "well_formed"]
