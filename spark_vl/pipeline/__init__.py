"""A run as plain functions over its run directory: prepare it, then per iteration the stages
prompts -> rollout -> verify -> recycle -> train -> evaluate -> log. The Prefect flow
(`flows/co_evolve.py`) calls each stage as a task; `run` drives them in this process."""

from spark_vl.pipeline.grading import grade_groups
from spark_vl.pipeline.local import run, run_iteration
from spark_vl.pipeline.prepare import prepare_run
from spark_vl.pipeline.present import dataset_tables, metrics_markdown, sample_rows
from spark_vl.pipeline.sampling import sample_groups, sample_until_informative, task_prompts
from spark_vl.pipeline.stages import (evaluation_due, held_out_set, rollout_policy, rolls_ahead, stage_evaluate,
                                      stage_log, stage_prompts, stage_recycle, stage_rollout, stage_train, stage_verify)

__all__ = ["dataset_tables", "evaluation_due", "grade_groups", "held_out_set", "metrics_markdown", "prepare_run",
           "rollout_policy", "rolls_ahead", "run", "run_iteration", "sample_groups", "sample_rows",
           "sample_until_informative", "stage_evaluate", "stage_log", "stage_prompts", "stage_recycle",
           "stage_rollout", "stage_train", "stage_verify", "task_prompts"]
