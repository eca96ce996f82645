"""SPARK against plain GRPO, side by side: same configs, seeds, data and iterations.

    .venv/bin/python bench/coevolution.py [--configs configs/tiny.yaml] [--seeds 0 1 2] [--parallel 2]

Each (config, seed, arm) is one `spark-vl run` (the Prefect flow, tracked in MLflow) in
runs/bench-<config>-<arm>-s<seed>; the arms differ only in `spark.enabled`. A seed sets the tiny
model's weights, the warm-up, the rollout sampling and the recycling; the data is the same for
all. Finished runs are reused, so an interrupted benchmark continues where it stopped. The table
(first and last evaluation, mean and spread over seeds) is printed, written to
bench/results/coevolution-<config>.md with a PNG of both arms' curves, and logged to MLflow
(experiment spark-vl-bench).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

from report import RESULTS, publish

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"spark": "true", "grpo": "false"}
COLUMNS = [("eval/task_acc", "task acc"), ("eval/task_acc_reflect", "task acc + self-reflection"),
           ("eval/well_formed", "well-formed answers"), ("eval/judge_pointwise_acc", "judge pointwise"),
           ("eval/judge_same_form_acc", "judge on look-alikes"), ("eval/judge_restated", "judge quotes the answer"),
           ("eval/judge_pairwise_acc", "judge pairwise"), ("eval/judge_own_wrong_acc", "judge on own wrong answers")]


def run_name(config: Path, arm: str, seed: int) -> str:
    return f"bench-{config.stem}-{arm}-s{seed}"


def run_one(config: Path, arm: str, seed: int) -> Path:
    name = run_name(config, arm, seed)
    log = ROOT / "runs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "spark_vl.cli", "run", str(config), "--run-name", name,
               "--set", f"spark.enabled={ARMS[arm]}", "--set", f"model.tiny.seed={seed}",
               "--set", f"train.seed={seed}", "--set", f"rollout.seed={seed}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as handle:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}); see {log}")
    return ROOT / "runs" / name


def evaluations(run_dir: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "eval/task_acc" in r]


def present(values: list[float]) -> list[float]:
    """The values that were measured (a run without an evaluation there gives NaN)."""
    return [v for v in values if not math.isnan(v)]


def mean_of(values: list[float]) -> float:
    values = present(values)
    return statistics.mean(values) if values else math.nan


def mean_spread(values: list[float]) -> str:
    values = present(values)
    if not values:
        return "n/a"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def table(config: Path, seeds: list[int], evals: dict[tuple[str, int], list[dict]]) -> tuple[str, dict[str, float]]:
    last_iteration = evals[("spark", seeds[0])][-1]["iteration"]
    lines = [f"# SPARK vs plain GRPO: {config.name} ({date.today()})", "",
             f"Seeds {', '.join(map(str, seeds))}; mean ± standard deviation over seeds; held-out sets of the "
             f"config; first evaluation (iteration 0, the same starting policy for both arms), last "
             f"(iteration {last_iteration}) and the mean of each seed's last three (one evaluation swings by "
             f"0.1-0.2 from the next: the last alone is a noisy point).", "",
             "| arm | when | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    summary: dict[str, float] = {}
    for arm in ARMS:
        for when, rows in (("first", slice(0, 1)), ("last", slice(-1, None)), ("last 3", slice(-3, None))):
            cells = []
            for key, _ in COLUMNS:
                values = [mean_of([r.get(key, math.nan) for r in evals[(arm, s)][rows]]) for s in seeds]
                cells.append(mean_spread(values))
                if not math.isnan(mean := mean_of(values)):
                    summary[f"{arm}/{when.replace(' ', '')}/{key.removeprefix('eval/')}"] = mean
            lines.append(f"| {'SPARK' if arm == 'spark' else 'GRPO'} | {when} | " + " | ".join(cells) + " |")
    lines += ["", *goals(seeds, evals)]
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    lines += ["", f"Command: `.venv/bin/python bench/coevolution.py --configs {shown} "
              f"--seeds {' '.join(map(str, seeds))}`"]
    return "\n".join(lines), summary


def goals(seeds: list[int], evals: dict[tuple[str, int], list[dict]]) -> list[str]:
    """The issue's targets, each checked on these runs: met or not, with the numbers behind it."""
    def value(arm, seed, index, key):
        return evals[(arm, seed)][index].get(key, math.nan)

    task_gain = [value("spark", s, -1, "eval/task_acc") - value("spark", s, 0, "eval/task_acc") for s in seeds]
    formed = min(r.get("eval/well_formed", math.nan) for rows in evals.values() for r in rows)
    same_form = [value("spark", s, -1, "eval/judge_same_form_acc") for s in seeds]
    grpo_judge = [value("grpo", s, -1, "eval/judge_pointwise_acc") - value("grpo", s, 0, "eval/judge_pointwise_acc")
                  for s in seeds]
    reflect = {arm: mean_of([value(arm, s, -1, "eval/task_acc_reflect") - value(arm, s, -1, "eval/task_acc")
                          for s in seeds]) for arm in ARMS}
    checks = [
        (formed >= 0.95, f"well-formed answers at every evaluation of every run >= 0.95: lowest {formed:.3f}"),
        (min(task_gain) >= 0.10, "SPARK task accuracy +0.10 over iteration 0 in each seed: "
         + ", ".join(f"{g:+.3f}" for g in task_gain)),
        (min(same_form) >= 0.75, "SPARK judge on look-alikes >= 0.75 in each seed: "
         + ", ".join(f"{v:.3f}" for v in same_form)),
        (max(grpo_judge) <= 0.03, "plain GRPO judge pointwise rises <= 0.03: "
         + ", ".join(f"{g:+.3f}" for g in grpo_judge)),
        (reflect["spark"] > 0 >= reflect["grpo"], f"self-reflection over greedy, mean of seeds: SPARK "
         f"{reflect['spark']:+.3f}, plain GRPO {reflect['grpo']:+.3f} (SPARK above 0, GRPO not)"),
    ]
    return ["Targets:", ""] + [f"- {'met' if ok else 'NOT met'}: {text}" for ok, text in checks]


