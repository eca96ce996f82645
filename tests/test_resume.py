"""Killed or crashed runs resume to the very run an uninterrupted one makes. Every interruption
happens at a fault point (`spark_vl.faults`), never at a moment picked by a clock."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from spark_vl.config import load_config, save_config
from spark_vl.faults import ENV, PAUSE_DIR, InjectedFault, fault_point, parse_faults
from spark_vl.layout import check_resumable, policy_dir
from spark_vl.pipeline import run
from spark_vl.runio import DamagedOutput
from spark_vl.train.launch import environment_without_launcher
from tests.test_flow import DEEPSPEED
from tests.test_pipeline import SMALL

ROOT = Path(__file__).resolve().parent.parent
# Three iterations, evaluations at 0, 2 and 3, pruning on: what a longer run does, in little time.
# The warm-up is long enough for some right answers, so that every iteration trains.
RESUME = SMALL + ["train.iterations=3", "eval.every=2", "train.keep_policies=1", f"train.deepspeed_config={DEEPSPEED}",
                  "train.warmup.steps=100", "train.warmup.batch_size=16", "rollout.max_new_tokens=12"]
# Each stage point once: a crash before a stage writes its output and one after.
CRASHES = ["prepare:0:before", "prepare:0:after", "evaluate:0:before", "log:0:after", "prompts:1:before",
           "prompts:1:after", "rollout:1:before", "rollout:1:after", "verify:1:before", "verify:1:after",
           "recycle:1:before", "recycle:1:after", "train:1:before", "train:1:after", "evaluate:2:before",
           "evaluate:2:after", "log:2:before", "log:2:after", "train:3:before"]
SUMMARIES = {"metrics.jsonl", "config.yaml", "coevolution.png", "reliability.png"}  # rewritten whole by design


def _config(data_dir: Path, extra: list[str] = ()):
    return load_config(None, RESUME + [f"data.train_path={data_dir / 'train.jsonl'}",
                                       f"data.eval_path={data_dir / 'eval.jsonl'}", *extra])


def _files(run_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


def _without_timings(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: "nan" if v != v else v for k, v in row.items() if not k.startswith(("time/", "throughput/"))}
            for row in rows]  # NaN != NaN: compared as text


def _assert_same_run(run_dir: Path, reference: Path, k: int) -> None:
    """The same final policy weights and the same metrics (timings aside), nothing half-written."""
    assert _without_timings(run_dir) == _without_timings(reference)
    weights = load_file(policy_dir(run_dir, k) / "model.safetensors")
    expected = load_file(policy_dir(reference, k) / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert weights[name].equal(tensor), name
    assert [p for p in run_dir.rglob(".*") if p.name.endswith((".tmp", ".partial"))] == []


def _in_flight(fault: str | None) -> set[str]:
    """What the rerun after an interruption at `fault` writes again beside the stage's output:
    the warm-up's losses (the starting policy is its output)."""
    if fault is None:
        return set()
    stage = fault.split(":")[0]
    return {"warmup.json"} if stage == "prepare" else set()


