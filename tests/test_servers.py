"""Integration: a real Prefect server and MLflow server on 127.0.0.1, the repository's prefect.yaml
deployed, a process worker, a triggered run with a parameter, and the MLflow run it produced."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from spark_vl import tracking
from spark_vl.config import load_config, save_config
from spark_vl.runio import free_port
from spark_vl.train.launch import environment_without_launcher
from tests.test_flow import DEEPSPEED
from tests.test_pipeline import SMALL

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _wait_healthy(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server for {url} exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {seconds} s")


def prefect_cli(env: dict, *args: str, timeout: float = 180) -> str:
    """`prefect --no-prompt ARGS` from the repository root against env's server; must succeed."""
    result = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def prefect_client_json(body: str, env: dict):
    """What `body` prints as JSON on its last line, run with a sync Prefect client `c` of env's
    server (in a process of its own: this one keeps its own Prefect settings)."""
    code = "import json\nfrom prefect.client.orchestration import get_client\nwith get_client(sync_client=True) as c:\n"
    code += "".join(f"    {line}\n" for line in body.splitlines())
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def servers(tmp_path):
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**environment_without_launcher(), "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}"}
    (tmp_path / "prefect").mkdir()
    started = []
    for command in (
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port), "--backend-store-uri",
         f"sqlite:///{tmp_path / 'mlflow.db'}", "--artifacts-destination", str(tmp_path / "mlartifacts")],
    ):
        log = open(tmp_path / f"{Path(command[0]).name}.log", "w")
        started.append(subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True))
    try:
        _wait_healthy(f"http://127.0.0.1:{prefect_port}/api/health", started[0])
        _wait_healthy(f"http://127.0.0.1:{mlflow_port}/health", started[1])
        yield env
    finally:
        for process in started:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.slow
def test_deploy_trigger_and_work(servers, tmp_path, monkeypatch, tiny_data_dir):
    env = servers
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}", "train.iterations=1",
                                     f"train.deepspeed_config={DEEPSPEED}", f"orchestration.runs_dir={tmp_path / 'runs'}",
                                     "tracking.experiment=integration", "tracking.registered_model=integration"])
    save_config(cfg, tmp_path / "cfg.yaml")

    prefect_cli(env, "work-pool", "create", "spark-vl", "--type", "process")
    prefect_cli(env, "deploy", "--all", "--prefect-file", str(REPO / "prefect.yaml"))
    prefect_cli(env, "deployment", "run", "co-evolve/on-demand", "--param", f"config_path={tmp_path / 'cfg.yaml'}",
                "--param", "run_name=from-the-deployment")
    # A trigger naming a program for the worker to execute is refused, before any work.
    prefect_cli(env, "deployment", "run", "co-evolve/on-demand", "--param", "run_name=names-a-program",
                "--param", 'overrides=["rollout.engine=vllm", "rollout.vllm.python=/usr/bin/env"]')
    # A trigger may register under its deployment's model only (on-demand allows any name, prefect.yaml)...
    prefect_cli(env, "deployment", "run", "co-evolve/scheduled-retrain", "--param", "run_name=elsewhere",
                "--param", 'overrides=["tracking.registered_model=someone-elses-model"]')
    # ... and with its own held-out set it adds a version there but does not decide the champion.
    prefect_cli(env, "deployment", "run", "co-evolve/on-demand", "--param", f"config_path={tmp_path / 'cfg.yaml'}",
                "--param", "run_name=own-held-out", "--param", 'overrides=["tracking.registered_model=spark-vl-tiny"]')
    prefect_cli(env, "worker", "start", "--pool", "spark-vl", "--run-once", timeout=600)

    states = prefect_client_json("print(json.dumps({r.parameters.get('run_name'): [r.state.type.value, r.state.message]"
                                 " for r in c.read_flow_runs()}))", env)
    assert states["from-the-deployment"][0] == "COMPLETED"
    assert states["names-a-program"][0] == "FAILED"
    assert "may not set rollout.vllm.python" in states["names-a-program"][1]
    assert not (tmp_path / "runs" / "names-a-program").exists() and not (REPO / "runs" / "names-a-program").exists()
    assert states["elsewhere"][0] == "FAILED" and "may not set tracking.registered_model" in states["elsewhere"][1]
    assert states["own-held-out"][0] == "COMPLETED"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    client = tracking.client()
    experiment = client.get_experiment_by_name("integration")
    assert experiment is not None, "the flow run logged nothing to the MLflow server"
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["from-the-deployment", "own-held-out"]
    run = runs["from-the-deployment"]
    assert run.data.tags["prefect.flow_run_id"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "iteration")] == [0, 1]
    assert int(client.get_model_version_by_alias("integration", "champion").version) == 1
    assert [v.version for v in client.search_model_versions("name='spark-vl-tiny'")] == ["1"]
    assert client.get_registered_model("spark-vl-tiny").aliases == {"candidate": "1"}  # no champion
    assert (tmp_path / "runs" / "from-the-deployment" / "metrics.jsonl").exists()


def _mlflow_server(tmp_path: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port over a SQLite store in tmp_path, healthy."""
    log = open(tmp_path / "mlflow-server.log", "a")
    process = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                                "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                                "--artifacts-destination", str(tmp_path / "mlartifacts")],
                               env=environment_without_launcher(), stdout=log, stderr=log, start_new_session=True)
    _wait_healthy(f"http://127.0.0.1:{port}/health", process)
    return process


@pytest.mark.slow
def test_mlflow_server_down_mid_run_loses_and_repeats_nothing(tmp_path, monkeypatch, tiny_data_dir):
    """The MLflow server is stopped as iteration 1 is logged and back before iteration 2 is: the
    run goes on, and MLflow ends with every iteration once (iteration 1 back-filled)."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.co_evolve import co_evolve
    from spark_vl import pipeline

    port = free_port()
    server = [_mlflow_server(tmp_path, port)]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast while it is down
    monkeypatch.chdir(tmp_path)
    real_log = pipeline.stage_log

    def log_with_outage(ws, k):
        if k == 1:  # down: this iteration's MLflow batch fails
            os.killpg(server[0].pid, signal.SIGKILL)
            server[0].wait()
        if k == 2:  # back: this log sends iterations 1 and 2
            server[0] = _mlflow_server(tmp_path, port)
        return real_log(ws, k)

    real_step, answered = tracking.log_step, []

    def log_step(*args):
        answered.append(real_step(*args))
        return answered[-1]

    monkeypatch.setattr(pipeline, "stage_log", log_with_outage)
    monkeypatch.setattr(tracking, "log_step", log_step)
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}", f"train.deepspeed_config={DEEPSPEED}",
                                     "tracking.registered_model=outage", "orchestration.retry_delay_s=0"])
    try:
        with prefect_test_harness(server_startup_timeout=60):
            run_id = co_evolve(config=cfg, run_name="outage")
        assert answered == [True, False, True]  # iteration 1's step found the server down
        client = tracking.client()
        assert [m.step for m in client.get_metric_history(run_id, "iteration")] == [0, 1, 2]
        assert [m.step for m in client.get_metric_history(run_id, "eval/task_acc")] == [0, 1, 2]
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        os.killpg(server[0].pid, signal.SIGKILL)
        server[0].wait()
