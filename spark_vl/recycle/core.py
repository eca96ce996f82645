"""SPARK recycling: verified task rollouts -> judge and self-reflection prompts with known labels.

Pure functions on typed records with an explicit RNG. Per group (one task prompt, n verified
responses): all correct -> a pointwise judge sample about a correct answer (positive); all
wrong -> a pointwise sample about a wrong answer that has a boxed answer (negative); mixed ->
pointwise about one answer of a random class with probability `pointwise_prob`, otherwise a
pairwise sample (one correct and one wrong answer as (A)/(B) in random order). Groups with a
wrong rollout also give a reflection sample (CoT mode: the wrong reasoning; answer mode: the
wrong extracted answer). At most `judge_cap` and `reflect_cap` of a batch are kept.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from spark_vl.config import SparkConfig
from spark_vl.prompts import (POSITIVE_LABELS, Templates, pairwise_judge_sample, pointwise_judge_sample,
                              reflection_sample)
from spark_vl.records import PromptRecord, RolloutGroup, is_right
from spark_vl.verify import normalise


@dataclass
class RecycleResult:
    prompts: list[PromptRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _answers(group: RolloutGroup) -> tuple[list[str], list[str], list[int]]:
    """(correct answers, wrong extracted answers, indices of wrong responses) of a verified group."""
    correct = [a for a, r in zip(group.extracted, group.rewards) if is_right(r) and a is not None]
    wrong = [a for a, r in zip(group.extracted, group.rewards) if not is_right(r) and a is not None and a.strip()]
    wrong_idx = [i for i, r in enumerate(group.rewards) if not is_right(r)]
    return correct, wrong, wrong_idx


def judge_samples_for_group(group: RolloutGroup, cfg: SparkConfig, templates: Templates, rng: random.Random,
                            prefix: str) -> list[PromptRecord]:
    """The reference rules for one group: at most one judge sample (a pairwise one in both orders
    with `spark.pairwise_both_orders`)."""
    correct, wrong, _ = _answers(group)
    source = group.prompt
    sid = f"{prefix}/{source.id}/judge"
    if correct and not wrong:  # all correct (or the wrong ones have no boxed answer)
        return [pointwise_judge_sample(source, rng.choice(correct), True, rng.choice(templates.pointwise), sid)]
    if wrong and not correct:
        return [pointwise_judge_sample(source, rng.choice(wrong), False, rng.choice(templates.pointwise), sid)]
    if not (correct and wrong):
        return []  # nothing extractable to judge
    if rng.random() < cfg.pointwise_prob:
        is_correct = rng.random() < 0.5
        answer = rng.choice(correct if is_correct else wrong)
        return [pointwise_judge_sample(source, answer, is_correct, rng.choice(templates.pointwise), sid)]
    right, wrong_answer, template = rng.choice(correct), rng.choice(wrong), rng.choice(templates.pairwise)
    first = rng.random() < 0.5
    orders = (first, not first) if cfg.pairwise_both_orders else (first,)
    return [pairwise_judge_sample(source, right, wrong_answer, template, order, sid + SWAPPED * i)
            for i, order in enumerate(orders)]


SWAPPED = "-swapped"  # id suffix of a pairwise sample's mirror (`spark.pairwise_both_orders`)


def _single_units(samples: list[PromptRecord]) -> list[list[PromptRecord]]:
    """Units of non-pointwise samples, kept or dropped together: a pairwise sample with its mirror."""
    units: dict[str, list[PromptRecord]] = {}
    for s in samples:
        if s.kind != "judge_pointwise":
            units.setdefault(s.id.removesuffix(SWAPPED), []).append(s)
    return list(units.values())


_PLAIN_ANSWER = re.compile(r"^[A-Za-z0-9 ]+$")


def _balance_pointwise(samples: list[PromptRecord], groups: list[RolloutGroup], templates: Templates,
                       rng: random.Random, prefix: str) -> list[PromptRecord]:
    """Equal numbers of correct and wrong pointwise samples for EACH question text, so that neither
    the verdict prior nor the kind of question predicts the label.

    The scarce class is filled from the batch: correct answers of the same question, a group's
    own wrong answers, or (for plain word/number answers, where string comparison is exact) an
    answer given to another prompt of the same question that differs from this prompt's ground
    truth. Without any, the surplus is dropped."""
    pointwise = [s for s in samples if s.kind == "judge_pointwise"]
    others = [s for s in samples if s.kind != "judge_pointwise"]
    by_question: dict[str, list[RolloutGroup]] = {}
    for group in groups:
        by_question.setdefault(group.prompt.question, []).append(group)
    kept: list[PromptRecord] = []
    extra = 0
    for question, q_groups in by_question.items():
        samples_q = [s for s in pointwise if s.question == question]
        classes = {True: [s for s in samples_q if s.label in POSITIVE_LABELS],
                   False: [s for s in samples_q if s.label not in POSITIVE_LABELS]}
        answers_q = sorted({a for g in q_groups for a in g.extracted if a and a.strip()})
        pools: dict[bool, list[tuple[PromptRecord, str]]] = {True: [], False: []}
        for group in q_groups:
            correct, wrong, _ = _answers(group)
            pools[True] += [(group.prompt, a) for a in sorted(set(correct))]
            borrowed = [a for a in answers_q if _PLAIN_ANSWER.match(a) and _PLAIN_ANSWER.match(group.prompt.answer)
                        and normalise(a) != normalise(group.prompt.answer)]
            pools[False] += [(group.prompt, a) for a in sorted(set(wrong) | set(borrowed))]
        short_is_correct = len(classes[True]) < len(classes[False])
        short, long_ = classes[short_is_correct], classes[not short_is_correct]
        while len(short) < len(long_) and pools[short_is_correct]:
            source, answer = rng.choice(pools[short_is_correct])
            short.append(pointwise_judge_sample(source, answer, short_is_correct, rng.choice(templates.pointwise),
                                                f"{prefix}/{source.id}/judge-balance{extra}"))
            extra += 1
        rng.shuffle(long_)
        del long_[len(short):]
        kept += classes[True] + classes[False]
    return others + kept


def _question_pairs(samples: list[PromptRecord], rng: random.Random) -> list[list[PromptRecord]]:
    """Units of samples kept or dropped together: pointwise ones in correct/wrong pairs of one question."""
    units = _single_units(samples)
    pointwise = [s for s in samples if s.kind == "judge_pointwise"]
    for question in sorted({s.question for s in pointwise}):
        positive = [s for s in pointwise if s.question == question and s.label in POSITIVE_LABELS]
        negative = [s for s in pointwise if s.question == question and s.label not in POSITIVE_LABELS]
        rng.shuffle(positive)
        rng.shuffle(negative)
        units += [[p, n] for p, n in zip(positive, negative)]
    return units


def _answer_pairs(samples: list[PromptRecord], groups: list[RolloutGroup], templates: Templates,
                  rng: random.Random, prefix: str) -> list[list[PromptRecord]]:
    """Units as `_question_pairs`, but each pointwise sample paired with its counterpart: the same
    proposed answer put to another prompt of the same question, right there if it was wrong here
    and wrong there if it was right (plain word/number answers only, where string comparison is
    exact). Beside the recycled samples, every distinct answer the batch gave becomes a candidate
    too, so pairing does not thin the judge prompts; one without a counterpart is dropped. Why: a
    verdict that reads the proposed answer and not the image scores exactly half on such pairs."""
    units = _single_units(samples)
    source_of = {g.prompt.source_id: g.prompt for g in reversed(groups)}  # the first group of a source wins
    candidates = [(source_of[s.source_id], s.proposed[0], s.label in POSITIVE_LABELS, s)
                  for s in samples if s.kind == "judge_pointwise"]
    seen = {(source.source_id, normalise(answer)) for source, answer, _, _ in candidates}
    for group in groups:
        correct, wrong, _ = _answers(group)
        for answer, right in [(a, True) for a in sorted(set(correct))] + [(a, False) for a in sorted(set(wrong))]:
            if (group.prompt.source_id, normalise(answer)) not in seen:
                seen.add((group.prompt.source_id, normalise(answer)))
                candidates.append((group.prompt, answer, right, None))
    for i, (source, answer, correct, sample) in enumerate(candidates):
        if not _PLAIN_ANSWER.match(answer):
            continue
        others = [g.prompt for g in groups if g.prompt.question == source.question
                  and g.prompt.source_id != source.source_id and _PLAIN_ANSWER.match(g.prompt.answer)
                  and (normalise(answer) == normalise(g.prompt.answer)) != correct]
        if others:
            twin = rng.choice(others)
            sample = sample or pointwise_judge_sample(source, answer, correct, rng.choice(templates.pointwise),
                                                      f"{prefix}/{source.id}/judge-pair{i}")
            units.append([sample, pointwise_judge_sample(twin, answer, not correct, rng.choice(templates.pointwise),
                                                         f"{prefix}/{twin.id}/judge-twin{i}")])
    return units


def _take(units: list[list[PromptRecord]], cap: int, rng: random.Random, pairwise_cap: int = 0) -> list[PromptRecord]:
    """Up to `cap` samples, whole units at random; pairwise units first, up to `pairwise_cap`."""
    units = list(units)
    rng.shuffle(units)
    taken: list[PromptRecord] = []
    chosen: set[int] = set()
    for limit, eligible in ((min(cap, pairwise_cap), lambda unit: unit[0].kind == "judge_pairwise"),
                            (cap, lambda unit: True)):
        for i, unit in enumerate(units):
            if i not in chosen and eligible(unit) and len(taken) + len(unit) <= limit:
                taken += unit
                chosen.add(i)
    return taken


def recycle(groups: list[RolloutGroup], cfg: SparkConfig, batch_size: int, rng: random.Random,
            templates: Templates, prefix: str) -> RecycleResult:
    """Judge and reflection prompts recycled from a batch of verified solve groups."""
    solve = [g for g in groups if g.prompt.kind == "solve" and g.rewards]
    judge: list[PromptRecord] = []
    for group in solve:
        judge += judge_samples_for_group(group, cfg, templates, rng, prefix)
    judge_cap = int(cfg.judge_cap * batch_size)
    pairwise_cap = round(cfg.pairwise_share * judge_cap)
    if cfg.balance_judge_labels and cfg.pair_judge_answers:
        judge = _take(_answer_pairs(judge, solve, templates, rng, prefix), judge_cap, rng, pairwise_cap)
    elif cfg.balance_judge_labels:
        judge = _take(_question_pairs(_balance_pointwise(judge, solve, templates, rng, prefix), rng), judge_cap, rng,
                      pairwise_cap)
    else:
        judge = _take(_single_units(judge) + [[s] for s in judge if s.kind == "judge_pointwise"], judge_cap, rng,
                      pairwise_cap)

    eligible = [g for g in solve if not all(map(is_right, g.rewards))]
    eligible = rng.sample(eligible, min(int(cfg.reflect_cap * batch_size), len(eligible)))
    n_cot = round(cfg.reflect_cot_share * len(eligible))
    reflect = []
    for i, group in enumerate(eligible):
        _, wrong, wrong_idx = _answers(group)
        sid = f"{prefix}/{group.prompt.id}/reflect"
        if i < n_cot or not wrong:
            response = group.responses[rng.choice(wrong_idx)]
            reflect.append(reflection_sample(group.prompt, response, "cot", rng.choice(templates.reflect_cot), sid))
        else:
            reflect.append(reflection_sample(group.prompt, rng.choice(wrong), "answer",
                                             rng.choice(templates.reflect_answer), sid))
    counts = {
        "n_pointwise": sum(p.kind == "judge_pointwise" for p in judge),
        "n_pairwise": sum(p.kind == "judge_pairwise" for p in judge),
        "n_reflect": len(reflect),
        "n_judge_positive": sum(p.kind == "judge_pointwise" and p.label in POSITIVE_LABELS for p in judge),
    }
    return RecycleResult(judge + reflect, counts)
