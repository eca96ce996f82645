"""Training on two DeepSpeed workers (torchrun, gloo on the CPU) gives the one-process update."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spark_vl import layout, pipeline, workspace
from spark_vl.records import load_groups, save_groups
from spark_vl.config import apply_overrides, load_config, save_config, validate_config
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


def _train_copy(cfg, run_dir: Path, dest: Path, overrides: list[str]) -> Path:
    shutil.copytree(run_dir, dest)
    config = validate_config(apply_overrides(cfg.model_dump(mode="json"), overrides))
    save_config(config, dest / "config.yaml")
    ws = workspace.Workspace(config, dest)
    try:
        pipeline.stage_train(ws, 1)
    finally:
        ws.close()
    return dest


@pytest.fixture(scope="module")
def one_process(verified_run, tmp_path_factory):
    cfg, run_dir = verified_run
    return _train_copy(cfg, run_dir, tmp_path_factory.mktemp("one") / "run", [])


@pytest.mark.parametrize("zero", ["zero0", "zero3"])
def test_two_workers_make_the_same_update_as_one(verified_run, one_process, tmp_path, zero):
    cfg, run_dir = verified_run
    two = _train_copy(cfg, run_dir, tmp_path / "two", [
        "train.processes_per_node=2", f"train.deepspeed_config={DEEPSPEED.with_name(zero + '.json')}"])
    assert (two / "iter-0001" / "train-workers.log").exists()
    stats_one = layout.read_json(one_process / "iter-0001" / "train.json")
    stats_two = layout.read_json(two / "iter-0001" / "train.json")
    assert stats_one["train/sequences"] > 0
    for key in ("train/loss", "train/kl", "train/entropy", "train/sequences"):
        assert stats_two[key] == pytest.approx(stats_one[key], rel=1e-4, abs=1e-7), key
    start = load_file(cfg.model.path + "/model.safetensors")
    w_one = load_file(one_process / "model" / "policy-0001" / "model.safetensors")
    w_two = load_file(two / "model" / "policy-0001" / "model.safetensors")  # ZeRO-3: gathered from both
    assert any(not torch.equal(start[k], w_one[k]) for k in start)  # the step changed the weights
    assert w_two.keys() == w_one.keys()
    for name in w_one:
        assert torch.allclose(w_one[name], w_two[name], atol=1e-5), name  # an update is ~lr = 5e-4
    assert (two / "deepspeed" / "iter-0001").exists()


def test_a_failing_worker_fails_the_task_with_its_error(verified_run, tmp_path):
    cfg, run_dir = verified_run
    with pytest.raises(RuntimeError, match="training workers of iteration 1 failed(.|\n)*missing-zero.json"):
        _train_copy(cfg, run_dir, tmp_path / "bad", ["train.processes_per_node=2",
                                                     f"train.deepspeed_config={tmp_path / 'missing-zero.json'}"])
