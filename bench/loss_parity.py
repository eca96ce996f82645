"""spark-vl's policy losses against TRL's own `GRPOTrainer._compute_loss` on identical tensors.

    .venv/bin/pip install -e '.[bench]'    # TRL
    .venv/bin/python bench/loss_parity.py

Both losses get the same per-token log-probabilities (with gradient), old and reference
log-probabilities, advantages and completion mask; TRL's model forward is replaced by a
function returning those tensors, everything after it is TRL's code as installed (with
`use_bias_correction_kl: false`; the last row shows what its default changes). For each
objective the table gives the largest absolute difference of the loss and of its gradient
with respect to the log-probabilities. What it does not compare: how advantages are made (TRL
divides by the sample std of a group, spark-vl by the population std; the table's last line
gives that ratio at the group size used) and anything before the loss (rollouts, batching).
"""

from __future__ import annotations

import math
import tempfile
from datetime import date
from types import SimpleNamespace

import torch
import trl
from accelerate import Accelerator
from trl import GRPOConfig, GRPOTrainer

from report import publish
from spark_vl.train.grpo import LossOptions, group_advantages, grpo_loss, loss_normaliser, rollout_correction

B, T, MAX_NEW, G = 8, 12, 16, 4
CLIP, KL_COEF, TIS_CAP = 0.2, 1e-3, 2.0

# name: (TRL loss_type, TRL importance_sampling_level, our LossOptions, TIS on)
OBJECTIVES = {
    "GRPO (per-sequence mean)": ("grpo", "token", LossOptions(loss_agg_mode="seq-mean-token-mean"), False),
    "DAPO (token mean)": ("dapo", "token", LossOptions(loss_agg_mode="token-mean"), False),
    "Dr. GRPO (token sum / B x max new)": ("dr_grpo", "token", LossOptions(loss_agg_mode="seq-mean-token-sum-norm"),
                                           False),
    "GSPO (sequence ratio)": ("grpo", "sequence", LossOptions(loss_agg_mode="seq-mean-token-mean", loss_mode="gspo"),
                              False),
    "GRPO + TIS (cap 2)": ("grpo", "token", LossOptions(loss_agg_mode="seq-mean-token-mean",
                                                        tis_imp_ratio_cap=TIS_CAP), True),
}


def tensors(seed: int) -> dict[str, torch.Tensor]:
    """A batch as a rollout gives it: ragged completions, a policy a little off the old one."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, T + 1, (B,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    old = -torch.rand(B, T, generator=g) * 3
    return {"logps": old + torch.randn(B, T, generator=g) * 0.15, "old": old,
            "ref": old + torch.randn(B, T, generator=g) * 0.3, "sampling": old + torch.randn(B, T, generator=g) * 0.5,
            "advantages": torch.randn(B, generator=g), "mask": mask}


def trl_trainer(loss_type: str, level: str, use_tis: bool, logps: torch.Tensor,
                bias_corrected_kl: bool = False) -> GRPOTrainer:
    """A GRPOTrainer with only what `_compute_loss` reads, its forward returning `logps`."""
    args = GRPOConfig(output_dir=tempfile.gettempdir(), loss_type=loss_type, importance_sampling_level=level,
                      beta=KL_COEF, epsilon=CLIP, max_completion_length=MAX_NEW, report_to=[], use_cpu=True,
                      bf16=False, use_bias_correction_kl=bias_corrected_kl)
    trainer = GRPOTrainer.__new__(GRPOTrainer)
    trainer.__dict__.update(
        args=args, loss_type=loss_type, importance_sampling_level=level, beta=KL_COEF, epsilon_low=CLIP,
        epsilon_high=CLIP, max_completion_length=MAX_NEW, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        aux_loss_enabled=False, use_vllm=use_tis, vllm_importance_sampling_correction=use_tis,
        _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1, accelerator=Accelerator(cpu=True),
        model=SimpleNamespace(training=True), _metrics={"train": _Metrics(), "eval": _Metrics()})
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    return trainer


class _Metrics(dict):
    """TRL appends its metrics to lists by name; they are not compared."""

    def __missing__(self, key):
        self[key] = []
        return self[key]


def compare(name: str, seed: int, bias_corrected_kl: bool = False) -> tuple[float, float]:
    loss_type, level, options, use_tis = OBJECTIVES[name]
    t = tensors(seed)
    ours_in = t["logps"].clone().requires_grad_()
    behaviour = t["sampling"] if use_tis else None
    normaliser = loss_normaliser(options.loss_agg_mode, int(t["mask"].sum()), B, MAX_NEW)
    ours, _ = grpo_loss(ours_in, t["old"], t["ref"], t["advantages"], t["mask"], normaliser,
                        LossOptions(**{**options.__dict__, "clip_eps": CLIP, "kl_coef": KL_COEF}),
                        behaviour_per_token_logps=behaviour)
    ours.backward()

    theirs_in = t["logps"].clone().requires_grad_()
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": t["mask"],
              "advantages": t["advantages"], "old_per_token_logps": t["old"], "ref_per_token_logps": t["ref"],
              "num_items_in_batch": t["mask"].sum()}
    if use_tis:
        inputs["importance_sampling_ratio"] = rollout_correction(t["old"], t["sampling"], TIS_CAP)
    theirs = trl_trainer(loss_type, level, use_tis, theirs_in, bias_corrected_kl)._compute_loss(None, inputs)
    theirs.backward()
    return abs(ours.item() - theirs.item()), float((ours_in.grad - theirs_in.grad).abs().max())


def main() -> None:
    seeds = range(5)
    rows = []
    for name in OBJECTIVES:
        results = [compare(name, seed) for seed in seeds]
        rows.append(f"| {name} | {max(r[0] for r in results):.1e} | {max(r[1] for r in results):.1e} |")
    default_kl = [compare("GRPO (per-sequence mean)", seed, bias_corrected_kl=True) for seed in seeds]
    rows.append(f"| GRPO against TRL's default `use_bias_correction_kl: true` | {max(r[0] for r in default_kl):.1e} "
                f"| {max(r[1] for r in default_kl):.1e} |")
    ratio = group_advantages([1.0, 0.0, 0.0, 0.0])[0] / float((1 - 0.25) / torch.tensor([1.0, 0, 0, 0]).std())
    text = "\n".join([
        f"# Loss parity with TRL {trl.__version__} ({date.today().isoformat()})", "",
        f"`.venv/bin/python bench/loss_parity.py`: {len(seeds)} random batches of {B} completions (ragged, up to "
        f"{T} tokens), clip {CLIP}, KL coefficient {KL_COEF} (k3), max new tokens {MAX_NEW}; spark-vl's `grpo_loss` "
        "and TRL's `GRPOTrainer._compute_loss` (its forward replaced by the same log-probabilities) on the same "
        "tensors, TRL with `use_bias_correction_kl: false` (its default, true, multiplies the KL term by the "
        "importance ratio, DeepSeek-V3.2's unbiased KL gradient, which spark-vl does not do: last row). Largest "
        "absolute difference over the batches:", "",
        "| objective | loss | gradient |", "| --- | --- | --- |", *rows, "",
        f"Advantages are not part of the loss: at group size {G} spark-vl's (population std) are "
        f"{ratio:.4f} x TRL's (sample std) = sqrt({G}/{G - 1}) = {math.sqrt(G / (G - 1)):.4f}, so its policy-gradient "
        "term pulls that much harder against the KL term (docs/how-it-works.md).",
    ])
    publish("loss_parity", text)


if __name__ == "__main__":
    main()
