"""A whole run in this process, without Prefect: what tests and benchmarks drive. The Prefect
flow (`flows/co_evolve.py`) calls the same stages as tasks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from spark_vl.config import RunConfig
from spark_vl.pipeline.prepare import prepare_run
from spark_vl.pipeline.stages import (rolls_ahead, stage_evaluate, stage_log, stage_prompts, stage_recycle,
                                      stage_rollout, stage_train, stage_verify)
from spark_vl.workspace import Workspace


def run_iteration(config: RunConfig, run_dir: Path, k: int, ws: Workspace | None = None) -> dict[str, float]:
    """All stages of iteration k; each is skipped when its output is already in run_dir. Under
    `rollout.overlap` the prompts and rollouts of k+1 are made while k trains."""
    ws = ws or Workspace(config, run_dir)
    for stage in (stage_prompts, stage_rollout, stage_verify, stage_recycle):
        stage(ws, k)
    with ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead") as ahead:  # leaving waits for the rollouts
        rollouts = None
        if rolls_ahead(config, k):
            stage_prompts(ws, k + 1)
            rollouts = ahead.submit(stage_rollout, ws, k + 1)
        stage_train(ws, k)
        if rollouts is not None:
            rollouts.result()
    stage_evaluate(ws, k)
    return stage_log(ws, k)


def run(config: RunConfig, run_dir: Path) -> list[dict[str, float]]:
    """Prepare, evaluate the starting policy, then all iterations with a progress bar."""
    prepare_run(config, run_dir)
    ws = Workspace(config, run_dir)
    try:
        stage_evaluate(ws, 0)
        rows = [stage_log(ws, 0)]
        progress = tqdm(range(1, config.train.iterations + 1), desc="SPARK", unit="iter")
        for k in progress:
            row = run_iteration(config, run_dir, k, ws)
            progress.set_postfix(reward=f"{row.get('rollout/reward_mean', 0):.2f}",
                                 judge=f"{row.get('aux/judge_reward_mean', float('nan')):.2f}")
            rows.append(row)
        return rows
    finally:
        ws.close()
