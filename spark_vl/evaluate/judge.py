"""The model as a reward model: the probability of its verdict, and whether that probability
can be trusted (calibration)."""

from __future__ import annotations

import math

from spark_vl.data.preference import PreferencePair
from spark_vl.prompts import Templates, pairwise_judge_sample
from spark_vl.records import PromptRecord
from spark_vl.verify.extract import box_span
from spark_vl.verify.grading import judge_reward


def verdicts(prompt: PromptRecord) -> tuple[str, str]:
    """(positive, negative) verdict of a judge prompt: A/B for a pairwise one and for a pointwise
    one whose template answers A/B, else Yes/No."""
    return ("A", "B") if prompt.kind == "judge_pairwise" or prompt.label in ("A", "B") else ("Yes", "No")


def question_source(source_id: str, images: list[str], question: str, video: str | None = None) -> PromptRecord:
    """A task prompt without a known answer: what a user's judge row or a preference pair asks."""
    return PromptRecord(id=source_id, kind="solve", images=list(images), text=question, label="", question=question,
                        answer="", source_id=source_id, video=video)


def with_verdict(reply: str, verdict: str) -> str | None:
    """`reply` with `verdict` in its box, the rest as written; None for a reply without one box."""
    span = box_span(reply)
    return None if span is None else reply[:span[1]] + verdict + reply[span[2]:]


def verdict_probabilities(engine, prompts: list[PromptRecord], replies: list[str]) -> list[float | None]:
    """P(positive verdict: Yes, or A) for each judge reply: the model's probability of the reply
    with the positive verdict in its box against the same reply with the other verdict
    (`verdicts`), softmax(log p(reply | Yes), log p(reply | No)); None where the reply has no
    verdict box.
    `engine` must score completions (`HFRolloutEngine.score`)."""
    pairs, where = [], []
    for i, (prompt, reply) in enumerate(zip(prompts, replies)):
        candidates = [with_verdict(reply, v) for v in verdicts(prompt)]
        if candidates[0] is not None:
            pairs += [(prompt, candidates[0]), (prompt, candidates[1])]
            where.append(i)
    scores = engine.score([p for p, _ in pairs], [c for _, c in pairs]) if pairs else []
    probabilities: list[float | None] = [None] * len(prompts)
    for j, i in enumerate(where):
        positive, negative = scores[2 * j], scores[2 * j + 1]
        probabilities[i] = 1.0 / (1.0 + math.exp(negative - positive))
    return probabilities


def judged_probabilities(engine, prompts: list[PromptRecord]) -> list[float | None]:
    """P(positive verdict) of the judge's greedy reply to each prompt (`verdict_probabilities`)."""
    if not prompts:
        return []
    replies = [g.responses[0] for g in engine.generate(prompts, 1, greedy=True)]
    return verdict_probabilities(engine, prompts, replies)


def reliability_bins(probabilities: list[float], outcomes: list[bool],
                     bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean probability, positive rate, count) of each non-empty equal-width probability bin."""
    members: list[list[tuple[float, bool]]] = [[] for _ in range(bins)]
    for p, y in zip(probabilities, outcomes):
        members[min(int(p * bins), bins - 1)].append((p, y))
    return [(sum(p for p, _ in m) / len(m), sum(float(y) for _, y in m) / len(m), len(m)) for m in members if m]


def calibration(probabilities: list[float], outcomes: list[bool], bins: int = 10) -> tuple[float, float]:
    """(expected calibration error over `bins` equal-width bins, Brier score) of probabilities
    that each outcome is positive. ECE: the share-weighted gap between the mean probability and
    the positive rate of each bin; Brier: the mean squared gap per prompt."""
    if not probabilities:
        return float("nan"), float("nan")
    n = len(probabilities)
    brier = sum((p - float(y)) ** 2 for p, y in zip(probabilities, outcomes)) / n
    ece = sum(count / n * abs(confidence - rate) for confidence, rate, count in
              reliability_bins(probabilities, outcomes, bins))
    return ece, brier


def preference_accuracy(engine, pairs: list[PreferencePair], templates: Templates) -> dict[str, float]:
    """The judge on people's choices (pairwise, greedy): its accuracy with the two responses in
    the file's order and swapped; a judge that prefers a position scores apart on the two."""
    metrics = {}
    for key, swap in (("eval/judge_bench_acc", False), ("eval/judge_bench_acc_swapped", True)):
        prompts = []
        for pair in pairs:
            source = question_source(pair.id, [pair.image], pair.query)
            preferred, other = pair.responses[pair.preferred], pair.responses[1 - pair.preferred]
            prompts.append(pairwise_judge_sample(source, preferred, other, templates.pairwise[0],
                                                 (pair.preferred == 0) != swap, pair.id))
        replies = [g.responses[0] for g in engine.generate(prompts, 1, greedy=True)] if prompts else []
        metrics[key] = sum(judge_reward(r, p.label) for r, p in zip(replies, prompts)) / max(1, len(prompts))
    return metrics
