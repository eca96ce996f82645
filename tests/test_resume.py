"""A run killed with SIGKILL in the middle of training resumes when rerun, losing and repeating nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from spark_vl import tracking
from spark_vl.config import load_config, save_config
from spark_vl.train.launch import environment_without_launcher
from tests.test_flow import DEEPSPEED
from tests.test_pipeline import SMALL


def _run_command(cfg_path: Path) -> list[str]:
    return [sys.executable, "-m", "spark_vl.cli", "run", str(cfg_path), "--run-name", "killed"]


def test_sigkill_during_training_then_rerun(tmp_path, monkeypatch, tiny_data_dir):
    cfg = load_config(None, SMALL + [f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}", "train.iterations=3",
                                     f"train.deepspeed_config={DEEPSPEED}", "eval.every=2"])
    cfg_path = tmp_path / "cfg.yaml"
    save_config(cfg, cfg_path)
    env = {**environment_without_launcher(), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}
    (tmp_path / "prefect").mkdir()
    run_dir = tmp_path / "runs" / "killed"
    in_training = run_dir / "iter-0002" / "recycled.jsonl"  # recycle(2) done: train(2) is running
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(_run_command(cfg_path), cwd=tmp_path, env=env, stdout=log, stderr=log,
                                 start_new_session=True)
        deadline = time.monotonic() + 400
        while not in_training.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the flow process and everything it started
        first.wait()
    assert in_training.exists(), (tmp_path / "first.log").read_text()[-3000:]
    assert not (run_dir / "model" / "policy-0002" / "config.json").exists()
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}

    second = subprocess.run(_run_command(cfg_path), cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    rewritten = {str(p.relative_to(run_dir)) for p, t in before.items() if p.exists() and p.stat().st_mtime_ns != t}
    in_flight = {"iter-0002/train.json"} | {p for p in rewritten if p.startswith("deepspeed/")}  # train(2) reran
    summaries = {"metrics.jsonl", "config.yaml", "coevolution.png"}  # rewritten whole by design
    assert rewritten <= in_flight | summaries, rewritten
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    client = tracking.client()
    (run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "iteration")] == [0, 1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/task_acc")] == [0, 2, 3]
