"""LoRA with PEFT on the tiny model: what trains, what stays, what is saved, and exact resume."""

import copy
from pathlib import Path

import pytest
import torch

from spark_vl.config import load_config
from spark_vl.faults import ENV, InjectedFault
from spark_vl.layout import policy_dir
from spark_vl.models import load_model, load_processor
from spark_vl.pipeline import run
from spark_vl.models.forward import completion_batch, completion_logps
from spark_vl.train.lora import ADAPTER_DIR, merged_state_dict
from spark_vl.train.trainer import PolicyTrainer
from tests.test_pipeline import SMALL, _rewarded_groups
from tests.test_resume import _assert_same_run, _config
from tests.test_tracking import register

LORA = ["train.lora.rank=4", "train.lora.alpha=8"]


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_data_dir):
    cfg = load_config(None, SMALL + LORA)
    processor = load_processor(tiny_model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, tiny_model_dir)
    return cfg, processor, trainer, _rewarded_groups(trainer, processor, cfg, tiny_data_dir)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _logps(model, processor, cfg, groups):
    from spark_vl.models.inputs import conversation

    pairs = [(g, i) for g in groups for i in range(len(g.responses))]
    batch = completion_batch(processor, [conversation(g.prompt, cfg.model) for g, _ in pairs],
                             [g.response_ids[i] for g, i in pairs], torch.device("cpu"))
    with torch.no_grad():
        return completion_logps(model, batch)[0] * batch["completion_mask"]


def test_only_the_adapters_train_and_the_base_stays_bit_for_bit(setup, tmp_path):
    cfg, processor, trainer, groups = setup
    names = [n for n, _ in trainer.model.named_parameters() if "lora_A" in n]
    assert names and not any("visual" in n for n in names), "adapters on the language model only"
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == {
        n for n, _ in trainer.model.named_parameters() if ".lora_" in n}
    assert trainer.reference is None  # the base with adapters disabled is the reference: no second copy
    before = _state(trainer.model)
    stats = trainer.grpo_step(groups)
    assert stats["train/kl"] == 0.0  # adapters start at B = 0: the policy is the reference
    after = _state(trainer.model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert any(".lora_B." in k for k in changed)
    trainer.grpo_step(groups)
    assert trainer.grpo_step(groups)["train/kl"] > 0  # now they differ


def test_saved_policy_is_the_merged_model_and_matches_base_plus_adapter(setup, tmp_path, tiny_model_dir):
    cfg, processor, trainer, groups = setup
    trainer.grpo_step(groups)
    trainer.save(tmp_path / "policy")
    assert (tmp_path / "policy" / ADAPTER_DIR / "adapter_config.json").exists()
    merged = load_model(tmp_path / "policy").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    adapted = _logps(trainer.model, processor, cfg, groups)
    assert torch.allclose(_logps(merged, processor, cfg, groups), adapted, atol=1e-5)
    # The merge equals PEFT's own, done on a copy (the trainer's module is never merged in place).
    peft_merged = copy.deepcopy(trainer.model).merge_and_unload().state_dict()
    ours = merged_state_dict(trainer.model.state_dict(), cfg.train.lora)
    assert ours.keys() == peft_merged.keys()
    for key, value in peft_merged.items():
        assert torch.allclose(ours[key], value, atol=1e-7), key
    # A trainer built on that policy starts from the same adapters.
    again = PolicyTrainer(cfg, processor, tmp_path / "policy", tiny_model_dir)
    assert torch.allclose(_logps(again.model, processor, cfg, groups), adapted, atol=1e-6)


def test_a_crashed_lora_run_resumes_exactly(tmp_path, monkeypatch, tiny_data_dir):
    cfg = _config(tiny_data_dir, LORA)
    reference = tmp_path / "reference"
    rows = run(cfg, reference)
    assert all(row["train/sequences"] > 0 for row in rows[1:])
    assert (policy_dir(reference, 3) / ADAPTER_DIR / "adapter_model.safetensors").exists()
    crashed = tmp_path / "crashed"
    for crash in ("train:2:before", "rollout:3:before"):  # while saving; then with policy 2 saved
        monkeypatch.setenv(ENV, f"{crash}:error")
        with pytest.raises(InjectedFault):
            run(cfg, crashed)
    monkeypatch.delenv(ENV)
    run(cfg, crashed)
    _assert_same_run(crashed, reference, 3)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_lora_under_zero_2_and_3_saves_the_adapted_model(setup, tiny_model_dir, tmp_path, zero):
    """Under ZeRO-3 the weights are partitioned: the merge is computed from the gathered state."""
    cfg0, processor, _, groups = setup
    deepspeed = Path(__file__).resolve().parent.parent / "configs" / "deepspeed" / f"{zero}.json"
    cfg = load_config(None, SMALL + LORA + [f"train.deepspeed_config={deepspeed}"])
    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, tiny_model_dir)
    assert trainer.grpo_step(groups)["train/kl"] == 0.0
    trainer.grpo_step(groups)
    trainer.save(tmp_path / "policy")
    merged = load_model(tmp_path / "policy").eval()
    adapted = PolicyTrainer(cfg0, processor, tmp_path / "policy", tiny_model_dir)  # base + the saved adapter
    expected = _logps(adapted.model, processor, cfg0, groups)
    assert torch.allclose(_logps(merged, processor, cfg0, groups), expected, atol=1e-5)
    assert not torch.allclose(_logps(load_model(tiny_model_dir).eval(), processor, cfg0, groups), expected, atol=1e-3)