def _assert_untouched(before: dict[Path, int], run_dir: Path, in_flight: set[str]) -> None:
    """Files of finished stages are neither rewritten nor removed; pruned policies, DeepSpeed and
    warm-up checkpoints (kept only while they are the newest) and what a kill left half-written
    aside."""
    for path, stamp in before.items():
        name = str(path.relative_to(run_dir))
        partial = any(part.endswith((".tmp", ".partial")) for part in path.relative_to(run_dir).parts)
        if partial or name in SUMMARIES or name in in_flight or name.startswith(("deepspeed/", "model/policy-",
                                                                                  "model/warmup/")):
            continue
        assert path.exists() and path.stat().st_mtime_ns == stamp, name


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data_dir):
    """The uninterrupted run the interrupted ones must equal."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    rows = run(_config(tiny_data_dir), run_dir)
    assert all(row["train/sequences"] > 0 for row in rows[1:])  # else resuming training would go untested
    return run_dir


def test_fault_specs_are_parsed_and_checked(monkeypatch):
    assert [str(f) for f in parse_faults("train:2:before:kill, log:3:after:error")] == [
        "train:2:before:kill", "log:3:after:error"]
    with pytest.raises(ValueError, match="STAGE:ITERATION:POINT:ACTION"):
        parse_faults("train:two:before:kill")
    monkeypatch.setenv(ENV, "verify:1:after:enospc")
    fault_point("verify", 1, "before")  # not this point: nothing happens
    with pytest.raises(OSError) as raised:
        fault_point("verify", 1, "after")
    assert raised.value.errno == errno.ENOSPC


def test_a_crash_at_every_stage_point_resumes_exactly(tmp_path, monkeypatch, tiny_data_dir, reference):
    cfg = _config(tiny_data_dir)
    run_dir = tmp_path / "run"
    previous = None
    for crash in CRASHES:
        monkeypatch.setenv(ENV, f"{crash}:error")
        before = _files(run_dir) if run_dir.exists() else {}
        with pytest.raises(InjectedFault, match=crash):
            run(cfg, run_dir)
        _assert_untouched(before, run_dir, _in_flight(previous))
        previous = crash
    monkeypatch.delenv(ENV)
    before = _files(run_dir)
    rows = run(cfg, run_dir)
    _assert_untouched(before, run_dir, _in_flight(previous))
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3]
    _assert_same_run(run_dir, reference, 3)
    # Pruning kept the start (the KL reference) and the newest policy only.
    assert sorted(p.name for p in (run_dir / "model").glob("policy-*")) == ["policy-0000", "policy-0003"]


def test_disk_full_while_saving_a_policy_leaves_nothing_a_rerun_would_trust(tmp_path, monkeypatch, tiny_data_dir,
                                                                          reference):
    cfg = _config(tiny_data_dir)
    run_dir = tmp_path / "run"
    monkeypatch.setenv(ENV, "train:2:before:enospc")
    with pytest.raises(OSError, match="no space left") as raised:
        run(cfg, run_dir)
    assert raised.value.errno == errno.ENOSPC and str(policy_dir(run_dir, 2)) in str(raised.value)
    assert not policy_dir(run_dir, 2).exists()
    assert not (run_dir / "model" / ".policy-0002.partial").exists()
    monkeypatch.delenv(ENV)
    run(cfg, run_dir)
    _assert_same_run(run_dir, reference, 3)


def test_damaged_outputs_are_named_with_how_to_recompute_them(tmp_path, tiny_data_dir, reference):
    cfg = _config(tiny_data_dir)
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    check_resumable(cfg, run_dir)  # intact
    verified = run_dir / "iter-0003" / "verified.jsonl"
    text = verified.read_text()
    verified.write_text(text[: len(text) // 2])
    with pytest.raises(DamagedOutput, match=r"iter-0003/verified.jsonl is damaged: line \d+ .*Delete it"):
        check_resumable(cfg, run_dir)
    verified.write_text(text)
    weights = policy_dir(run_dir, 3) / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])
    with pytest.raises(DamagedOutput, match=r"policy-0003/model.safetensors is damaged"):
        check_resumable(cfg, run_dir)


def _checkout_copy(dest: Path) -> Path:
    """The working tree as a fresh clone would have it (tracked and unignored files), as a git
    repository, so `git status --ignored` shows what a run adds."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for command in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "t"]):
        subprocess.run(["git", *command], cwd=dest, check=True, capture_output=True)
    return dest


def _spark_vl(checkout: Path, args: list[str], env: dict[str, str], fault: str | None = None):
    """`spark-vl ARGS` from the checkout, in a session of its own (a fault kills it whole)."""
    env = {**env, ENV: fault} if fault else env
    return subprocess.run([sys.executable, "-m", "spark_vl.cli", *args], cwd=checkout, env=env, capture_output=True,
                          text=True, timeout=900, start_new_session=True)


