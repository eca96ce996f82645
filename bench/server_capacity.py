"""How many runs at once one Prefect server and one MLflow server sustain.

    .venv/bin/python bench/server_capacity.py [--runs 1 2 4 8 16] [--iterations 5] [--stage-s 0.5]

A `prefect server` and an `mlflow server` (SQLite stores, in a temporary folder) are started once.
For each N, N runs start together, each in a process of its own: a flow of the co-evolve flow's
shape (per iteration the six stage tasks and the log task, the register task at the end) whose
stage tasks sleep `--stage-s` instead of computing, so the machine's CPUs are not what is
measured; what each run asks of the servers is what a real run asks: task-run states, an MLflow
run with every iteration's metrics (`tracking.log_missing_iterations`), a registered version
and the champion's compare-and-move under the flow's global concurrency limit. A run's time is
taken inside its process from the flow's start to its end (imports excluded); its overhead is
that time minus the sleeps. One run before the measured ones makes what every later run finds
(the experiment, the registered model, the concurrency limit). The table gives, per N, the median and worst overhead, the slowdown
against N = 1 and how many runs failed. SQLite serialises writes: a team's PostgreSQL-backed
servers (infra/compose.yaml) sustain at least this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from report import publish

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STAGES = 6  # prompts, rollout, verify, recycle, train, evaluate


def one_run(name: str, iterations: int, stage_s: float, work: Path) -> None:
    """A child process: import, say ready, wait for go, run the synthetic flow, print its time."""
    from prefect import flow, task

    from flows.co_evolve import _champion_lock
    from spark_vl import tracking
    from spark_vl.config import load_config

    @task(name="stage")
    def stage(seconds: float) -> None:
        time.sleep(seconds)

    @task(name="log")
    def log(run_id: str, rows: list[dict]) -> None:
        tracking.log_missing_iterations(run_id, rows)

    @task(name="register")
    def register(run_id: str, accuracy: float) -> None:
        client = tracking.client()
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.txt").write_text(name)
        client.log_artifacts(run_id, str(folder), "policy")
        try:
            client.create_registered_model("capacity")
        except Exception:  # another run made it
            pass
        source = f"{client.get_run(run_id).info.artifact_uri}/policy"
        version = client.create_model_version("capacity", source, run_id, tags={"task_acc": repr(accuracy)})
        with _champion_lock("capacity"):
            tracking.promote_if_better("capacity", int(version.version), accuracy)

    @flow(name="capacity")
    def synthetic() -> None:
        config = load_config(None, ["tracking.experiment=capacity"])
        run_id = tracking.open_run(config, work / name, name)
        rows = []
        for k in range(1, iterations + 1):
            for _ in range(STAGES):
                stage(stage_s)
            rows.append({"iteration": k, "eval/task_acc": k / iterations, "rollout/reward_mean": 0.5})
            log(run_id, rows)
        register(run_id, int(name.rsplit("-", 1)[1]) / 100)
        tracking.end_run(run_id, "FINISHED")

    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    synthetic()
    print(json.dumps({"wall_s": time.perf_counter() - start}), flush=True)


def start_servers(work: Path) -> tuple[dict[str, str], list[subprocess.Popen]]:
    from spark_vl.runio import free_port

    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", "DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    (work / "prefect").mkdir()
    servers = []
    for command in ([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
                    [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                     "--backend-store-uri", f"sqlite:///{work / 'mlflow.db'}",
                     "--artifacts-destination", str(work / "artifacts")]):
        log = open(work / f"{Path(command[0]).name}.log", "w")
        servers.append(subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True))
    from spark_vl.doctor import http_get

    for url in (f"http://127.0.0.1:{prefect_port}/api/health", f"http://127.0.0.1:{mlflow_port}/health"):
        deadline = time.monotonic() + 120
        while http_get(url) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer; logs in {work}")
            time.sleep(0.5)
    return env, servers


def measure(n: int, args, env: dict[str, str], work: Path, first: int) -> list[float | None]:
    """N runs started together; each one's seconds, None for a failed one."""
    children = [subprocess.Popen([sys.executable, __file__, "--child", f"run-{first + i}", "--iterations",
                                  str(args.iterations), "--stage-s", str(args.stage_s), "--work", str(work)],
                                 env=env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=open(work / f"run-{first + i}.log", "w"), text=True) for i in range(n)]
    for child in children:
        assert child.stdout.readline().strip() == "ready", f"a run did not start; see {work}"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    times = []
    for child in children:
        out, _ = child.communicate(timeout=1800)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        times.append(json.loads(lines[-1])["wall_s"] if child.returncode == 0 and lines else None)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--stage-s", type=float, default=0.5)
    parser.add_argument("--child")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        one_run(args.child, args.iterations, args.stage_s, args.work)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    env, servers = start_servers(work)
    sleeps = args.iterations * STAGES * args.stage_s
    rows, baseline = [], None
    try:
        # One run first, not reported: it makes the experiment, the registered model and the
        # concurrency limit, which every later run finds.
        first = len(measure(1, args, env, work, 0))
        for n in args.runs:
            times = measure(n, args, env, work, first)
            first += n
            done = [t - sleeps for t in times if t is not None]
            median = statistics.median(done) if done else float("nan")
            baseline = baseline or median
            rows.append(f"| {n} | {median:.2f} | {max(done, default=float('nan')):.2f} | "
                        f"{(median + sleeps) / (baseline + sleeps):.2f}x | {times.count(None)} |")
            print(rows[-1], flush=True)
    finally:
        for server in servers:
            os.killpg(server.pid, signal.SIGKILL)
    publish("server_capacity", "\n".join([
        f"# Runs at once against one Prefect server and one MLflow server ({date.today().isoformat()})", "",
        f"`.venv/bin/python bench/server_capacity.py --runs {' '.join(map(str, args.runs))} --iterations "
        f"{args.iterations} --stage-s {args.stage_s}` on {platform.node()} ({os.cpu_count()} CPUs), SQLite stores. "
        f"Each run: {args.iterations} iteration(s) of {STAGES} stage tasks that sleep {args.stage_s} s and the log "
        f"task ({sleeps:.0f} s of sleep in all), then register; overhead = its time minus the sleeps.", "",
        "| runs at once | overhead per run, median (s) | worst (s) | run time against one run alone | failed |",
        "|---|---|---|---|---|", *rows]))


if __name__ == "__main__":
    main()
