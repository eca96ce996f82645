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

import json
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from spark_vl.config import SparkConfig
from spark_vl.records import PromptRecord, RolloutGroup
from spark_vl.verify import normalise

PACKAGED = {"default": "templates.json", "tiny": "templates_tiny.json"}
POSITIVE_LABELS = ("Yes", "A")  # pointwise templates say Yes/No or A/B, the first meaning "correct"


@dataclass(frozen=True)
class Templates:
    pointwise: list[dict]
    pairwise: list[dict]
    reflect_cot: list[str]
    reflect_answer: list[str]
    judge_reply: str
    pairwise_reply: str

    @classmethod
    def load(cls, name: str = "default") -> "Templates":
        """Packaged pools (`default`: paraphrase pools; `tiny`: one template each) or a JSON file
        of the same shape."""
        if name in PACKAGED:
            text = resources.files("spark_vl.recycle").joinpath(PACKAGED[name]).read_text()
        else:
            text = Path(name).read_text()
        data = json.loads(text)
        for template in data["pointwise"] + data["pairwise"]:
            if template["labels"] not in (["Yes", "No"], ["A", "B"]):
                raise ValueError(f"template labels must be [Yes, No] or [A, B], not {template['labels']}")
        return cls(**{k: v for k, v in data.items() if not k.startswith("_")})

    def reply_pattern(self, pairwise: bool) -> re.Pattern:
        """Regex of an intact judge reply; groups: what the image shows, the answer it restates (the
        proposed one; pairwise: option A's), the verdict."""
        reply = self.pairwise_reply if pairwise else self.judge_reply
        return re.compile(r"^\s*" + template_pattern(reply, ("seen", "answer", "verdict")) + r"\s*$", re.DOTALL)


def template_pattern(template: str, groups: tuple[str, ...], skipped: tuple[str, ...] = ()) -> str:
    """Regex source matching `template` once filled: each field in `groups` a lazy group (numbered
    in order of appearance), each in `skipped` matched without a group."""
    pattern = re.escape(template.replace("{{", "{").replace("}}", "}"))
    for names, regex in ((groups, "(.+?)"), (skipped, ".+?")):
        for name in names:
            pattern = pattern.replace(re.escape("{" + name + "}"), regex)
    return pattern


def reply_is_intact(response: str, prompt: PromptRecord, templates: Templates, check: str) -> bool:
    """Whether a judge reply passes `check` beyond its verdict: `format` (the template's reply
    format; without it the text before the verdict degenerates), `restate` (also the proposed
    answer, pairwise option A's, copied exactly: the verdict then compares what the image shows
    with what the reply just wrote), `grounded` (also what the image shows stated as the ground
    truth, which the recycled sample knows) or `verdict` (nothing more)."""
    if check == "verdict":
        return True
    match = templates.reply_pattern(prompt.kind == "judge_pairwise").match(response)
    if match is None:
        return False
    restated = match.group(2).strip() == prompt.proposed[0].strip()
    if check == "grounded":
        return restated and match.group(1).strip() == prompt.answer.strip()
    return check == "format" or restated


@dataclass
class RecycleResult:
    prompts: list[PromptRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def pointwise_judge_sample(source: PromptRecord, answer: str, correct: bool, template: dict,
                           sample_id: str) -> PromptRecord:
    positive, negative = template["labels"]
    return PromptRecord(
        id=sample_id, kind="judge_pointwise", images=source.images,
        text=template["text"].format(question=source.question, answer=answer),
        label=positive if correct else negative, question=source.question, answer=source.answer,
        source_id=source.source_id, proposed=[answer],
    )


def pairwise_judge_sample(source: PromptRecord, correct_answer: str, wrong_answer: str, template: dict,
                          correct_first: bool, sample_id: str) -> PromptRecord:
    first, second = template["labels"]
    shown = [correct_answer, wrong_answer] if correct_first else [wrong_answer, correct_answer]
    return PromptRecord(
        id=sample_id, kind="judge_pairwise", images=source.images,
        text=template["text"].format(question=source.question, answer_a=shown[0], answer_b=shown[1]),
        label=first if correct_first else second, question=source.question, answer=source.answer,
        source_id=source.source_id, proposed=shown,
    )


def reflection_sample(source: PromptRecord, shown: str, mode: str, template: str, sample_id: str) -> PromptRecord:
    """Reflect on a wrong attempt (`mode` cot: its full response; answer: its extracted answer)."""
    key = "response" if mode == "cot" else "answer"
    return PromptRecord(
        id=sample_id, kind=f"reflect_{mode}", images=source.images,  # type: ignore[arg-type]
        text=template.format(question=source.question, **{key: shown}), label=source.answer,
        question=source.question, answer=source.answer, source_id=source.source_id, proposed=[shown],
    )


def _answers(group: RolloutGroup) -> tuple[list[str], list[str], list[int]]:
    """(correct answers, wrong extracted answers, indices of wrong responses) of a verified group."""
    correct = [a for a, r in zip(group.extracted, group.rewards) if r > 0 and a is not None]
    wrong = [a for a, r in zip(group.extracted, group.rewards) if r <= 0 and a is not None and a.strip()]
    wrong_idx = [i for i, r in enumerate(group.rewards) if r <= 0]
    return correct, wrong, wrong_idx


def judge_samples_for_group(group: RolloutGroup, cfg: SparkConfig, templates: Templates, rng: random.Random,
                            prefix: str) -> list[PromptRecord]:
    """The reference rules for one group: at most one judge sample."""
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
    return [pairwise_judge_sample(source, rng.choice(correct), rng.choice(wrong), rng.choice(templates.pairwise),
                                  rng.random() < 0.5, sid)]


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
    units: list[list[PromptRecord]] = [[s] for s in samples if s.kind != "judge_pointwise"]
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
    units: list[list[PromptRecord]] = [[s] for s in samples if s.kind != "judge_pointwise"]
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


def _take(units: list[list[PromptRecord]], cap: int, rng: random.Random) -> list[PromptRecord]:
    """Up to `cap` samples, whole units at random."""
    units = list(units)
    rng.shuffle(units)
    taken: list[PromptRecord] = []
    for unit in units:
        if len(taken) + len(unit) <= cap:
            taken += unit
    return taken


def recycle(groups: list[RolloutGroup], cfg: SparkConfig, batch_size: int, rng: random.Random,
            templates: Templates, prefix: str) -> RecycleResult:
    """Judge and reflection prompts recycled from a batch of verified solve groups."""
    solve = [g for g in groups if g.prompt.kind == "solve" and g.rewards]
    judge: list[PromptRecord] = []
    for group in solve:
        judge += judge_samples_for_group(group, cfg, templates, rng, prefix)
    judge_cap = int(cfg.judge_cap * batch_size)
    if cfg.balance_judge_labels and cfg.pair_judge_answers:
        judge = _take(_answer_pairs(judge, solve, templates, rng, prefix), judge_cap, rng)
    elif cfg.balance_judge_labels:
        judge = _take(_question_pairs(_balance_pointwise(judge, solve, templates, rng, prefix), rng), judge_cap, rng)
    else:
        judge = rng.sample(judge, min(judge_cap, len(judge)))

    eligible = [g for g in solve if any(r <= 0 for r in g.rewards)]
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