def test_lora_under_zero_3_trains_on_video_prompts(setup, tiny_model_dir, tmp_path):
    """Clips of frames through the adapted model with partitioned weights: a step trains, and the
    saved (merged) policy reads the clips differently from the base model."""
    import dataclasses

    from spark_vl.config import BuiltinDataConfig
    from spark_vl.data import load_dataset
    from spark_vl.data.tasks import make_dataset
    from spark_vl.prompts import solve_prompt
    from spark_vl.rollout.hf import HFRolloutEngine

    cfg0, processor, _, _ = setup
    deepspeed = Path(__file__).resolve().parent.parent / "configs" / "deepspeed" / "zero3.json"
    cfg = load_config(None, SMALL + LORA + [f"train.deepspeed_config={deepspeed}"])
    samples = load_dataset(make_dataset(tmp_path / "data", BuiltinDataConfig(n_train=2, n_eval=1,
                                                                              families=["motion"]))["train"]).samples
    base = load_model(tiny_model_dir).eval()
    engine = HFRolloutEngine(base, processor, cfg.rollout, cfg.model, show_progress=False)
    groups = engine.generate([solve_prompt(s, cfg.data.instruction) for s in samples], n=4, seed=3)
    groups = [dataclasses.replace(g, rewards=[1.0, 0.0, 0.0, 1.0]) for g in groups]
    assert all(g.prompt.video for g in groups)
    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, tiny_model_dir)
    for _ in range(2):
        assert torch.isfinite(torch.tensor(trainer.grpo_step(groups)["train/loss"]))
    trainer.save(tmp_path / "policy")
    after = _logps(load_model(tmp_path / "policy").eval(), processor, cfg0, groups)
    assert not torch.allclose(after, _logps(base, processor, cfg0, groups), atol=1e-3)


def test_the_registry_holds_the_merged_model_and_the_adapter(setup, tmp_path, monkeypatch):
    from spark_vl import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # a bare SQLite store keeps artifacts under ./mlruns
    cfg, processor, trainer, groups = setup
    trainer.grpo_step(groups)  # adapters away from B = 0: the merged model differs from the base
    trainer.save(tmp_path / "policy")
    run_id = tracking.open_run(load_config(None, ["tracking.experiment=lora"]), tmp_path / "run", "lora")
    register(run_id, tmp_path / "policy", "lora-policy", 0.5)
    local = tracking.resolve_model("models:/lora-policy@champion", tmp_path / "download")
    assert (local / ADAPTER_DIR / "adapter_config.json").exists()
    merged = load_model(local).eval()
    assert torch.allclose(_logps(merged, processor, cfg, groups), _logps(trainer.model, processor, cfg, groups),
                          atol=1e-5)
