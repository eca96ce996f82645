"""Training on two DeepSpeed workers (torchrun, gloo on the CPU) gives the one-process update,
on one node and as two nodes meeting on loopback; a worker's death ends the task, never a hang."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spark_vl import layout, pipeline, workspace
from spark_vl.records import load_groups, save_groups
from spark_vl.config import apply_overrides, load_config, save_config, validate_config
from spark_vl.faults import ENV as FAULT_ENV
from spark_vl.runio import free_port
from spark_vl.train.launch import environment_without_launcher
from tests.test_pipeline import SMALL

DEEPSPEED = Path(__file__).resolve().parent.parent / "configs" / "deepspeed" / "zero0.json"


@pytest.fixture(scope="module")
def verified_run(tiny_data_dir, tiny_model_dir, tmp_path_factory):
    """A run directory with iteration 1 rolled out and verified, ready to train."""
    run_dir = tmp_path_factory.mktemp("dist") / "run"
    cfg = load_config(None, SMALL + [f"model.path={tiny_model_dir}", f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                                     f"data.eval_path={tiny_data_dir / 'eval.jsonl'}",
                                     f"train.deepspeed_config={DEEPSPEED}", "rollout.prompts_per_batch=8",
                                     "train.micro_batch_size=5"])
    pipeline.prepare_run(cfg, run_dir)
    ws = workspace.Workspace(cfg, run_dir)
    for stage in (pipeline.stage_prompts, pipeline.stage_rollout, pipeline.stage_verify):
        stage(ws, 1)
    ws.close()
    verified = run_dir / "iter-0001" / "verified.jsonl"
    groups = load_groups(verified)
    for i, group in enumerate(groups):  # a random model earns no reward: give the groups some signal
        group.rewards = [float((i + j) % 2) for j in range(len(group.rewards))]
    save_groups(verified, groups)
    return cfg, run_dir


def _run_copy(cfg, run_dir: Path, dest: Path, overrides: list[str]):
    """A copy of the verified run at `dest` whose config has `overrides`; returns that config."""
    shutil.copytree(run_dir, dest)
    config = validate_config(apply_overrides(cfg.model_dump(mode="json"), overrides))
    save_config(config, dest / "config.yaml")
    return config


def _train_copy(cfg, run_dir: Path, dest: Path, overrides: list[str]) -> Path:
    ws = workspace.Workspace(_run_copy(cfg, run_dir, dest, overrides), dest)
    try:
        pipeline.stage_train(ws, 1)
    finally:
        ws.close()
    return dest


@pytest.fixture(scope="module")
def one_process(verified_run, tmp_path_factory):
    cfg, run_dir = verified_run
    return _train_copy(cfg, run_dir, tmp_path_factory.mktemp("one") / "run", [])


def _assert_same_update(cfg, one: Path, other: Path, atol: float = 1e-5) -> None:
    """`other` made iteration 1's update as the one-process run `one` did, and it was an update
    (of ~lr = 5e-4 per optimizer step; `atol` is the float noise allowed)."""
    stats_one = layout.read_json(one / "iter-0001" / "train.json")
    stats_other = layout.read_json(other / "iter-0001" / "train.json")
    assert stats_one["train/sequences"] > 0
    for key in ("train/loss", "train/kl", "train/entropy", "train/sequences"):
        assert stats_other[key] == pytest.approx(stats_one[key], rel=1e-4, abs=1e-7), key
    start = load_file(cfg.model.path + "/model.safetensors")
    w_one = load_file(one / "model" / "policy-0001" / "model.safetensors")
    w_other = load_file(other / "model" / "policy-0001" / "model.safetensors")
    assert any(not torch.equal(start[k], w_one[k]) for k in start)  # the step changed the weights
    assert w_other.keys() == w_one.keys()
    for name in w_one:
        assert torch.allclose(w_one[name], w_other[name], atol=atol), name


@pytest.mark.parametrize("zero,launcher", [("zero0", "torchrun"), ("zero3", "torchrun"), ("zero0", "deepspeed")])
def test_two_workers_make_the_same_update_as_one(verified_run, one_process, tmp_path, zero, launcher):
    cfg, run_dir = verified_run
    two = _train_copy(cfg, run_dir, tmp_path / "two", [
        "train.processes_per_node=2", f"train.deepspeed_config={DEEPSPEED.with_name(zero + '.json')}",
        f"train.launcher={launcher}"])
    assert (two / "iter-0001" / "train-workers.log").exists()
    _assert_same_update(cfg, one_process, two)  # ZeRO-3: the policy gathered from both workers
    assert (two / "deepspeed" / "iter-0001").exists()



def test_rollout_correction_on_two_zero3_workers_makes_the_same_update_as_one(verified_run, tmp_path):
    """With train.tis_imp_ratio_cap the trainer scores the rollouts before updating, in the chunks
    the update takes: ZeRO-3's gathers pair up across workers and the update is one process's."""
    cfg, run_dir = verified_run
    tis = ["train.tis_imp_ratio_cap=2", "train.ppo_mini_batch_size=4"]
    one = _train_copy(cfg, run_dir, tmp_path / "one", tis)
    two = _train_copy(cfg, run_dir, tmp_path / "two", tis + [
        "train.processes_per_node=2", f"train.deepspeed_config={DEEPSPEED.with_name('zero3.json')}"])
    # Two Adam steps amplify the float-order differences of ZeRO-3's partitioned reduction (1.3e-5 at most here).
    _assert_same_update(cfg, one, two, atol=5e-5)
    stats = layout.read_json(two / "iter-0001" / "train.json")
    assert stats["train/tis_weight"] == pytest.approx(layout.read_json(one / "iter-0001" / "train.json")
                                                      ["train/tis_weight"], rel=1e-4)


def test_token_budget_micro_batches_on_two_workers_make_the_same_update_as_one(verified_run, tmp_path):
    """Filled by tokens, the workers' shares split into micro-batches of their own sizes (worker 0's
    sequences cut short here); a worker with fewer pads with empty ones, so the gradient averages
    still pair up."""
    cfg, run_dir = verified_run
    ragged = tmp_path / "ragged"
    shutil.copytree(run_dir, ragged)
    verified = ragged / "iter-0001" / "verified.jsonl"
    groups = load_groups(verified)
    for group in groups:  # worker 0 takes the even sequences of the flattened batch (groups of 4)
        for j in range(0, len(group.response_ids), 2):
            group.response_ids[j], group.logprobs[j] = group.response_ids[j][:2], group.logprobs[j][:2]
    save_groups(verified, groups)
    budget = ["train.max_tokens_per_micro_batch=600"]  # worker 0: 2 micro-batches, worker 1: 3
    one = _train_copy(cfg, ragged, tmp_path / "one", budget)
    two = _train_copy(cfg, ragged, tmp_path / "two", budget + ["train.processes_per_node=2"])
    # Other micro-batches sum the gradient in another order: Adam's first step, about lr x sign(g),
    # turns that float noise into up to 2e-5 where a gradient is near zero.
    _assert_same_update(cfg, one, two, atol=5e-5)

def test_a_failing_worker_fails_the_task_with_its_error(verified_run, tmp_path):
    cfg, run_dir = verified_run
    with pytest.raises(RuntimeError, match="training workers of iteration 1 failed(.|\n)*missing-zero.json"):
        _train_copy(cfg, run_dir, tmp_path / "bad", ["train.processes_per_node=2",
                                                     f"train.deepspeed_config={tmp_path / 'missing-zero.json'}"])


@pytest.fixture
def two_node_run(verified_run, tmp_path):
    """The verified run set for two nodes of one worker each, both this machine by two names."""
    cfg, run_dir = verified_run
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("127.0.0.1 slots=1\nlocalhost slots=1\n")
    dest = tmp_path / "run"
    _run_copy(cfg, run_dir, dest, [f"train.hostfile={hostfile}", f"train.master_port={free_port()}"])
    return dest


def _start_node(run_dir: Path, rank: int, fault: str | None = None) -> subprocess.Popen:
    """`spark-vl train-node` as a scheduler would start it on node `rank`, in a session of its own."""
    env = {**environment_without_launcher(), **({FAULT_ENV: fault} if fault else {})}
    return subprocess.Popen([sys.executable, "-m", "spark_vl.cli", "train-node", str(run_dir), "1",
                             "--node-rank", str(rank)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _finish(nodes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    # The timeout only turns a hang into a failure; nothing waits on it to pass.
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    return [(node.returncode, output) for node, output in zip(nodes, outputs)]


def test_two_nodes_make_the_same_update_as_one_process(verified_run, one_process, two_node_run):
    """Node ranks 0 and 1 each start their DeepSpeed launcher (`--no_ssh`, the per-node launcher
    pdsh would run over ssh) and meet at node 0's rendezvous; the update is one process's."""
    cfg, _ = verified_run
    (rc0, out0), (rc1, out1) = _finish([_start_node(two_node_run, 0), _start_node(two_node_run, 1)])
    assert (rc0, rc1) == (0, 0), out0 + out1
    for rank in (0, 1):
        log = (two_node_run / "iter-0001" / f"train-workers-node{rank}.log").read_text()
        assert f"--node_rank={rank}" in log and "--master_addr=127.0.0.1" in log
    _assert_same_update(cfg, one_process, two_node_run)


def test_a_worker_dying_mid_step_on_node_1_ends_both_nodes_with_their_logs(two_node_run):
    """Node 1's worker is killed between its forward and its backward, while node 0's waits in the
    gradient all-reduce: both nodes' launchers end, each with the end of its workers' log."""
    nodes = [_start_node(two_node_run, 0), _start_node(two_node_run, 1, fault="train:1:step:kill")]
    (rc0, out0), (rc1, out1) = _finish(nodes)
    assert rc1 == 1 and "training workers of iteration 1 failed on node 1" in out1, out1
    assert "exits with return code = -9" in out1, out1  # DeepSpeed's launcher saw SIGKILL
    assert rc0 == 1 and "training workers of iteration 1 failed on node 0" in out0, out0
    assert "gloo/transport/tcp" in out0, out0  # node 0's worker heard of the loss from its transport
    assert not (two_node_run / "iter-0001" / "train.json").exists()
    assert not (two_node_run / "model" / "policy-0001").exists()