def test_sigkill_at_fault_points_of_the_cli_run_then_rerun(tmp_path, tiny_data_dir, reference):
    """SIGKILL of the whole process group in training, between metrics.jsonl and MLflow, and between
    the registry call and its marker; each rerun resumes. The run ends as an uninterrupted one
    would: same weights and metrics, each iteration once in MLflow, one MLflow run FINISHED, one
    registry version per registration. The healthy rerun prints no ERROR and no traceback, and the
    run leaves nothing in the checkout outside runs/ and caches."""
    checkout = _checkout_copy(tmp_path / "checkout")
    cfg = _config(tiny_data_dir, ["tracking.register_every=2", "tracking.registered_model=killed",
                                  "orchestration.retry_delay_s=0"])
    save_config(cfg, tmp_path / "cfg.yaml")
    quiet = ("DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "PREFECT_SERVER_ANALYTICS_ENABLED")  # the CLI sets them
    env = {k: v for k, v in environment_without_launcher().items() if k not in quiet and not k.startswith("MLFLOW_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect"), "OMP_NUM_THREADS": "1",  # one thread, as the reference
                "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions")})
    args = ["run", str(tmp_path / "cfg.yaml"), "--run-name", "killed"]
    run_dir = checkout / "runs" / "killed"

    previous = None
    for fault in ("train:2:before:kill", "log:2:after:kill", "register:2:after:kill"):
        before = _files(run_dir) if run_dir.exists() else {}
        killed = _spark_vl(checkout, args, env, fault)
        assert killed.returncode == -9, fault + killed.stderr[-3000:]
        _assert_untouched(before, run_dir, _in_flight(previous))
        previous = fault
    assert not (run_dir / "iter-0002" / "registered.json").exists()

    before = _files(run_dir)
    healthy = _spark_vl(checkout, args, env)
    _assert_untouched(before, run_dir, _in_flight(previous))
    output = healthy.stdout + healthy.stderr
    assert healthy.returncode == 0, output[-3000:]
    assert " ERROR " not in output and "Traceback" not in output, output[-3000:]
    _assert_same_run(run_dir, reference, 3)

    client = MlflowClient(f"sqlite:///{checkout / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.artifact_location == (checkout / "runs" / "mlruns").as_uri()
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.end_time
    run_id = mlflow_run.info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "iteration")] == [0, 1, 2, 3]
    assert [m.step for m in client.get_metric_history(run_id, "eval/task_acc")] == [0, 2, 3]
    versions = sorted(client.search_model_versions("name='killed'"), key=lambda v: int(v.version))
    assert [v.tags["spark_vl.policy"] for v in versions] == ["policy-0002", "policy-0003"]
    assert int(client.get_model_version_by_alias("killed", "candidate").version) == 2
    accuracy = {r["iteration"]: r["eval/task_acc"] for r in _without_timings(run_dir) if "eval/task_acc" in r}
    champion = 2 if accuracy[3] > accuracy[2] else 1  # champion moves only to a better policy
    assert int(client.get_model_version_by_alias("killed", "champion").version) == champion

    status = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=normal"], cwd=checkout,
                            check=True, capture_output=True, text=True).stdout.splitlines()
    assert all(line == "!! runs/" or line.endswith("/__pycache__/") for line in status), status


