"""GRPO: group-normalised advantages and the token-level clipped objective with a k3 KL penalty."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

# How the per-token losses of a batch become one number (verl's loss_agg_mode):
# token-mean: every token of the batch weighs the same (DAPO; long answers weigh more);
# seq-mean-token-mean: every sequence weighs the same (the GRPO paper);
# seq-mean-token-sum-norm: token sums over a constant, sequences x max new tokens (Dr. GRPO).
LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def group_advantages(rewards: list[float], eps: float = 1e-6, by_std: bool = True) -> list[float]:
    """(r - mean) / (std + eps) within one group, or r - mean without `by_std` (Dr. GRPO: dividing
    by the std weighs groups near half solved most, which biases the expected gradient); a group
    of equal rewards gets zeros (no signal)."""
    values = torch.tensor(rewards, dtype=torch.float64)
    std = values.std(unbiased=False)
    if std < eps:
        return [0.0] * len(rewards)
    return ((values - values.mean()) / (std + eps if by_std else 1.0)).tolist()


def label_balanced(advantages: list[list[float]], classes: list[tuple[str, str] | None]) -> list[list[float]]:
    """Group advantages rescaled so that, among groups of one judge kind, each label pushes with
    the same total weight (sum of |advantage|); `classes[i]` is group i's (kind, label), None
    for groups left as they are.

    Why: GRPO gives a group more weight the nearer its success rate is to one half, so once a
    judge leans to one verdict the groups whose label is that verdict outweigh the others and the
    lean grows, until the verdict is one answer for all. Equal weights per label hold the
    verdict's marginal; what remains is the signal that tells right answers from wrong ones.
    A kind with only one label in the batch, or a label without signal, is left unscaled."""
    mass: dict[tuple[str, str], float] = {}
    for advs, cls in zip(advantages, classes):
        if cls is not None:
            mass[cls] = mass.get(cls, 0.0) + sum(abs(a) for a in advs)
    scale: dict[tuple[str, str], float] = {}
    for kind in {kind for kind, _ in mass}:
        labels = {cls: m for cls, m in mass.items() if cls[0] == kind}
        if len(labels) > 1 and all(m > 0 for m in labels.values()):
            mean = sum(labels.values()) / len(labels)
            scale.update({cls: mean / m for cls, m in labels.items()})
    return [[a * scale.get(cls, 1.0) for a in advs] if cls is not None else advs
            for advs, cls in zip(advantages, classes)]


def loss_normaliser(mode: LossAggMode, tokens: int, sequences: int, max_new_tokens: int) -> float:
    """What the summed loss of a whole batch is divided by under `mode` (see LossAggMode)."""
    return {"token-mean": tokens, "seq-mean-token-mean": sequences,
            "seq-mean-token-sum-norm": sequences * max_new_tokens}[mode]


@dataclass(frozen=True)
class LossOptions:
    """The objective's knobs, named as in `train` of the config: the ratio is clipped to
    [1 - clip_eps, 1 + clip_eps_high] ("clip-higher" when clip_eps_high is larger: rare tokens with
    positive advantage may grow further; None: clip_eps), a k3 KL penalty to the reference weighs
    kl_coef, entropy_coef rewards entropy, loss_agg_mode says how token losses make one number."""

    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    loss_agg_mode: LossAggMode = "token-mean"


def grpo_loss(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor,
              advantages: torch.Tensor, completion_mask: torch.Tensor, normaliser: float, options: LossOptions,
              per_token_entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the batch loss: its per-token losses summed (per sequence first
    averaged, in seq-mean-token-mean) and divided by the whole batch's `normaliser`
    (`loss_normaliser`), so micro-batches accumulate to the loss of the full batch.

    Shapes: (B, T); advantages (B,), one per sequence, or (B, T), one per token. With
    `options.entropy_coef`, `per_token_entropy` must carry gradients.
    """
    clip_eps = options.clip_eps
    high = clip_eps if options.clip_eps_high is None else options.clip_eps_high
    ratio = torch.exp(per_token_logps - old_per_token_logps)
    clipped_ratio = torch.clamp(ratio, 1 - clip_eps, 1 + high)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    per_token_pg = -torch.min(ratio * adv, clipped_ratio * adv)
    log_ref_ratio = ref_per_token_logps - per_token_logps
    per_token_kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # k3 estimator, >= 0
    per_token_loss = per_token_pg + options.kl_coef * per_token_kl
    if options.entropy_coef:
        per_token_loss = per_token_loss - options.entropy_coef * per_token_entropy
    mask = completion_mask.to(per_token_loss.dtype)
    if options.loss_agg_mode == "seq-mean-token-mean":
        loss = ((per_token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / normaliser
    else:
        loss = (per_token_loss * mask).sum() / normaliser
    with torch.no_grad():
        stats = {
            "kl_sum": float((per_token_kl * mask).sum()),
            "clipped_sum": float((((ratio - clipped_ratio).abs() > 0).to(mask.dtype) * mask).sum()),
            "tokens": float(mask.sum()),
        }
    return loss, stats
