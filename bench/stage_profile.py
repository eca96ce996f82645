"""Where an iteration's time goes at the default config, and what Prefect and MLflow add.

    .venv/bin/python bench/stage_profile.py [--iterations 10]

The same iterations twice from the same warm-started run directory: once as plain function
calls (`pipeline.run_iteration`), once as the Prefect flow with MLflow tracking (temporary local
Prefect server, SQLite MLflow store in a temporary folder), one after the other in this process.

Per iteration, the time outside the stages' own timers is taken in both runs: the plain run's
from its own clock, the flow's from the MLflow timestamps its log task writes at the end of every
iteration. Their difference is what Prefect and MLflow add to an iteration; taking it outside
the stage timers keeps the noise of the stages themselves (training time varies by a second
from one iteration to the next) out of it. One-off costs (starting Prefect's temporary server,
the prepare task, opening the MLflow run; registering the model at the end) are reported
apart. The table is printed and written to bench/results/stage_profile.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from report import publish

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["rollout", "verify", "recycle", "train", "evaluate"]


def untimed(row: dict[str, float], wall_s: float) -> float:
    """An iteration's seconds outside its stages' own timers."""
    return wall_s - sum(row.get(f"time/{stage}_s", 0.0) for stage in STAGES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    from flows.co_evolve import co_evolve
    from spark_vl import layout, pipeline, tracking, workspace
    from spark_vl.config import load_config

    config = load_config(ROOT / "configs" / "tiny.yaml",
                         [f"train.iterations={args.iterations}", f"orchestration.runs_dir={work / 'runs'}",
                          f"train.deepspeed_config={ROOT / 'configs' / 'deepspeed' / 'zero0.json'}"])
    base = work / "base"
    pipeline.prepare_run(config, base)

    plain_dir, flow_dir = work / "plain", work / "runs" / "flow"
    shutil.copytree(base, plain_dir)
    shutil.copytree(base, flow_dir)
    start = time.perf_counter()
    ws = workspace.Workspace(config, plain_dir)
    pipeline.stage_evaluate(ws, 0)
    pipeline.stage_log(ws, 0)
    plain_startup = time.perf_counter() - start
    plain_walls = []
    for k in range(1, args.iterations + 1):
        began = time.perf_counter()
        pipeline.run_iteration(config, plain_dir, k, ws)
        plain_walls.append(time.perf_counter() - began)
    ws.close()
    plain_s = time.perf_counter() - start

    start_clock = time.time()
    start = time.perf_counter()
    run_id = co_evolve(config=config, run_name="flow")
    flow_s = time.perf_counter() - start
    ends = [m.timestamp / 1000 for m in sorted(tracking.client().get_metric_history(run_id, "iteration"),
                                               key=lambda m: m.step)]
    flow_walls = [b - a for a, b in zip(ends, ends[1:])]
    flow_startup, flow_finish = ends[0] - start_clock, start_clock + flow_s - ends[-1]

    plain_rows = [r for r in layout.metric_rows(plain_dir) if r["iteration"] > 0]
    flow_rows = [r for r in layout.metric_rows(flow_dir) if r["iteration"] > 0]
    plain_untimed = statistics.mean(untimed(r, w) for r, w in zip(plain_rows, plain_walls))
    flow_untimed = statistics.mean(untimed(r, w) for r, w in zip(flow_rows, flow_walls))
    overhead = flow_untimed - plain_untimed
    per_iteration = statistics.mean(flow_walls)
    stage_means = {s: statistics.mean(r.get(f"time/{s}_s", 0.0) for r in flow_rows) for s in STAGES}
    lines = [f"# Stage profile, configs/tiny.yaml ({date.today()}, {platform.machine()}, 1 torch thread)", "",
             f"{args.iterations} iterations after the warm-up; evaluation every {config.eval.every} iterations "
             "(its mean below is spread over all iterations). Seconds per iteration in the flow run:", "",
             "| stage | seconds per iteration (mean) | share |", "|---|---|---|"]
    for stage, seconds in stage_means.items():
        lines.append(f"| {stage} | {seconds:.2f} | {seconds / per_iteration:.0%} |")
    lines += [f"| outside the stages, plain calls (prompts, logging to metrics.jsonl, loading files) | "
              f"{plain_untimed:.2f} | {plain_untimed / per_iteration:.0%} |",
              f"| Prefect + MLflow (flow minus plain calls) | {overhead:.2f} | {overhead / per_iteration:.0%} |",
              f"| iteration (flow) | {per_iteration:.2f} | 100% |", "",
              f"Orchestration overhead per iteration: **{overhead:.2f} s = {overhead / per_iteration:.1%}** of an "
              f"iteration ({flow_untimed:.2f} s outside the stage timers in the flow, {plain_untimed:.2f} s in plain "
              "calls).", "",
              f"One-off: before the first iteration (Prefect's temporary server, prepare task, MLflow run, workspace, "
              f"evaluating the starting policy) {flow_startup:.1f} s in the flow against {plain_startup:.1f} s in "
              f"plain calls; after the last (model registration) {flow_finish:.1f} s. Whole runs: plain "
              f"{plain_s:.1f} s, flow {flow_s:.1f} s.", "",
              "Command: `.venv/bin/python bench/stage_profile.py" + (f" --iterations {args.iterations}"
                                                                   if args.iterations != 10 else "") + "`"]
    publish("stage_profile", "\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
