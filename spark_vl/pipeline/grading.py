"""Rewards for a batch of rollout groups: task and reflection responses against the ground
truth, judge replies against their verdict label and the reply check. Open-ended responses get
their answers extracted here and their rewards from the judge (`judge_reward.py`)."""

from __future__ import annotations

from spark_vl.records import JUDGE_KINDS, SELF_JUDGED_KINDS, task_item
from spark_vl.prompts import Templates, reply_is_intact
from spark_vl.verify import GradeItem, GradingPool, extract_answer, extract_verdict


def grade_groups(groups, templates: Templates, pool: GradingPool, judge_reply_check: str) -> None:
    """Fill rewards, statuses and extracted answers in place: solve and reflect responses against
    the ground truth, judge responses against their verdict label; open-ended responses (no
    ground truth) get their extracted answers and a reward of 0 until the judge scores them."""
    items, where = [], []
    for gi, group in enumerate(groups):
        if group.prompt.kind in SELF_JUDGED_KINDS:
            continue
        judge = group.prompt.kind in JUDGE_KINDS
        for ri, response in enumerate(group.responses):
            items.append(GradeItem(response, group.prompt.label, "judge") if judge else task_item(response, group.prompt))
            where.append((gi, ri))
    grades = pool.grade(items)
    for group in groups:
        n = len(group.responses)
        group.rewards, group.statuses, group.extracted = [0.0] * n, ["ok"] * n, [None] * n
        if group.prompt.kind in SELF_JUDGED_KINDS:
            group.extracted = [extract_answer(r, pool.answer_format) for r in group.responses]
    for (gi, ri), grade in zip(where, grades):
        group = groups[gi]
        reward = grade.reward
        status = grade.status
        if group.prompt.kind in JUDGE_KINDS:
            group.extracted[ri] = extract_verdict(group.responses[ri])
            if not reply_is_intact(group.responses[ri], group.prompt, templates, judge_reply_check):
                reward, status = 0.0, "malformed" if status == "ok" else status
        else:
            group.extracted[ri] = extract_answer(group.responses[ri], pool.answer_format)
        group.rewards[ri], group.statuses[ri] = reward, status
