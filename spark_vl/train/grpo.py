"""GRPO: group-normalised advantages and the token-level clipped objective with a k3 KL penalty."""

from __future__ import annotations

import torch


def group_advantages(rewards: list[float], eps: float = 1e-6) -> list[float]:
    """(r - mean) / (std + eps) within one group; a group of equal rewards gets zeros (no signal)."""
    values = torch.tensor(rewards, dtype=torch.float64)
    std = values.std(unbiased=False)
    if std < eps:
        return [0.0] * len(rewards)
    return ((values - values.mean()) / (std + eps)).tolist()


def grpo_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    ref_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    completion_mask: torch.Tensor,
    clip_eps: float,
    kl_coef: float,
    total_tokens: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the per-token loss over this micro-batch divided by the tokens of the whole batch,
    so micro-batches accumulate to the token-level mean of the full batch.

    Shapes: logps and mask (B, T); advantages (B,).
    """
    ratio = torch.exp(per_token_logps - old_per_token_logps)
    clipped_ratio = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    adv = advantages.unsqueeze(1)
    per_token_pg = -torch.min(ratio * adv, clipped_ratio * adv)
    log_ref_ratio = ref_per_token_logps - per_token_logps
    per_token_kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1  # k3 estimator, >= 0
    per_token_loss = per_token_pg + kl_coef * per_token_kl
    mask = completion_mask.to(per_token_loss.dtype)
    loss = (per_token_loss * mask).sum() / total_tokens
    with torch.no_grad():
        stats = {
            "kl_sum": float((per_token_kl * mask).sum()),
            "clipped_sum": float((((ratio - clipped_ratio).abs() > 0).to(mask.dtype) * mask).sum()),
            "tokens": float(mask.sum()),
        }
    return loss, stats
