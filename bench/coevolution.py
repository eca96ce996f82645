"""SPARK against plain GRPO, side by side: same configs, seeds, data, starting checkpoint.

    .venv/bin/python bench/coevolution.py [--configs configs/tiny.yaml] [--seeds 0 1 2] [--threads 1]
                                          [--threads-seeds 0] [--parallel 2] [--grpo-time-factor 2]
    .venv/bin/python bench/coevolution.py --overlap [--seeds 0 1 2]
    .venv/bin/python bench/coevolution.py --configs my-variant.yaml --grpo-of configs/tiny.yaml

Each (config, seed, threads, arm) is one `spark-vl run` (the Prefect flow, tracked in MLflow) in
runs/bench-<config>-<arm>-s<seed>[-t<threads>] with OMP_NUM_THREADS=<threads> (torch's thread count
changes the floating-point sums, so each thread count is a trajectory of its own). The arms: `spark`,
`grpo` (`spark.enabled=false`, equal iterations) and, with `--grpo-time-factor F`, `grpo-time`:
plain GRPO with F times the iterations, about SPARK's wall-clock (SPARK trains on more sequences per
iteration; the table gives the measured times), at the first thread count only. `--overlap`
compares SPARK with SPARK under `rollout.overlap` (rollouts one step off-policy, sampled beside
training) instead, into coevolution-<config>-overlap.md: do the curves stay within the seeds' noise,
and what does it save in wall-clock. `--threads-seeds`
limits the other thread counts to some seeds (each run costs minutes). `--grpo-of C` takes the plain
GRPO arm from config C's runs (made if missing) for variants that change only `spark:` keys, where
plain GRPO would be the same run again. A seed sets the tiny model's weights, the warm-up,
the sampling and the recycling; the data is the same for all. Finished runs are reused, so an
interrupted benchmark continues where it stopped. The table (first and last evaluations, mean, spread
and worst over seeds), the issue's targets checked one by one, and a PNG of the curves go to
bench/results/coevolution-<config>.md / .png and to MLflow (experiment spark-vl-bench).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import yaml
from report import RESULTS, plot_curves, publish

from spark_vl.config import changes, load_config

ROOT = Path(__file__).resolve().parent.parent
ARMS = {"spark": ["spark.enabled=true"], "grpo": ["spark.enabled=false"], "grpo-time": ["spark.enabled=false"],
        "spark-overlap": ["spark.enabled=true", "rollout.overlap=true"]}
TITLES = {"spark": "SPARK", "grpo": "GRPO", "grpo-time": "GRPO, SPARK's time", "spark-overlap": "SPARK, overlapped"}
COLUMNS = [("eval/task_acc", "task acc"), ("eval/task_acc_reflect", "task acc + self-reflection"),
           ("eval/reflect_fixed", "reflection fixed"), ("eval/reflect_broke", "reflection broke"),
           ("eval/task_acc_reflect_ungated", "task acc + reflection, no gate"),
           ("eval/well_formed", "well-formed answers"), ("eval/judge_pointwise_acc", "judge pointwise"),
           ("eval/judge_same_form_acc", "judge on look-alikes"), ("eval/judge_pairwise_acc", "judge pairwise"),
           ("eval/judge_pairwise_first_rate", "pairwise picks (A)"),
           ("eval/judge_own_wrong_acc", "judge on own wrong answers")]
Run = tuple[str, int, int]  # (arm, seed, threads)


def run_name(config: Path, arm: str, seed: int, threads: int) -> str:
    return f"bench-{config.stem}-{arm}-s{seed}" + (f"-t{threads}" if threads != 1 else "")


def run_one(config: Path, arm: str, seed: int, threads: int, iterations: int) -> Path:
    name = run_name(config, arm, seed, threads)
    log = ROOT / "runs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "spark_vl.cli", "run", str(config), "--run-name", name,
               *[arg for override in ARMS[arm] for arg in ("--set", override)],
               "--set", f"train.iterations={iterations}", "--set", f"model.tiny.seed={seed}",
               "--set", f"train.seed={seed}", "--set", f"rollout.seed={seed}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.monotonic()
    with open(log, "w") as handle:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}); see {log}")
    wall = ROOT / "runs" / f"{name}.wall.json"
    if not wall.exists():  # a finished run reused: its first wall-clock stays
        wall.write_text(json.dumps({"seconds": time.monotonic() - start}))
    return ROOT / "runs" / name


def differences(config: Path, other: Path) -> list[str]:
    """The keys outside `spark:` whose values (the defaults filled in) differ between two config files."""
    return [key for key in changes(load_config(other), load_config(config)) if not key.startswith("spark.")]


def wall_seconds(run_dir: Path) -> float:
    """The wall-clock of the `spark-vl run` that made the run (set-up and warm-up included)."""
    wall = run_dir.parent / f"{run_dir.name}.wall.json"
    return json.loads(wall.read_text())["seconds"] if wall.exists() else math.nan


def metric_rows(run_dir: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def evaluations(run_dir: Path) -> list[dict[str, float]]:
    return [r for r in metric_rows(run_dir) if "eval/task_acc" in r]


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


def last3(rows: list[dict], key: str) -> float:
    """A run's mean of its last three evaluations (one evaluation swings by 0.05-0.2 from the next)."""
    return mean_of([r.get(key, math.nan) for r in rows[-3:]])


