"""`spark-vl doctor` against real servers: what answers, what refuses, what to set."""

import os
import subprocess
import sys
from pathlib import Path

from spark_vl.runio import free_port
from spark_vl.train.launch import environment_without_launcher
from tests.test_servers import _wait_healthy

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent


def _doctor(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "spark-vl"), "doctor", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_doctor_names_what_does_not_answer_and_what_to_set(tmp_path):
    closed = free_port()
    env = {**environment_without_launcher(), "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_API_URL": f"http://127.0.0.1:{closed}/api", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{closed}"}
    result = _doctor(env, "--set", "rollout.engine=vllm", "--set", f"rollout.vllm.python={tmp_path / 'nope'}")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "PROBLEM  Prefect API" in out and "correct PREFECT_API_URL" in out
    assert "PROBLEM  MLflow store" in out and "MLFLOW_TRACKING_URI" in out
    assert "PROBLEM  vLLM environment" in out and "make vllm-env" in out
    assert "model registry" not in out  # not asked of a store that does not answer
    assert "ok  devices" in out


def test_doctor_checks_credentials_against_a_prefect_server_with_auth(tmp_path):
    port = free_port()
    base = {**environment_without_launcher(), "PREFECT_HOME": str(tmp_path / "prefect"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    (tmp_path / "prefect").mkdir()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env={**base, "PREFECT_SERVER_API_AUTH_STRING": "admin:s3cret"}, stdout=log, stderr=log,
                              start_new_session=True)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/api/health", server)  # health answers without credentials
        client = {**base, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        refused = _doctor(client)
        assert refused.returncode == 1 and "refuses these credentials" in refused.stdout
        assert "set PREFECT_API_AUTH_STRING" in refused.stdout
        allowed = _doctor({**client, "PREFECT_API_AUTH_STRING": "admin:s3cret"})
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert "answers (authenticated)" in allowed.stdout
        assert "spark-vl-tiny: not registered yet" in allowed.stdout
    finally:
        os.killpg(server.pid, 9)
        server.wait()
