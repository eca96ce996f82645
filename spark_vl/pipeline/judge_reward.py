"""Self-judged rewards for open-ended prompts (`spark.judge_reward`): no verifier can check their
answers, so the policy's own pointwise judge scores them, P("Yes") for each boxed answer.

The known failure is a policy that learns to please its own judge. Hence the judge is a frozen
snapshot of an earlier policy, moved on every `refresh` iterations, and trusted only while its
balanced accuracy on held-out verifiable anchors (pointwise prompts whose verdict is known) stays
at or above `anchor_floor`; below it, open-ended prompts get no reward until a later refresh
passes. Each iteration's state (snapshot, anchor accuracy, in use) is in its verify metrics, so
a resumed run takes up the same snapshot.
"""

from __future__ import annotations

from spark_vl.data import verifiable
from spark_vl.evaluate import held_out_judge_prompts
from spark_vl.evaluate.judge import judged_probabilities
from spark_vl.layout import iter_dir, read_json
from spark_vl.prompts import POSITIVE_LABELS, pointwise_judge_sample
from spark_vl.records import SELF_JUDGED_KINDS, PromptRecord, RolloutGroup
from spark_vl.runio import logger
from spark_vl.workspace import Workspace

SNAPSHOT, ANCHOR_ACC, IN_USE = "judge_reward/snapshot", "judge_reward/anchor_acc", "judge_reward/in_use"


def balanced_accuracy(probabilities: list[float | None], positive: list[bool]) -> float:
    """The mean of the accuracy on positive and on negative labels of verdicts P(positive) >= 0.5
    (None, a reply without a verdict, counts as wrong): a judge that always says one verdict
    scores 0.5 however the labels are split; one class alone scores its own accuracy."""
    hits = {True: [], False: []}
    for p, label in zip(probabilities, positive):
        hits[label].append(p is not None and (p >= 0.5) == label)
    rates = [sum(h) / len(h) for h in hits.values() if h]
    return sum(rates) / len(rates) if rates else float("nan")


def refresh_due(policy: int, snapshot: int, every: int) -> bool:
    """Whether the judge snapshot moves from `snapshot` to the rollout policy `policy`."""
    return policy - snapshot >= every


def state_before(run_dir, k: int) -> dict[str, float] | None:
    """The judge snapshot's state as the newest iteration before k that scored open-ended prompts
    left it (None: no iteration has yet)."""
    for j in range(k - 1, 0, -1):
        path = iter_dir(run_dir, j) / "verify.json"
        if path.exists() and SNAPSHOT in (metrics := read_json(path)):
            return {key: metrics[key] for key in (SNAPSHOT, ANCHOR_ACC, IN_USE)}
    return None


def anchors(ws: Workspace) -> list[PromptRecord]:
    """The held-out pointwise prompts with a Yes/No verdict a snapshot is checked on: the first
    `anchors` of the evaluation's (right and wrong proposed answers alternating per question)."""
    pointwise, _ = held_out_judge_prompts(verifiable(ws.samples("eval")), ws.config, ws.templates,
                                          ws.config.train.seed)
    return [p for p in pointwise if p.label in ("Yes", "No")][: ws.config.spark.judge_reward.anchors]


def score_open_groups(engine, groups: list[RolloutGroup], template: dict) -> None:
    """Each open-ended response's reward: the judge's P("Yes") for its boxed answer; 0 for a
    response without one (as a malformed answer scores 0 from a verifier)."""
    prompts, where = [], []
    for gi, group in enumerate(groups):
        for ri, answer in enumerate(group.extracted):
            if answer is not None:
                prompts.append(pointwise_judge_sample(group.prompt, answer, True, template, f"{group.prompt.id}/{ri}"))
                where.append((gi, ri))
    for (gi, ri), p in zip(where, judged_probabilities(engine, prompts)):
        groups[gi].rewards[ri] = p or 0.0


def judge_rewards(ws: Workspace, k: int, policy: int, groups: list[RolloutGroup]) -> dict[str, float]:
    """Reward iteration k's open-ended groups in place with the judge snapshot (moved to `policy`,
    the iteration's rollout policy, when due), or leave them at 0 when the snapshot's anchor
    accuracy is below the floor; returns the snapshot's state as metrics."""
    cfg = ws.config.spark.judge_reward
    open_groups = [g for g in groups if g.prompt.kind in SELF_JUDGED_KINDS]
    before = state_before(ws.run_dir, k)
    if before is None or refresh_due(policy, int(before[SNAPSHOT]), cfg.refresh):
        engine = ws.judge_engine(policy)
        prompts = anchors(ws)
        if not prompts:
            raise ValueError("open-ended prompts are rewarded by the judge, and the judge is checked on held-out "
                             "prompts with answers, but the held-out split has none: give data.eval_path rows with "
                             "answers (or set spark.judge_reward.enabled=false)")
        accuracy = balanced_accuracy(judged_probabilities(engine, prompts),
                                     [p.label in POSITIVE_LABELS for p in prompts])
        snapshot = policy
        if accuracy < cfg.anchor_floor:
            logger.warning("iteration %d: open-ended prompts get no reward: the judge of policy %d scores %.3f on "
                           "%d held-out anchors, below spark.judge_reward.anchor_floor %.2f; checked again in %d "
                           "iterations", k, policy, accuracy, len(prompts), cfg.anchor_floor, cfg.refresh)
    else:
        snapshot, accuracy = int(before[SNAPSHOT]), before[ANCHOR_ACC]
    in_use = accuracy >= cfg.anchor_floor
    if in_use and open_groups:
        score_open_groups(ws.judge_engine(snapshot), open_groups, ws.templates.yes_no)
    return {SNAPSHOT: float(snapshot), ANCHOR_ACC: accuracy, IN_USE: float(in_use)}