def run_seconds(run_dir: Path) -> float:
    """Seconds of a run's stages, warm-up and preparation left out (the same for both arms)."""
    return sum(r.get(f"time/{stage}_s", 0.0) for r in metric_rows(run_dir)
               for stage in ("rollout", "verify", "recycle", "train", "evaluate"))


def trained_sequences(run_dir: Path) -> float:
    """Sequences with a non-zero advantage per iteration, the mean over the run."""
    return mean_of([r["train/sequences"] for r in metric_rows(run_dir) if "train/sequences" in r])


def table(config: Path, runs: list[Run], evals: dict[Run, list[dict]], dirs: dict[Run, Path]) -> tuple[str, dict]:
    arms = [arm for arm in ARMS if any(r[0] == arm for r in runs)]
    trajectories = sorted({(seed, threads) for _, seed, threads in runs})
    title = "SPARK, rollouts synchronous and overlapped" if "spark-overlap" in arms else "SPARK vs plain GRPO"
    lines = [f"# {title}: {config.name} ({date.today()})", "",
             "Runs (seed, torch threads): " + ", ".join(f"({s}, {t})" for s, t in trajectories) + ". Mean ± "
             "standard deviation over them, and the worst of them; held-out sets of the config; first evaluation "
             "(iteration 0, the same starting policy for every arm of a seed), last, and each run's mean of its "
             "last three evaluations." + (" Runs two at a time (`--parallel`), so an overlapped run's wall-clock "
                                            "is measured beside another run, not alone." if "spark-overlap" in arms
                                            else ""), "",
             "| arm | when | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    summary: dict[str, float] = {}
    for arm in arms:
        mine = [run for run in runs if run[0] == arm]
        for when, pick in (("first", lambda rows, key: rows[0].get(key, math.nan)),
                           ("last", lambda rows, key: rows[-1].get(key, math.nan)), ("last 3", last3)):
            cells = []
            for key, _ in COLUMNS:
                values = [pick(evals[run], key) for run in mine]
                cells.append(mean_spread(values))
                if not math.isnan(mean := mean_of(values)):
                    summary[f"{arm}/{when.replace(' ', '')}/{key.removeprefix('eval/')}"] = mean
            lines.append(f"| {TITLES[arm]} | {when} | " + " | ".join(cells) + " |")
        worst = [min(present([last3(evals[run], key) for run in mine]), default=math.nan) for key, _ in COLUMNS]
        lines.append(f"| {TITLES[arm]} | worst run, last 3 | " + " | ".join(f"{v:.3f}" for v in worst) + " |")
    lines += ["", "| arm | iterations | trained sequences per iteration | stage seconds per run | wall-clock "
              "seconds per run |", "|---|---|---|---|---|"]
    for arm in arms:
        mine = [run for run in runs if run[0] == arm]
        lines.append(f"| {TITLES[arm]} | {evals[mine[0]][-1]['iteration']} | "
                     f"{mean_of([trained_sequences(dirs[run]) for run in mine]):.0f} | "
                     f"{mean_of([run_seconds(dirs[run]) for run in mine]):.0f} | "
                     f"{mean_of([wall_seconds(dirs[run]) for run in mine]):.0f} |")
    lines += ["", *(overlap_checks(runs, evals) if "spark-overlap" in arms else goals(runs, evals))]
    return "\n".join(lines), summary


def overlap_checks(runs: list[Run], evals: dict[Run, list[dict]]) -> list[str]:
    """Overlapped SPARK against SPARK, run by run: the difference of each curve's last three
    evaluations beside the seeds' own spread (the standard deviation of synchronous SPARK)."""
    pairs = sorted({(seed, threads) for _, seed, threads in runs})
    lines = ["Overlapped minus synchronous, each run's last 3 evaluations:", ""]
    for key, label in (("eval/task_acc", "task accuracy"), ("eval/judge_pointwise_acc", "judge pointwise"),
                       ("eval/judge_pairwise_acc", "judge pairwise")):
        sync = [last3(evals[("spark", s, t)], key) for s, t in pairs]
        diff = [last3(evals[("spark-overlap", s, t)], key) - v for (s, t), v in zip(pairs, sync)]
        noise = statistics.stdev(sync) if len(sync) > 1 else math.nan
        within = abs(mean_of(diff)) <= noise
        lines.append(f"- {'within' if within else 'NOT within'} the seeds' noise: {label}, mean "
                     f"{mean_of(diff):+.3f} (runs {', '.join(f'{d:+.3f}' for d in diff)}) against a seed spread of "
                     f"{noise:.3f}")
    return lines


def goals(runs: list[Run], evals: dict[Run, list[dict]]) -> list[str]:
    """The issue's targets, each checked on these runs: met or not, with the numbers behind it."""
    pairs = sorted({(seed, threads) for _, seed, threads in runs})

    def each(arm: str, key: str) -> list[float]:
        return [last3(evals[(arm, s, t)], key) for s, t in pairs]

    def shown(values: list[float]) -> str:
        return ", ".join(f"{v:+.3f}" if v < 0 else f"{v:.3f}" for v in values)

    grpo, spark = each("grpo", "eval/task_acc"), each("spark", "eval/task_acc")
    margin = [s - g for s, g in zip(spark, grpo)]
    reflect = {arm: [r - t for r, t in zip(each(arm, "eval/task_acc_reflect"), each(arm, "eval/task_acc"))]
               for arm in ("spark", "grpo")}
    pairwise, same_form = each("spark", "eval/judge_pairwise_acc"), each("spark", "eval/judge_same_form_acc")
    formed = min(r.get("eval/well_formed", math.nan) for rows in evals.values() for r in rows)
    checks = [
        (all(0.5 <= g <= 0.9 for g in grpo), f"plain GRPO's task accuracy (last 3) between 0.50 and 0.90 in every "
         f"run: {shown(grpo)}"),
        (mean_of(margin) >= 0.05 and min(margin) > 0, f"SPARK's task accuracy (last 3) at least GRPO's + 0.05 on the "
         f"mean ({mean_of(margin):+.3f}) and above it in every run: {', '.join(f'{m:+.3f}' for m in margin)}"),
        (mean_of(reflect["spark"]) >= 0.03 and mean_of(reflect["spark"]) > mean_of(reflect["grpo"]),
         f"self-reflection over greedy (last 3), mean of runs, SPARK >= +0.03 and above GRPO: SPARK "
         f"{mean_of(reflect['spark']):+.3f} (worst {min(reflect['spark']):+.3f}), "
         f"GRPO {mean_of(reflect['grpo']):+.3f}"),
        (min(pairwise) >= 0.75,
         f"SPARK's pairwise judge (both orders, last 3) >= 0.75 in every run: {shown(pairwise)}"),
        (min(same_form) >= 0.75, f"SPARK's judge on look-alikes (last 3) >= 0.75 in every run: {shown(same_form)}"),
        (formed >= 0.95, f"well-formed answers at every evaluation of every run >= 0.95: lowest {formed:.3f}"),
    ]
    return ["Targets:", ""] + [f"- {'met' if ok else 'NOT met'}: {text}" for ok, text in checks]


def plot(config: Path, runs: list[Run], evals: dict[Run, list[dict]], out: Path) -> Path:
    keys = [("eval/task_acc", "held-out task accuracy"), ("eval/task_acc_reflect", "task + self-reflection"),
            ("eval/judge_pointwise_acc", "judge pointwise"), ("eval/judge_same_form_acc", "judge on look-alikes"),
            ("eval/judge_pairwise_acc", "judge pairwise (both orders)")]
    colours = {"spark": "tab:blue", "grpo": "tab:orange", "grpo-time": "tab:grey", "spark-overlap": "tab:green"}
    first = {arm: next(run for run in runs if run[0] == arm) for arm, _, _ in runs}
    series = [(TITLES[arm] if first[arm] == (arm, seed, threads) else None, colours[arm],
               "-" if threads == 1 else "--", evals[(arm, seed, threads)]) for arm, seed, threads in runs]
    return plot_curves(keys, series, f"{config.name}: {len({(s, t) for _, s, t in runs})} runs per arm "
                       "(dashed: 2 torch threads)", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/tiny.yaml"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", nargs="+", type=int, default=[1], help="torch thread counts, each a trajectory")
    parser.add_argument("--threads-seeds", nargs="+", type=int,
                        help="seeds run at the thread counts after the first (default: all of --seeds)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--grpo-time-factor", type=float, default=0.0,
                        help="also plain GRPO with this many times the iterations (0: not run)")
    parser.add_argument("--grpo-of", metavar="CONFIG",
                        help="take plain GRPO from this config's runs: for variants that change only spark: keys")
    parser.add_argument("--overlap", action="store_true",
                        help="SPARK against SPARK with rollout.overlap instead of plain GRPO")
    args = parser.parse_args()
    from spark_vl import tracking

    grpo_of = (ROOT / args.grpo_of).resolve() if args.grpo_of else None
    for config in [(ROOT / c).resolve() for c in args.configs]:
        if grpo_of and (keys := differences(config, grpo_of)):
            parser.error(f"--grpo-of {args.grpo_of}: {config.name} differs from it outside spark: in "
                         f"{', '.join(keys)}, so plain GRPO would not be the same run; leave --grpo-of out")
        iterations = yaml.safe_load(config.read_text())["train"]["iterations"]
        arms = ["spark", "spark-overlap"] if args.overlap else (
            ["spark", "grpo"] + (["grpo-time"] if args.grpo_time_factor else []))
        more_seeds = args.threads_seeds or args.seeds
        runs = [(arm, seed, threads) for threads in args.threads for seed in args.seeds for arm in arms
                if threads == args.threads[0] or (arm != "grpo-time" and seed in more_seeds)]
        length = {"spark": iterations, "grpo": iterations, "grpo-time": round(iterations * args.grpo_time_factor),
                  "spark-overlap": iterations}
        with ThreadPoolExecutor(args.parallel) as pool:
            dirs = dict(zip(runs, pool.map(lambda run: run_one(grpo_of if grpo_of and run[0].startswith("grpo")
                                                               else config, *run, length[run[0]]), runs)))
        evals = {run: evaluations(run_dir) for run, run_dir in dirs.items()}
        text, summary = table(config, runs, evals, dirs)
        shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
        text += (f"\n\nCommand: `.venv/bin/python bench/coevolution.py --configs {shown} --seeds "
                 f"{' '.join(map(str, args.seeds))} --threads {' '.join(map(str, args.threads))}"
                 + (f" --threads-seeds {' '.join(map(str, args.threads_seeds))}" if args.threads_seeds else "")
                 + (f" --grpo-time-factor {args.grpo_time_factor:g}" if args.grpo_time_factor else "")
                 + (f" --grpo-of {args.grpo_of}" if args.grpo_of else "")
                 + (" --overlap" if args.overlap else "") + "`"
                 + (f"\n\nPlain GRPO: the runs of {args.grpo_of} (`bench-{grpo_of.stem}-grpo-s<seed>`), the same "
                    f"runs a variant that changes only spark: keys would make." if grpo_of else ""))
        name = f"coevolution-{config.stem}" + ("-overlap" if args.overlap else "")
        md = publish(name, text)
        png = plot(config, runs, evals, RESULTS / f"{name}.png")
        tracking.log_summary("spark-vl-bench", name, summary, [md, png],
                             {"seeds": " ".join(map(str, args.seeds)), "threads": " ".join(map(str, args.threads))})


if __name__ == "__main__":
    main()
