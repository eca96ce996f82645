"""The policy-gradient method: advantages (GRPO, RLOO, REINFORCE++) and the clipped objective
(token-level as GRPO and PPO, or sequence-level as GSPO) with a KL penalty (k1, k2 or k3)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Literal

import torch

# How the per-token losses of a batch become one number (verl's loss_agg_mode):
# token-mean: every token of the batch weighs the same (DAPO; long answers weigh more);
# seq-mean-token-mean: every sequence weighs the same (the GRPO paper);
# seq-mean-token-sum-norm: token sums over a constant, sequences x max new tokens (Dr. GRPO).
LossAggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


# How rewards become advantages (verl's adv_estimator): grpo: (r - group mean) / group std;
# rloo: r - the mean of the group's other rewards (Ahmadian et al. 2024); reinforce_plus_plus:
# r normalised over the whole batch's tokens, no group baseline (Hu 2025).
AdvEstimator = Literal["grpo", "rloo", "reinforce_plus_plus"]
# The KL estimator of the penalty to the reference, in Schulman's names (verl's kl_loss_type):
# k1 = log(pi / ref), unbiased, may be negative; k2 = (log(pi / ref))^2 / 2; k3 = ref/pi - log(ref/pi) - 1.
KLLossType = Literal["k1", "k2", "k3"]
# The importance ratio of the objective (verl's policy_loss.loss_mode): vanilla: per token, as
# PPO and GRPO; gspo: one per sequence, exp of the mean token log-ratio (Zheng et al. 2025).
LossMode = Literal["vanilla", "gspo"]


def group_advantages(rewards: list[float], eps: float = 1e-6, by_std: bool = True) -> list[float]:
    """(r - mean) / (std + eps) within one group, or r - mean without `by_std` (Dr. GRPO: dividing
    by the std weighs groups near half solved most, which biases the expected gradient); a group
    of equal rewards gets zeros (no signal). The std is the group's population std (divide by G);
    TRL and verl divide by the sample std (G - 1), so their advantages are sqrt((G - 1) / G) of
    ours (0.866 at G = 4): the same direction, a weaker pull against the KL term."""
    if len(rewards) < 2:  # no group to compare with (and no std of nothing)
        return [0.0] * len(rewards)
    values = torch.tensor(rewards, dtype=torch.float64)
    std = values.std(unbiased=False)
    if std < eps:
        return [0.0] * len(rewards)
    return ((values - values.mean()) / (std + eps if by_std else 1.0)).tolist()


def rloo_advantages(rewards: list[float]) -> list[float]:
    """r_i minus the mean of the group's other rewards: a baseline independent of r_i, so the
    gradient stays unbiased; equals G / (G - 1) (r_i - mean). A group of one has no baseline: 0."""
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    total = sum(rewards)
    return [r - (total - r) / (n - 1) for r in rewards]


def batch_whitened(rewards: list[list[float]], lengths: list[list[int]], eps: float = 1e-8) -> list[list[float]]:
    """REINFORCE++ with an outcome reward: every token of a response carries its reward, and the
    batch's tokens are whitened together (mean 0, sample std 1), so a response's advantage is
    (r - token mean) / token std; its sign says better or worse than the batch, whatever its group."""
    flat = torch.tensor([r for group in rewards for r in group], dtype=torch.float64)
    weights = torch.tensor([n for group in lengths for n in group], dtype=torch.float64)
    tokens = weights.sum()
    if tokens < 2:
        return [[0.0] * len(group) for group in rewards]
    mean = (flat * weights).sum() / tokens
    var = (((flat - mean) ** 2) * weights).sum() / (tokens - 1)
    if var < eps:
        return [[0.0] * len(group) for group in rewards]
    return regroup(((flat - mean) / torch.sqrt(var + eps)).tolist(), rewards)


def regroup(flat: list[float], like: list[list[Any]]) -> list[list[float]]:
    """`flat`, one value per item of `like`'s groups in order, split back into those groups."""
    ends = list(accumulate(len(group) for group in like))
    return [flat[end - len(group):end] for group, end in zip(like, ends)]