def test_bad_paths_stop_the_run_before_it_starts(tmp_path):
    result = subprocess.run([sys.executable, "-m", "spark_vl.cli", "run", str(ROOT / "configs" / "tiny.yaml"),
                             "--set", "data.train_path=/nonexistent.jsonl", "--set", "model.path=/no/such/model"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "data.train_path: /nonexistent.jsonl does not exist" in result.stderr
    assert "model.path: /no/such/model is not a Hugging Face checkpoint folder" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "runs").exists()


def test_a_warmup_killed_midway_resumes_from_its_checkpoint_to_the_same_starting_policy(tmp_path, tiny_data_dir,
                                                                                         monkeypatch):
    """A crash after the warm-up's checkpoint at step 4 of 6: the rerun trains steps 5 and 6 only
    and saves the starting policy of an uninterrupted warm-up, bit for bit."""
    from spark_vl.pipeline import prepare_run
    from spark_vl.train.trainer import PolicyTrainer

    cfg = _config(tiny_data_dir, ["train.warmup.steps=6", "train.warmup.checkpoint_every=2"])
    prepare_run(cfg, tmp_path / "whole")
    monkeypatch.setenv(ENV, "warmup:4:after:error")
    with pytest.raises(InjectedFault):
        prepare_run(cfg, tmp_path / "killed")
    assert json.loads((tmp_path / "killed" / "model" / "warmup" / "latest.json").read_text()) == {"tag": "step-00004"}
    monkeypatch.delenv(ENV)
    steps, real_step = [], PolicyTrainer.sft_step
    monkeypatch.setattr(PolicyTrainer, "sft_step", lambda self, *args: steps.append(1) or real_step(self, *args))
    prepare_run(cfg, tmp_path / "killed")
    assert len(steps) == 2
    weights = load_file(policy_dir(tmp_path / "killed", 0) / "model.safetensors")
    for name, tensor in load_file(policy_dir(tmp_path / "whole", 0) / "model.safetensors").items():
        assert weights[name].equal(tensor), name
    assert [json.loads((tmp_path / run / "warmup.json").read_text()) for run in ("killed", "whole")] == [
        json.loads((tmp_path / "whole" / "warmup.json").read_text())] * 2
    assert not (tmp_path / "killed" / "model" / "warmup").exists()  # the checkpoint goes once the policy is saved


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_run_cleanly_and_leaves_no_process_behind(tmp_path, tiny_data_dir, signum):
    """`kill PID` (SIGTERM) or Ctrl-C while `spark-vl run` waits at a fault point mid-iteration: exit
    128 + the signal with one line and no traceback, the MLflow run FAILED, and nothing of the
    run's process group left, Prefect's temporary server included."""
    cfg = _config(tiny_data_dir, ["train.iterations=2", "train.warmup.steps=3",
                                  f"orchestration.runs_dir={tmp_path / 'runs'}"])
    save_config(cfg, tmp_path / "cfg.yaml")
    os.mkfifo(tmp_path / "rollout-1-before.reached")
    os.mkfifo(tmp_path / "rollout-1-before.release")
    env = {**environment_without_launcher(), "PREFECT_HOME": str(tmp_path / "prefect"), "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", ENV: "rollout:1:before:pause",
           PAUSE_DIR: str(tmp_path)}
    process = subprocess.Popen([sys.executable, "-m", "spark_vl.cli", "run", str(tmp_path / "cfg.yaml"), "--run-name",
                                "stopped"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    with open(tmp_path / "rollout-1-before.reached"):  # returns once the run waits there
        pass
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "Traceback" not in stdout + stderr
    left = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes of the run left running: {left}"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
    assert mlflow_run.info.status == "FAILED"


def test_a_foreign_config_or_a_missing_policy_stops_the_rerun_with_one_line(tmp_path, tiny_data_dir):
    """What a rerun of a run folder cannot trust ends it before it starts: exit 2, the file, the fix."""
    cfg = _config(tiny_data_dir, ["train.iterations=1", "eval.every=1", f"orchestration.runs_dir={tmp_path / 'runs'}"])
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "iter-0001").mkdir(parents=True)  # what a run leaves: its config and a trained iteration
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "iter-0001" / "train.json").write_text("{}")
    save_config(cfg, tmp_path / "same.yaml")
    save_config(cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 0.1, "iterations": 5})}),
                tmp_path / "other.yaml")

    def rerun(config: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "spark_vl.cli", "run", str(tmp_path / config), "--run-name", "r"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**environment_without_launcher(), "PREFECT_HOME": str(tmp_path / "prefect")})

    foreign = rerun("other.yaml")
    assert foreign.returncode == 2 and "Traceback" not in foreign.stderr
    assert "was made with another config: train.lr (0.0005 -> 0.1)." in foreign.stderr  # iterations may change
    assert "--run-name" in foreign.stderr
    missing = rerun("same.yaml")  # iteration 1 trained, its policy gone
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "iter-0001/train.json is damaged: it says iteration 1 trained, but its policy" in missing.stderr


def test_a_run_moved_to_another_folder_resumes_there(tmp_path, monkeypatch):
    """Image paths inside the run folder are written relative to it: a run on the built-in data,
    stopped mid-iteration and moved, finishes in its new place, and no file of it names the old one."""
    from spark_vl.records import load_groups, load_prompts

    cfg = load_config(None, RESUME)  # built-in data: rendered inside the run folder
    first, moved = tmp_path / "first" / "run", tmp_path / "moved" / "run"
    monkeypatch.setenv(ENV, "rollout:2:before:error")
    with pytest.raises(InjectedFault, match="rollout:2:before"):
        run(cfg, first)
    monkeypatch.delenv(ENV)
    moved.parent.mkdir()
    shutil.move(first, moved)
    assert [r["iteration"] for r in run(cfg, moved)] == [0, 1, 2, 3]
    old = str(tmp_path / "first")
    assert [p for p in moved.rglob("*") if p.is_file() and old.encode() in p.read_bytes()] == []
    images = [image for prompt in load_prompts(moved / "iter-0002" / "prompts.jsonl", moved) for image in prompt.images]
    images += [image for group in load_groups(moved / "iter-0003" / "verified.jsonl", moved)
               for image in group.prompt.images]
    assert images and all(Path(image).is_file() and str(moved) in image for image in images)