def plot(config: Path, seeds: list[int], evals: dict[tuple[str, int], list[dict]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("eval/task_acc", "held-out task accuracy"), ("eval/task_acc_reflect", "task + self-reflection"),
            ("eval/judge_pointwise_acc", "judge pointwise accuracy"),
            ("eval/judge_same_form_acc", "judge on look-alike wrong answers")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4))
    for ax, (key, title) in zip(axes, keys):
        for arm, colour in (("spark", "tab:blue"), ("grpo", "tab:orange")):
            for seed in seeds:
                rows = evals[(arm, seed)]
                ax.plot([r["iteration"] for r in rows], [r.get(key, math.nan) for r in rows], color=colour,
                        alpha=0.8, marker="o", markersize=3,
                        label=("SPARK" if arm == "spark" else "plain GRPO") if seed == seeds[0] else None)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{config.name}: seeds {', '.join(map(str, seeds))}")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/tiny.yaml"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one core each)")
    args = parser.parse_args()
    from spark_vl import tracking

    for config in [(ROOT / c).resolve() for c in args.configs]:
        jobs = [(arm, seed) for seed in args.seeds for arm in ARMS]
        with ThreadPoolExecutor(args.parallel) as pool:
            run_dirs = dict(zip(jobs, pool.map(lambda job: run_one(config, *job), jobs)))
        evals = {job: evaluations(run_dir) for job, run_dir in run_dirs.items()}
        text, summary = table(config, args.seeds, evals)
        md = publish(f"coevolution-{config.stem}", text)
        png = plot(config, args.seeds, evals, RESULTS / f"coevolution-{config.stem}.png")
        tracking.log_summary("spark-vl-bench", f"coevolution-{config.stem}", summary, [md, png],
                             {"seeds": " ".join(map(str, args.seeds))})


if __name__ == "__main__":
    main()