def compute_advantages(rewards: list[list[float]], lengths: list[list[int]], estimator: AdvEstimator = "grpo",
               by_std: bool = True) -> list[list[float]]:
    """Per group, one advantage per response, by `estimator`; `lengths`: each response's tokens
    (the batch-level estimator weighs responses by them); `by_std` applies to grpo only."""
    if estimator == "rloo":
        return [rloo_advantages(group) for group in rewards]
    if estimator == "reinforce_plus_plus":
        return batch_whitened(rewards, lengths)
    return [group_advantages(group, by_std=by_std) for group in rewards]


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
    positive advantage may grow further; None: clip_eps), a KL penalty to the reference
    (kl_loss_type) weighs kl_coef, entropy_coef rewards entropy, loss_agg_mode says how token
    losses make one number, loss_mode whether the ratio is per token or per sequence;
    tis_imp_ratio_cap: truncated importance sampling (`rollout_correction`)."""

    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    loss_agg_mode: LossAggMode = "token-mean"
    kl_loss_type: KLLossType = "k3"
    loss_mode: LossMode = "vanilla"
    tis_imp_ratio_cap: float | None = None


def kl_penalty(per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor, kind: KLLossType) -> torch.Tensor:
    """Per-token estimate of KL(pi || ref) from the sampled tokens' log-probabilities."""
    log_ratio = per_token_logps - ref_per_token_logps
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    return torch.exp(-log_ratio) + log_ratio - 1  # k3, >= 0


def importance_ratio(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, mask: torch.Tensor,
                     mode: LossMode) -> torch.Tensor:
    """pi / pi_old per token (vanilla), or GSPO's sequence ratio exp(mean_t log(pi / pi_old)) on
    every token of the sequence, written so its gradient on token t is that ratio times
    grad log pi(y_t) (GSPO-token; averaged over a sequence's tokens it is GSPO's gradient)."""
    log_ratio = per_token_logps - old_per_token_logps
    if mode == "vanilla":
        return torch.exp(log_ratio)
    sequence = (log_ratio * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.exp(per_token_logps - per_token_logps.detach() + sequence.detach().unsqueeze(1))


def rollout_correction(old_per_token_logps: torch.Tensor, behaviour_per_token_logps: torch.Tensor,
                       cap: float) -> torch.Tensor:
    """Truncated importance sampling (TIS; verl tis_imp_ratio_cap, TRL vllm_importance_sampling_cap):
    the tokens were sampled by the rollout engine (behaviour), whose probabilities differ from the
    trainer's for the same weights (another kernel, precision, or one step older weights); each
    token's loss is weighted by min(pi_old / pi_behaviour, cap), without gradient."""
    return torch.clamp(torch.exp(old_per_token_logps - behaviour_per_token_logps), max=cap).detach()


def grpo_loss(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, ref_per_token_logps: torch.Tensor,
              advantages: torch.Tensor, completion_mask: torch.Tensor, normaliser: float, options: LossOptions,
              per_token_entropy: torch.Tensor | None = None,
              behaviour_per_token_logps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the batch loss: its per-token losses summed (per sequence first
    averaged, in seq-mean-token-mean) and divided by the whole batch's `normaliser`
    (`loss_normaliser`), so micro-batches accumulate to the loss of the full batch.

    Shapes: (B, T); advantages (B,), one per sequence, or (B, T), one per token. With
    `options.entropy_coef`, `per_token_entropy` must carry gradients. With
    `options.tis_imp_ratio_cap`, `behaviour_per_token_logps` are the rollout engine's and
    `old_per_token_logps` the trainer's before the update.
    """
    clip_eps = options.clip_eps
    high = clip_eps if options.clip_eps_high is None else options.clip_eps_high
    mask = completion_mask.to(per_token_logps.dtype)
    ratio = importance_ratio(per_token_logps, old_per_token_logps, mask, options.loss_mode)
    clipped_ratio = torch.clamp(ratio, 1 - clip_eps, 1 + high)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    per_token_pg = -torch.min(ratio * adv, clipped_ratio * adv)
    weight = None
    if options.tis_imp_ratio_cap is not None:
        weight = rollout_correction(old_per_token_logps, behaviour_per_token_logps, options.tis_imp_ratio_cap)
        per_token_pg = per_token_pg * weight
    per_token_kl = kl_penalty(per_token_logps, ref_per_token_logps, options.kl_loss_type)
    per_token_loss = per_token_pg + options.kl_coef * per_token_kl
    if options.entropy_coef:
        per_token_loss = per_token_loss - options.entropy_coef * per_token_entropy
    if options.loss_agg_mode == "seq-mean-token-mean":
        loss = ((per_token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / normaliser
    else:
        loss = (per_token_loss * mask).sum() / normaliser
    with torch.no_grad():
        stats = {
            "kl_sum": float((per_token_kl * mask).sum()),
            "clipped_sum": float((((ratio - clipped_ratio).abs() > 0).to(mask.dtype) * mask).sum()),
            "tokens": float(mask.sum()),
            "tis_weight_sum": float((weight * mask).sum()) if weight is not None else float(mask.sum()),
        }
    return loss, stats
