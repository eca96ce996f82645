"""Where an iteration's time goes at the default config, and what Prefect and MLflow add.

    .venv/bin/python bench/stage_profile.py [--iterations 10]

The same iterations twice from the same warm-started run directory: once as plain function
calls (`pipeline.run_iteration`), once as the Prefect flow with MLflow tracking (temporary local
Prefect server, SQLite MLflow store in a temporary folder), one after the other in this
process. Seconds per stage come from the flow run's metrics; the orchestration overhead is the
difference of the two wall times (the flow's includes starting Prefect's temporary server,
opening the MLflow run, per-iteration logging and the final model registration). The table is
printed and written to bench/results/stage_profile.md.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    from flows.co_evolve import co_evolve
    from spark_vl import pipeline
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
    ws = pipeline.Workspace(config, plain_dir)
    pipeline.stage_evaluate(ws, 0)
    pipeline.stage_log(ws, 0)
    for k in range(1, args.iterations + 1):
        pipeline.run_iteration(config, plain_dir, k, ws)
    ws.close()
    plain_s = time.perf_counter() - start

    start = time.perf_counter()
    co_evolve(config=config, run_name="flow")
    flow_s = time.perf_counter() - start

    rows = [r for r in pipeline.metric_rows(flow_dir) if r["iteration"] > 0]
    stage_means = {s: statistics.mean(r.get(f"time/{s}_s", 0.0) for r in rows) for s in STAGES}
    overhead = flow_s - plain_s
    lines = [f"# Stage profile, configs/tiny.yaml ({date.today()}, {platform.machine()}, 1 torch thread)", "",
             f"{args.iterations} iterations after the warm-up; evaluation every {config.eval.every} iterations "
             "(its mean below is spread over all iterations).", "",
             "| stage | seconds per iteration (mean) | share |", "|---|---|---|"]
    per_iteration = flow_s / args.iterations
    for stage, seconds in stage_means.items():
        lines.append(f"| {stage} | {seconds:.2f} | {seconds / per_iteration:.0%} |")
    lines += [f"| Prefect + MLflow (flow minus plain calls) | {overhead / args.iterations:.2f} | "
              f"{overhead / flow_s:.0%} |", "",
              f"Wall time: plain function calls {plain_s:.1f} s, Prefect flow with MLflow {flow_s:.1f} s "
              f"(orchestration overhead {overhead:.1f} s = {overhead / flow_s:.1%} of the flow run).", "",
              "Command: `.venv/bin/python bench/stage_profile.py" + (f" --iterations {args.iterations}"
                                                                   if args.iterations != 10 else "") + "`"]
    publish("stage_profile", "\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
