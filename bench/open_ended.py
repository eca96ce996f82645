"""Self-judged rewards on open-ended prompts, side by side with no training on them.

    .venv/bin/python bench/open_ended.py [--seeds 0 1 2] [--parallel 2] [--iterations 120]

configs/tiny.yaml on three families, colour and count (verifiable) and `describe` (open-ended: "Name
a colour you see in the image", two shapes of two colours, no answer in the data). Two arms per
seed, each one `spark-vl run` in runs/bench-open-<arm>-s<seed> with one torch thread: `judged`
rewards the describe prompts with the policy's own judge snapshot (`spark.judge_reward`) under a
guard of anchor accuracy 0.6, `judged-0.75` the same under the default guard
(`anchor_floor=0.75`), `left-out` never trains on them (`spark.judge_reward.enabled=false`);
everything else is equal. What is
measured is the hidden score: each held-out describe answer (greedy) scored by its rubric
(`open_ended_score`: it names a colour of one of the two shapes), which no training reward ever
sees. A policy that answers any colour of the palette scores 2 / 8 at difficulty 3; one that reads
the image scores 1. Finished runs are reused. The table goes to bench/results/open_ended.md, the
curves to open_ended.png.
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
from pathlib import Path

from report import RESULTS, plot_curves, publish

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from spark_vl.data.tasks import open_ended_score  # noqa: E402

ARMS = {"judged": ["spark.judge_reward.enabled=true", "spark.judge_reward.anchor_floor=0.6"],
        "judged-0.75": ["spark.judge_reward.enabled=true", "spark.judge_reward.anchor_floor=0.75"],
        "left-out": ["spark.judge_reward.enabled=false"]}
FAMILIES = "data.builtin.families=[colour,count,describe]"


def run_one(arm: str, seed: int, iterations: int) -> Path:
    name = f"bench-open-{arm}-s{seed}"
    log = ROOT / "runs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "spark_vl.cli", "run", "configs/tiny.yaml", "--run-name", name,
               "--set", FAMILIES, *[arg for override in ARMS[arm] for arg in ("--set", override)],
               "--set", f"train.iterations={iterations}", "--set", f"model.tiny.seed={seed}",
               "--set", f"train.seed={seed}", "--set", f"rollout.seed={seed}"]
    with open(log, "w") as handle:
        result = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=handle,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}); see {log}")
    return ROOT / "runs" / name


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric_rows(run_dir: Path, iterations: int) -> list[dict]:
    """The run's metrics up to `iterations` (a run taken further is the same up to there: nothing
    of an iteration depends on how many follow)."""
    return [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["iteration"] <= iterations]


def evaluations(run_dir: Path, iterations: int) -> list[dict]:
    """Per evaluation: its iteration, metrics, and the hidden score and boxed share of the held-out
    open-ended answers."""
    rubrics = {r["id"]: r["rubric"] for r in read_jsonl(run_dir / "data" / "eval.jsonl") if "rubric" in r}
    rows = []
    for row in metric_rows(run_dir, iterations):
        if "eval/task_acc" not in row:
            continue
        answers = [r for r in read_jsonl(run_dir / f"iter-{row['iteration']:04d}" / "eval_samples.jsonl")
                   if r["kind"] == "solve_open"]
        rows.append({**row, "hidden": statistics.mean(open_ended_score(r["answer"], rubrics[r["id"]]) for r in answers),
                     "open_boxed": statistics.mean(r["answer"] is not None for r in answers)})
    return rows


def last3(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows[-3:] if key in r and not math.isnan(r[key])]
    return statistics.mean(values) if values else math.nan


def spread(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


COLUMNS = [("hidden", "hidden score (open-ended)"), ("open_boxed", "open-ended answers boxed"),
           ("eval/open_self_judged", "own judge's P(Yes), open-ended"), ("eval/task_acc", "task acc (verifiable)"),
           ("eval/judge_pointwise_acc", "judge pointwise")]


def table(seeds: list[int], evals: dict[tuple[str, int], list[dict]], dirs: dict[tuple[str, int], Path],
          iterations: int) -> str:
    lines = ["| arm | when | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for arm in ARMS:
        runs = [evals[(arm, s)] for s in seeds]
        for when, pick in (("first", lambda rows, key: rows[0].get(key, math.nan)),
                           ("last", lambda rows, key: rows[-1].get(key, math.nan)), ("last 3", last3)):
            lines.append(f"| {arm} | {when} | " + " | ".join(spread([pick(rows, key) for rows in runs])
                                                           for key, _ in COLUMNS) + " |")
        worst = [min(last3(rows, key) for rows in runs) for key, _ in COLUMNS]
        lines.append(f"| {arm} | worst seed, last 3 | " + " | ".join(f"{v:.3f}" for v in worst) + " |")
    lines += ["", "| seed | arm | hidden score, last 3 | against left-out | judge snapshot in use (share of "
                  "iterations) | anchor accuracy (mean) |", "|---|---|---|---|---|---|"]
    for seed in seeds:
        left_out = last3(evals[("left-out", seed)], "hidden")
        for arm in [a for a in ARMS if a != "left-out"]:
            judged = last3(evals[(arm, seed)], "hidden")
            verify = [r for r in metric_rows(dirs[(arm, seed)], iterations) if "judge_reward/in_use" in r]
            lines.append(f"| {seed} | {arm} | {judged:.3f} | {judged - left_out:+.3f} | "
                         f"{statistics.mean(r['judge_reward/in_use'] for r in verify):.2f} | "
                         f"{statistics.mean(r['judge_reward/anchor_acc'] for r in verify):.3f} |")
    return "\n".join(lines)


def plot(seeds: list[int], evals: dict[tuple[str, int], list[dict]], out: Path) -> Path:
    colours = {"judged": "tab:blue", "judged-0.75": "tab:green", "left-out": "tab:orange"}
    series = [(arm if i == 0 else None, colours[arm], "-", evals[(arm, seed)])
              for arm in ARMS for i, seed in enumerate(seeds)]
    return plot_curves([("hidden", "hidden score, held-out open-ended"), ("eval/task_acc", "task accuracy, verifiable")],
                       series, f"self-judged rewards on open-ended prompts, {len(seeds)} seeds", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--iterations", type=int, default=120)
    args = parser.parse_args()
    runs = [(arm, seed) for seed in args.seeds for arm in ARMS]
    with ThreadPoolExecutor(args.parallel) as pool:
        dirs = dict(zip(runs, pool.map(lambda run: run_one(*run, args.iterations), runs)))
    evals = {run: evaluations(run_dir, args.iterations) for run, run_dir in dirs.items()}
    text = (f"# Self-judged rewards on open-ended prompts: tiny.yaml + describe ({args.iterations} iterations)\n\n"
            f"Seeds {' '.join(map(str, args.seeds))}, one torch thread; mean ± standard deviation over seeds, and "
            "the worst seed. Arms: `judged`, the describe prompts rewarded by the judge snapshot while its anchor "
            "accuracy is at least 0.6; `judged-0.75`, the same with the default floor 0.75; `left-out`, no training "
            "on them (their batch share goes to verifiable prompts, so its task accuracy is not like for like). The "
            "hidden score: held-out describe answers that name a colour of the image (rubric, never a reward).\n\n"
            + table(args.seeds, evals, dirs, args.iterations)
            + f"\n\nCommand: `.venv/bin/python bench/open_ended.py --seeds {' '.join(map(str, args.seeds))} "
            f"--iterations {args.iterations}`")
    publish("open_ended", text)
    plot(args.seeds, evals, RESULTS / "open_ended.png")


if __name__ == "__main__":
    main()
