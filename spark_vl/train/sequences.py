"""Verified rollout groups -> the sequences an update trains on: each with its advantage and the
completion tokens that carry it (a judge reply's verdict and its reading of the image, under
`spark.judge_credit`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spark_vl.config import RunConfig
from spark_vl.models.inputs import conversation
from spark_vl.prompts import Templates, judge_claims
from spark_vl.records import JUDGE_KINDS, RolloutGroup
from spark_vl.train.grpo import compute_advantages, group_advantages, label_balanced, regroup
from spark_vl.verify.extract import box_span


@dataclass
class Sequence:
    """One sampled completion to train on, with the advantage it carries and where."""

    conversation: list[dict]
    completion: list[int]
    old_logps: list[float]
    advantage: float
    temperature: float  # the one it was sampled at, so the ratio compares like with like
    credit: tuple[int, int] | None = None  # the completion tokens that carry `advantage`; None: all
    group: int = 0  # the index of its rollout group in the batch
    claim: tuple[int, int, float] | None = None  # (first, end, advantage) of tokens carrying their own advantage
    proximal_logps: list[float] | None = None  # the trainer's, before this batch's updates (rollout correction)


def char_span_tokens(ids: list[int], tokenizer, start: int, end: int) -> tuple[int, int] | None:
    """[first, last + 1) of the completion tokens that spell characters [start, end) of the decoded
    completion; None when no token does."""
    ends = [len(tokenizer.decode(ids[:i + 1], skip_special_tokens=True)) for i in range(len(ids))]
    starts = [0] + ends[:-1]
    covering = [i for i in range(len(ids)) if starts[i] < end and ends[i] > start]
    return (covering[0], covering[-1] + 1) if covering else None


def verdict_tokens(ids: list[int], tokenizer) -> tuple[int, int] | None:
    """The completion tokens that spell the verdict inside the reply's box; None for a reply
    without one box."""
    span = box_span(tokenizer.decode(ids, skip_special_tokens=True))
    return None if span is None else char_span_tokens(ids, tokenizer, span[1], span[2])


def credit_mask(mask: torch.Tensor, sequences: list[Sequence]) -> torch.Tensor:
    """The completion mask with each sequence's tokens outside its credit span (and its claim)
    zeroed."""
    if not any(s.credit for s in sequences):
        return mask
    mask = mask.clone()
    for row, s in enumerate(sequences):
        if s.credit:
            kept = mask[row].clone()
            mask[row, :s.credit[0]] = 0
            mask[row, s.credit[1]:] = 0
            if s.claim:
                mask[row, s.claim[0]:s.claim[1]] = kept[s.claim[0]:s.claim[1]]
    return mask


def token_advantages(mask: torch.Tensor, sequences: list[Sequence]) -> torch.Tensor:
    """(B, T) advantages: each sequence's own, and its claim's on the claim tokens."""
    advantages = torch.tensor([s.advantage for s in sequences], device=mask.device, dtype=torch.float32)
    advantages = advantages.unsqueeze(1).expand(mask.shape).clone()
    for row, s in enumerate(sequences):
        if s.claim:
            advantages[row, s.claim[0]:s.claim[1]] = s.claim[2]
    return advantages


def sequences_with_signal(groups: list[RolloutGroup], config: RunConfig,
                          tokenizer=None) -> tuple[list[Sequence], int]:
    """Flatten groups into sequences with advantages (`train.adv_estimator`); groups whose
    advantages are all zero (equal rewards, under a group baseline) are dropped and counted.
    With `spark.balance_judge_advantages` each judge label pushes with equal weight (`label_balanced`);
    with `spark.judge_credit: verdict` an intact judge reply's loss is on its verdict tokens only;
    with `claims` each claim of an intact reply carries the advantage of its own check
    (`claims_advantages`)."""
    sequences, flat_groups = [], 0
    by_std = config.train.norm_adv_by_std
    lengths = [[len(ids) for ids in group.response_ids] for group in groups]
    per_group = compute_advantages([group.rewards for group in groups], lengths, config.train.adv_estimator, by_std)
    if config.spark.balance_judge_advantages:
        per_group = label_balanced(per_group, [(g.prompt.kind, g.prompt.label) if g.prompt.kind in JUDGE_KINDS
                                               else None for g in groups])
    seen: list[list] = [[None] * len(g.responses) for g in groups]
    if config.spark.judge_credit == "claims":
        judges = [i for i, g in enumerate(groups) if g.prompt.kind in JUDGE_KINDS]
        verdicts, readings = claims_advantages([groups[i] for i in judges], Templates.load(config.spark.templates),
                                               tokenizer, by_std)
        for i, verdict, reading in zip(judges, verdicts, readings):
            per_group[i], seen[i] = verdict, reading
    for index, (group, advantages) in enumerate(zip(groups, per_group)):
        if not any(advantages) and not any(seen[index]):
            flat_groups += 1
            continue
        conv = conversation(group.prompt, config.model)
        temperature = config.rollout.temperature_for(group.prompt.kind)
        on_verdict = config.spark.judge_credit in ("verdict", "claims") and group.prompt.kind in JUDGE_KINDS
        statuses = group.statuses or ["ok"] * len(group.responses)
        for ids, logps, adv, status, claim in zip(group.response_ids, group.logprobs, advantages, statuses,
                                                  seen[index]):
            if ids:  # a malformed reply is wrong all through: its whole text carries the advantage
                credit = verdict_tokens(ids, tokenizer) if on_verdict and status != "malformed" else None
                sequences.append(Sequence(conv, ids, logps, adv, temperature, credit, index,
                                          claim if credit else None))
    return sequences, flat_groups


def claims_advantages(groups: list[RolloutGroup], templates: Templates, tokenizer, by_std: bool
                      ) -> tuple[list[list[float]], list[list[tuple[int, int, float] | None]]]:
    """Under `spark.judge_credit: claims`, the judge groups' advantages claim by claim
    (`judge_claims`): the verdict's, from whether it follows from the reply's own words, and those
    of the tokens saying what the image shows, from whether that is the ground truth. A reply that
    fails the reply check scores 0 on both, its verdict advantage then on all its tokens.

    Each claim is a rule's check, not an outcome of the prompt's difficulty, so its baseline is
    the batch's mean over all judge replies, not the group's: a group whose replies all box the
    same inconsistent letter is pushed away from it, where a group baseline would see no signal
    and leave a constant verdict where it is. Returns, per group, the verdict advantages and the
    (first, end, advantage) of each reply's reading (None: no reading, or no advantage)."""
    claims = [[judge_claims(tokenizer.decode(ids, skip_special_tokens=True), group.prompt, templates)
               if status != "malformed" else None
               for ids, status in zip(group.response_ids, group.statuses or ["ok"] * len(group.responses))]
              for group in groups]

    def batch_advantages(check) -> list[list[float]]:
        scores = [[float(c is not None and check(c)) for c in group] for group in claims]
        return regroup(group_advantages([s for group in scores for s in group], by_std=by_std), scores)

    verdicts = batch_advantages(lambda c: c.consistent)
    readings = batch_advantages(lambda c: c.seen_right)
    seen = []
    for group, group_claims, advantages in zip(groups, claims, readings):
        spans = [char_span_tokens(ids, tokenizer, *c.seen) if c else None
                 for ids, c in zip(group.response_ids, group_claims)]
        seen.append([(*span, a) if span and a else None for span, a in zip(spans, advantages)])
    return verdicts, seen
