"""Overlapped rollouts (`rollout.overlap`): iteration k+1 samples from policy k-1 while iteration k
trains, in the run's second process; a crash anywhere, in either process, resumes to the run an
uninterrupted one makes. The overlap itself is shown at fault points, never by a clock."""

import os
import threading
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.co_evolve import co_evolve
from spark_vl import tracking
from spark_vl.config import ConfigError, load_config
from spark_vl.faults import ENV, PAUSE_DIR, InjectedFault
from spark_vl.pipeline import rollout_policy, rolls_ahead, run
from tests.test_flow import harness  # noqa: F401  (the Prefect test server, a fixture)
from tests.test_resume import _assert_same_run, _assert_untouched, _config, _files, _without_timings

OVERLAP = ["rollout.overlap=true"]
# In run order: the first rollouts in the second process; the second ones killed there while
# iteration 1 trains, then failing after their output; a crash of this process between the next
# prompts and the rollouts started on them; a crash in training while iteration 3 samples.
CRASHES = ["rollout:1:after:error", "rollout:2:before:kill", "rollout:2:after:error", "prompts:3:after:error",
           "train:2:before:error", "evaluate:2:after:error", "train:3:before:error"]


def test_rollouts_sample_from_the_policy_before_the_update_they_overlap():
    cfg = load_config(None, ["train.iterations=4"])
    assert [rollout_policy(cfg, k) for k in (1, 2, 3, 4)] == [0, 1, 2, 3]
    assert not any(rolls_ahead(cfg, k) for k in (1, 2, 3, 4))
    cfg = load_config(None, ["train.iterations=4", *OVERLAP])
    assert [rollout_policy(cfg, k) for k in (1, 2, 3, 4)] == [0, 0, 1, 2]
    assert [rolls_ahead(cfg, k) for k in (1, 2, 3, 4)] == [True, True, True, False]


def test_overlap_with_a_sleeping_vllm_server_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="set rollout.vllm.sleep_during_train=false or rollout.overlap=false"):
        load_config(None, [*OVERLAP, "rollout.engine=vllm", "rollout.vllm.sleep_during_train=true"])


@pytest.fixture(scope="module")
def overlapped(tmp_path_factory, tiny_data_dir):
    run_dir = tmp_path_factory.mktemp("overlapped") / "run"
    rows = run(_config(tiny_data_dir, OVERLAP), run_dir)
    assert [row.get("rollout/policy_lag") for row in rows] == [None, 0.0, 1.0, 1.0]
    assert all(row["train/sequences"] > 0 for row in rows[1:])  # else resuming training would go untested
    return run_dir


def test_a_crash_in_either_process_of_an_overlapped_run_resumes_exactly(tmp_path, monkeypatch, tiny_data_dir,
                                                                        overlapped):
    cfg = _config(tiny_data_dir, OVERLAP)
    run_dir = tmp_path / "run"
    for crash in CRASHES:
        monkeypatch.setenv(ENV, crash)
        before = _files(run_dir) if run_dir.exists() else {}
        point = crash.rsplit(":", 1)[0]
        expected = (RuntimeError, "the rollout process .* died while sampling iteration 2") if crash.endswith(
            "kill") else (InjectedFault, point)
        with pytest.raises(expected[0], match=expected[1]):
            run(cfg, run_dir)
        _assert_untouched(before, run_dir, set())
    monkeypatch.delenv(ENV)
    before = _files(run_dir)
    run(cfg, run_dir)
    _assert_untouched(before, run_dir, set())
    _assert_same_run(run_dir, overlapped, 3)
    # train.keep_policies=1, and the rollouts of k+1 need policy k-1: two kept beside the start.
    assert sorted(p.name for p in (run_dir / "model").glob("policy-*")) == ["policy-0000", "policy-0002",
                                                                            "policy-0003"]


def test_the_flow_trains_iteration_1_while_iteration_2_samples(harness, tmp_path, monkeypatch,  # noqa: F811
                                                               tiny_data_dir, overlapped):
    """Both processes wait at once, each at its fault point: the rollouts of iteration 2 before
    their output (in the second process) and the training of iteration 1 after its own; then the
    run goes on to the same metrics as the run without Prefect."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    points = ["rollout-2-before", "train-1-after"]
    for point in points:
        for end in ("reached", "release"):
            os.mkfifo(tmp_path / f"{point}.{end}")
    monkeypatch.setenv(PAUSE_DIR, str(tmp_path))
    monkeypatch.setenv(ENV, "rollout:2:before:pause,train:1:after:pause")
    both_waiting = []

    def meet_both() -> None:
        for point in points:  # each open returns once that process waits at its point
            with open(tmp_path / f"{point}.reached"):
                pass
        both_waiting.append(True)
        for point in points:
            with open(tmp_path / f"{point}.release", "w"):
                pass

    threading.Thread(target=meet_both, daemon=True).start()
    cfg = _config(tiny_data_dir, [*OVERLAP, "tracking.registered_model=overlap-test", "orchestration.retry_delay_s=0",
                                  f"orchestration.runs_dir={tmp_path / 'runs'}"])
    run_id = co_evolve(config=cfg, run_name="overlap")
    assert both_waiting == [True]
    assert _without_timings(Path(cfg.orchestration.runs_dir) / "overlap") == _without_timings(overlapped)
    run = tracking.client().get_run(run_id)
    with get_client(sync_client=True) as prefect:
        names = {t.name for t in prefect.read_task_runs() if str(t.flow_run_id) == run.data.tags["prefect.flow_run_id"]}
    assert {"rollout-k2", "rollout-k3", "train-k1", "train-k2"} <= names
