"""Chaos: SIGKILL a real `spark-vl run` at random moments, rerun it, check that nothing was lost.

    .venv/bin/python bench/chaos.py [--kills 30] [--per-run 10] [--seed 0] [--iterations 12]

Runs of the default config (fewer iterations, one seed each) until `--kills` SIGKILLs have landed:
for each, an uninterrupted reference run, then the same run started again and again and
SIGKILLed, whole process group, after a random delay (seeded; spread so that the kills fall in
start-up and in every stage), at most `--per-run` times, then rerun to the end. Checked after the
final rerun, as tests/test_resume.py does at fault points:

- every iteration once in metrics.jsonl and once in MLflow's history; one MLflow run, FINISHED;
- one registry version (registered at the end), aliases candidate and champion on it;
- no half-written file left;
- the same final policy weights and metrics.jsonl (timings aside) as the reference run.

The table goes to bench/results/chaos.md. Unlike the tests, this picks its moments with a clock:
that is the point of it, and why it is a benchmark and not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from report import publish

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "runs" / "chaos"


def command(run_name: str, seed: int, iterations: int) -> list[str]:
    return [sys.executable, "-m", "spark_vl.cli", "run", str(WORK / "tiny.yaml"), "--run-name", run_name,
            "--set", f"train.iterations={iterations}", "--set", "eval.every=4",
            "--set", f"orchestration.runs_dir={WORK}", "--set", f"tracking.registered_model=chaos-{run_name}",
            "--set", f"model.tiny.seed={seed}", "--set", f"train.seed={seed}", "--set", f"rollout.seed={seed}"]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{WORK / 'mlflow.db'}",
            "PREFECT_HOME": str(WORK / "prefect")}


def run_to_end(run_name: str, seed: int, iterations: int, log: Path) -> float:
    start = time.perf_counter()
    with open(log, "a") as handle:
        result = subprocess.run(command(run_name, seed, iterations), cwd=ROOT, env=environment(), stdout=handle,
                                stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"{run_name} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - start


def kill_after(run_name: str, seed: int, iterations: int, delay_s: float, log: Path) -> bool:
    """Start the run, SIGKILL its process group after `delay_s`; False if it finished first."""
    with open(log, "a") as handle:
        process = subprocess.Popen(command(run_name, seed, iterations), cwd=ROOT, env=environment(), stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=delay_s)
            return False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True


def progress(run_dir: Path) -> str:
    """Where a run stood: the newest stage output in its newest iteration folder."""
    folders = sorted(run_dir.glob("iter-*"))
    if not folders:
        return "in the warm-up" if not (run_dir / "model" / "policy-0000").exists() else "iteration 0"
    files = sorted((p for p in folders[-1].iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
    return f"{folders[-1].name}/{files[-1].name}" if files else folders[-1].name


def without_timings(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: "nan" if v != v else v for k, v in r.items() if not k.startswith(("time/", "throughput/"))}
            for r in rows]


def invariants(run_name: str, reference: Path, iterations: int) -> dict[str, bool]:
    import mlflow
    from safetensors.torch import load_file

    run_dir = WORK / run_name
    client = mlflow.MlflowClient(environment()["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("spark-vl").experiment_id],
                              filter_string=f"tags.`spark_vl.run_dir` = '{run_dir.resolve()}'")
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "iteration")] if runs else []
    versions = client.search_model_versions(f"name='chaos-{run_name}'")
    aliases = {alias: client.get_model_version_by_alias(f"chaos-{run_name}", alias).version
               for alias in ("candidate", "champion")} if versions else {}
    final = f"model/policy-{iterations:04d}/model.safetensors"
    weights, expected = load_file(run_dir / final), load_file(reference / final)
    return {
        "metrics.jsonl: each iteration once": [r["iteration"] for r in without_timings(run_dir)]
        == list(range(iterations + 1)),
        "MLflow: one run, FINISHED, each iteration once": len(runs) == 1 and runs[0].info.status == "FINISHED"
        and steps == list(range(iterations + 1)),
        "registry: one version, candidate and champion": len(versions) == 1
        and set(aliases.values()) == {versions[0].version},
        "no partial file": not [p for p in run_dir.rglob(".*") if p.name.endswith((".tmp", ".partial"))],
        "same weights as uninterrupted": weights.keys() == expected.keys()
        and all(weights[k].equal(v) for k, v in expected.items()),
        "same metrics as uninterrupted": without_timings(run_dir) == without_timings(reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs that must land, in all")
    parser.add_argument("--per-run", type=int, default=10, help="at most this many per run")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "prefect").mkdir(parents=True)
    shutil.copy(ROOT / "configs" / "tiny.yaml", WORK / "tiny.yaml")  # one config for all runs, whatever happens to it
    rng = random.Random(args.seed)
    lines, results, total_kills, r = [], {}, 0, 0
    while total_kills < args.kills:
        reference, chaotic = f"reference-{r}", f"killed-{r}"
        log = WORK / f"{chaotic}.log"
        seconds = run_to_end(reference, r, args.iterations, WORK / f"{reference}.log")
        landed = []
        # Each attempt restarts (Prefect, model loading) and gets on by a share of the run: the kills
        # spread over start-up and every stage. A run that finishes before its kill ends the series.
        longest = 30.0 + 2 * seconds / args.per_run
        while len(landed) < min(args.per_run, args.kills - total_kills):
            delay = rng.uniform(10.0, longest)
            if not kill_after(chaotic, r, args.iterations, delay, log):
                break
            landed.append(f"{delay:.0f} s: {progress(WORK / chaotic)}")
        run_to_end(chaotic, r, args.iterations, log)
        total_kills += len(landed)
        results[chaotic] = invariants(chaotic, WORK / reference, args.iterations)
        lines.append(f"- run {r} (seed {r}; uninterrupted {seconds:.0f} s), {len(landed)} kills, where each landed "
                     f"(newest output then): " + "; ".join(landed))
        r += 1
    checks = list(next(iter(results.values())))
    table = ["| check | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    table += [f"| {c} | " + " | ".join("yes" if results[name][c] else "**NO**" for name in results) + " |"
              for c in checks]
    text = "\n".join([
        f"# Chaos: SIGKILLs of a real `spark-vl run` ({date.today().isoformat()})", "",
        f"`.venv/bin/python bench/chaos.py --kills {args.kills} --per-run {args.per_run} --iterations "
        f"{args.iterations} --seed {args.seed}`: configs/tiny.yaml with {args.iterations} iterations, evaluation every 4; "
        f"{total_kills} SIGKILLs of the whole process group at random moments (a kill only counts if the run was "
        "still going), then one rerun to the end, compared with an uninterrupted run of the same seed.", "",
        *table, "", *lines])
    publish("chaos", text)
    if not all(all(r.values()) for r in results.values()):
        raise SystemExit("an invariant failed: see the table")


if __name__ == "__main__":
    main()
