"""A whole run in this process, without Prefect: what tests and benchmarks drive. The Prefect
flow (`flows/co_evolve.py`) calls the same stages as tasks."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from spark_vl.config import RunConfig
from spark_vl.pipeline.prepare import prepare_run
from spark_vl.pipeline.stages import ITERATION_STAGES, stage_evaluate, stage_log
from spark_vl.workspace import Workspace


def run_iteration(config: RunConfig, run_dir: Path, k: int, ws: Workspace | None = None) -> dict[str, float]:
    """All stages of iteration k; each is skipped when its output is already in run_dir."""
    ws = ws or Workspace(config, run_dir)
    for stage in ITERATION_STAGES:
        stage(ws, k)
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
