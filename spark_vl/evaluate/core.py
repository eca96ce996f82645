"""Held-out evaluation: task accuracy, judge accuracy (pointwise, pairwise, on the policy's own
answers) and test-time self-reflection (answer, self-judge, reflect; no external judge)."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

from spark_vl.config import RunConfig
from spark_vl.data import TaskSample, verifiable
from spark_vl.evaluate.audit import disagreements
from spark_vl.evaluate.judge import calibration, judged_probabilities, verdict_probabilities
from spark_vl.records import PromptRecord, is_right, media, media_files, task_item
from spark_vl.prompts import (POSITIVE_LABELS, Templates, pairwise_judge_sample, pointwise_judge_sample,
                              reflection_sample, reply_is_intact, solve_prompt, wrong_answers)
from spark_vl.rollout import RolloutEngine
from spark_vl.runio import file_digest
from spark_vl.verify import GradingPool, extract_answer, extract_verdict, judge_reward, well_formed
from spark_vl.verify.extract import box_span


def held_out_digest(samples: list[TaskSample], config: RunConfig) -> str:
    """What held-out task accuracy is measured on, as a digest: the instruction and the first
    `eval.n_task` samples' questions, answers and image and video bytes. Two accuracies compare
    only when their digests are equal (the registry's champion moves on this comparison)."""
    digest = hashlib.sha256(config.data.instruction.encode())
    for sample in samples[: config.eval.n_task]:
        digest.update(f"\0{sample.question}\0{sample.answer}".encode())
        digest.update("".join(file_digest(f) for f in media_files(sample.images, sample.video)).encode())
    return digest.hexdigest()[:16]


def held_out_judge_prompts(samples: list[TaskSample], config: RunConfig, templates: Templates,
                           seed: int) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """Pointwise prompts (about the right answer for every other prompt OF EACH QUESTION, so that
    the kind of question says nothing about the label) and pairwise prompts, each pair in both
    orders one after the other (a judge that picks one position scores 0.5), built from held-out
    questions; `eval.n_judge` of each kind, the same for every evaluation of a run."""
    rng = random.Random(seed)
    pool = wrong_answers(samples)
    pointwise, pairwise = [], []
    seen_per_question: dict[str, int] = defaultdict(int)
    usable = [s for s in samples if len(pool[s.question]) > 1]
    for i, sample in enumerate(usable[: config.eval.n_judge]):
        source = solve_prompt(sample, config.data.instruction, "eval/")
        wrong = rng.choice([a for a in pool[sample.question] if a != sample.answer])
        correct = seen_per_question[sample.question] % 2 == 0
        seen_per_question[sample.question] += 1
        pointwise.append(pointwise_judge_sample(source, sample.answer if correct else wrong, correct,
                                                rng.choice(templates.pointwise), f"eval/{sample.id}/pointwise"))
        if i < config.eval.n_judge // 2:
            template = rng.choice(templates.pairwise)
            pairwise += [pairwise_judge_sample(source, sample.answer, wrong, template, first,
                                               f"eval/{sample.id}/pairwise-{'right' if first else 'wrong'}-first")
                         for first in (True, False)]
    return pointwise, pairwise


def pairwise_metrics(rewards: list[float], replies: list[str]) -> dict[str, float]:
    """The pairwise judge on pairs shown in both orders (`held_out_judge_prompts`: consecutive
    prompts): its accuracy, the share of pairs it gets right in both orders, and the share of
    replies that pick the first option (0.5 for a judge without a position bias; 1.0 or 0.0 for one
    that always boxes the same letter)."""
    if not replies:
        return {}
    firsts = [extract_verdict(r) == "a" for r in replies]
    both = [rewards[i] * rewards[i + 1] for i in range(0, len(rewards) - 1, 2)]
    return {"eval/judge_pairwise_acc": sum(rewards) / len(rewards),
            "eval/judge_pairwise_consistent": sum(both) / max(1, len(both)),
            "eval/judge_pairwise_first_rate": sum(firsts) / len(firsts)}


def token_form(tokenizer, answer: str) -> tuple[str, ...]:
    """How an answer is tokenised where a prompt shows it (after a space): one entry per token,
    `space` for a bare space token, else `word`. " red" is (word,), " green" may be (space, word)."""
    ids = tokenizer.encode(f" {answer.strip()}", add_special_tokens=False)
    return tuple("space" if not tokenizer.decode([i]).strip() else "word" for i in ids)


def same_form_accuracy(prompts: list[PromptRecord], rewards: list[float], tokenizer) -> float:
    """Pointwise judge accuracy that comparing token shapes cannot raise: the mean of the accuracy
    on right answers and on wrong answers tokenised like the right one (red vs blue, 2 vs 3). A
    constant verdict scores 0.5, and so does "Yes when the two words look alike"."""
    positive = [r for p, r in zip(prompts, rewards) if p.label in POSITIVE_LABELS]
    alike = [r for p, r in zip(prompts, rewards) if p.label not in POSITIVE_LABELS
             and token_form(tokenizer, p.proposed[0]) == token_form(tokenizer, p.answer)]
    if not positive or not alike:
        return float("nan")
    return (sum(positive) / len(positive) + sum(alike) / len(alike)) / 2


def _judge_accuracy(engine: RolloutEngine, prompts: list[PromptRecord]) -> tuple[float, list[str], list[float]]:
    """(accuracy, greedy replies, their rewards) of the judge on `prompts`."""
    if not prompts:
        return float("nan"), [], []
    responses = [g.responses[0] for g in engine.generate(prompts, 1, greedy=True)]
    rewards = [judge_reward(r, p.label) for r, p in zip(responses, prompts)]
    return sum(rewards) / len(prompts), responses, rewards


def evaluate(engine: RolloutEngine, samples: list[TaskSample], config: RunConfig, templates: Templates,
             pool: GradingPool, tokenizer) -> tuple[dict[str, float], list[dict]]:
    """All held-out metrics of one checkpoint (greedy decoding throughout) and the graded
    responses behind them, for a person to read. Only well-formed answers and replies count as
    right (`spark_vl.verify.extract`); `eval/well_formed` and `eval/judge_well_formed` say how
    many were. Open-ended held-out prompts are answered and recorded, each answer with the
    policy's own P("Yes") for it (`eval/open_self_judged`, their mean)."""
    ev = config.eval
    open_tasks = [solve_prompt(s, config.data.instruction, "eval/") for s in samples if s.answer is None][: ev.n_task]
    samples = verifiable(samples)
    tasks = [solve_prompt(s, config.data.instruction, "eval/") for s in samples[: ev.n_task]]
    answers = [g.responses[0] for g in engine.generate(tasks, 1, greedy=True)]
    grades = pool.grade([task_item(r, t) for r, t in zip(answers, tasks)])
    correct = [g.reward for g in grades]
    metrics = {"eval/task_acc": sum(correct) / len(tasks),
               "eval/well_formed": sum(well_formed(a, pool.answer_format) for a in answers) / len(answers)}

    records = [{"kind": "solve", "prompt": t.text, **media(t), "label": t.label, "response": r,
                "reward": c} for t, r, c in zip(tasks, answers, correct)]

    pointwise, pairwise = held_out_judge_prompts(samples, config, templates, config.train.seed)
    metrics["eval/judge_pointwise_acc"], responses, rewards = _judge_accuracy(engine, pointwise)
    metrics["eval/judge_same_form_acc"] = same_form_accuracy(pointwise, rewards, tokenizer)
    probabilities = verdict_probabilities(engine, pointwise, responses)
    scored = [(p, prompt.label in POSITIVE_LABELS) for p, prompt in zip(probabilities, pointwise) if p is not None]
    metrics["eval/judge_ece"], metrics["eval/judge_brier"] = calibration([p for p, _ in scored], [y for _, y in scored])
    records += [{**r, "p_positive": p} for r, p in zip(_judge_records(pointwise, responses, rewards), probabilities)]
    # A judge that misquotes the proposed answer compares its reading with the wrong thing.
    metrics["eval/judge_restated"] = sum(
        reply_is_intact(r, p, templates, "restate") for r, p in zip(responses, pointwise)) / max(1, len(pointwise))
    replies = [(r, False) for r in responses]
    _, responses, rewards = _judge_accuracy(engine, pairwise)
    metrics.update(pairwise_metrics(rewards, responses))
    records += _judge_records(pairwise, responses, rewards)
    replies += [(r, True) for r in responses]
    metrics["eval/judge_well_formed"] = sum(
        bool(box_span(r) and templates.reply_pattern(pairwise).match(r)) for r, pairwise in replies) / len(replies)

    # The judge on the policy's own answers: can it catch its own mistakes?
    rng = random.Random(config.train.seed)
    own = [(t, extract_answer(a, pool.answer_format), c, a) for t, a, c in zip(tasks, answers, correct)
           if extract_answer(a, pool.answer_format)]
    own_prompts = [pointwise_judge_sample(t, answer, is_right(c), rng.choice(templates.pointwise), f"{t.id}/own")
                   for t, answer, c, _ in own]
    wrong_own = [p for p in own_prompts if p.label not in POSITIVE_LABELS]
    metrics["eval/judge_own_wrong_acc"] = _judge_accuracy(engine, wrong_own)[0]
    metrics["eval/judge_own_acc"], replies, _ = _judge_accuracy(engine, own_prompts)
    # The verifier audited by the judge: its P(right) for each answer beside the verifier's grade.
    own_records = [{"kind": "judge_own", "prompt": t.text, **media(t), "label": t.label,
                    "policy_reply": raw, "answer": answer, "verifier_reward": c, "response": reply, "p_positive": p}
                   for (t, answer, c, raw), reply, p in zip(own, replies,
                                                            verdict_probabilities(engine, own_prompts, replies))]
    records += own_records
    metrics["verify/judge_disagreement_rate"] = len(disagreements(own_records)) / max(1, len(own_records))

    metrics.update(self_reflect(engine, tasks, answers, correct, config, templates, pool))
    if ev.best_of_n:
        (metrics["eval/task_acc_best_of_n"], metrics["eval/task_acc_sampled"],
         metrics["eval/task_acc_majority"]) = best_of_n_accuracy(engine, tasks, config, templates, pool)
    if open_tasks:
        open_records = open_ended_answers(engine, open_tasks, templates, pool)
        metrics["eval/open_self_judged"] = sum(r["p_positive"] or 0.0 for r in open_records) / len(open_records)
        records += open_records
    return metrics, records


def open_ended_answers(engine: RolloutEngine, tasks: list[PromptRecord], templates: Templates,
                       pool: GradingPool) -> list[dict]:
    """The greedy answer to each open-ended prompt and the policy's own P("Yes") for it (None: no
    boxed answer, or no verdict): what a hidden rule or a person scores afterwards."""
    answers = [g.responses[0] for g in engine.generate(tasks, 1, greedy=True)]
    extracted = [extract_answer(a, pool.answer_format) for a in answers]
    judged = [(i, pointwise_judge_sample(t, answer, True, templates.yes_no, f"{t.id}/open"))
              for i, (t, answer) in enumerate(zip(tasks, extracted)) if answer is not None]
    probabilities: list[float | None] = [None] * len(tasks)
    for (i, _), p in zip(judged, judged_probabilities(engine, [p for _, p in judged])):
        probabilities[i] = p
    return [{"kind": t.kind, "id": t.source_id, "prompt": t.text, **media(t), "response": r, "answer": a,
             "p_positive": p} for t, r, a, p in zip(tasks, answers, extracted, probabilities)]


def pick_best(probabilities: list[float | None]) -> int:
    """The response the judge rates most likely right: the highest probability, the first on
    ties; a response whose judge reply has no verdict (None) ranks last."""
    return max(range(len(probabilities)), key=lambda i: (probabilities[i] is not None, probabilities[i] or 0.0, -i))


def best_of_n_accuracy(engine: RolloutEngine, tasks: list[PromptRecord], config: RunConfig, templates: Templates,
                       pool: GradingPool) -> tuple[float, float, float]:
    """Sample `eval.best_of_n` answers per task, judge each well-formed one with the model's own
    pointwise judge, keep the one with the highest probability of Yes, and grade it. Returns that
    accuracy and two baselines a judge must beat to be worth asking: the mean accuracy of all
    samples (picking one at random) and the majority vote of their answers."""
    groups = engine.generate(tasks, config.eval.best_of_n, seed=config.train.seed)
    judged, owners = [], []
    for ti, (task, group) in enumerate(zip(tasks, groups)):
        for ri, response in enumerate(group.responses):
            answer = extract_answer(response, pool.answer_format)
            if answer is not None:
                judged.append(pointwise_judge_sample(task, answer, True, templates.yes_no, f"{task.id}/best{ri}"))
                owners.append((ti, ri))
    scores: list[list[float | None]] = [[None] * len(g.responses) for g in groups]
    for (ti, ri), p in zip(owners, judged_probabilities(engine, judged)):
        scores[ti][ri] = p
    picks = [pick_best(s) for s in scores]
    grades = pool.grade([task_item(r, t) for g, t in zip(groups, tasks) for r in g.responses])
    n = config.eval.best_of_n
    picked = [grades[ti * n + pick].reward for ti, pick in enumerate(picks)]
    majority = []
    for ti, group in enumerate(groups):
        answers = [extract_answer(r, pool.answer_format) for r in group.responses]
        counted = [a for a in answers if a is not None]
        top = max(counted, key=counted.count) if counted else None  # the first of the most frequent
        majority.append(grades[ti * n + answers.index(top)].reward if top is not None else 0.0)
    return sum(picked) / len(tasks), sum(g.reward for g in grades) / len(grades), sum(majority) / len(tasks)


def _judge_records(prompts: list[PromptRecord], responses: list[str], rewards: list[float]) -> list[dict]:
    return [{"kind": p.kind, "prompt": p.text, **media(p), "label": p.label, "response": r,
             "reward": reward} for p, r, reward in zip(prompts, responses, rewards)]


def fixed_and_broke(greedy: list[float], reflected: list[float]) -> tuple[float, float]:
    """The shares of answers that reflection turned wrong -> right and right -> wrong."""
    n = max(1, len(greedy))
    return (sum(is_right(a) and not is_right(b) for b, a in zip(greedy, reflected)) / n,
            sum(is_right(b) and not is_right(a) for b, a in zip(greedy, reflected)) / n)


def reflection_outcomes(greedy: list[float], reflected: list[float], gated: list[bool]) -> dict[str, float]:
    """What test-time self-reflection did to each held-out answer (rewards before and after, and
    whether the judge's first verdict sent it to reflect): answers fixed (wrong -> right), broken
    (right -> wrong), and how often the judge's "No" gate opened on right and on wrong answers.
    Its gain is fixed - broken: the gate must open on wrong answers and stay shut on right ones."""
    right = [g for g, before in zip(gated, greedy) if is_right(before)]
    wrong = [g for g, before in zip(gated, greedy) if not is_right(before)]
    fixed, broke = fixed_and_broke(greedy, reflected)
    return {"eval/task_acc_reflect": sum(reflected) / max(1, len(greedy)),
            "eval/reflect_fixed": fixed, "eval/reflect_broke": broke,
            "eval/reflect_gate_right": sum(right) / len(right) if right else float("nan"),
            "eval/reflect_gate_wrong": sum(wrong) / len(wrong) if wrong else float("nan")}


def ungated_outcomes(greedy: list[float], reflected: list[float]) -> dict[str, float]:
    """What one round of reflection does to every held-out answer, none kept back by the judge.
    Beside `reflection_outcomes` it says which half holds self-reflection back: a judge that never
    says No (its gate) or a reflection that breaks as much as it fixes."""
    fixed, broke = fixed_and_broke(greedy, reflected)
    return {"eval/task_acc_reflect_ungated": sum(reflected) / max(1, len(greedy)),
            "eval/reflect_ungated_fixed": fixed, "eval/reflect_ungated_broke": broke}


def self_reflect(engine: RolloutEngine, tasks: list[PromptRecord], answers: list[str], greedy: list[float],
                 config: RunConfig, templates: Templates, pool: GradingPool) -> dict[str, float]:
    """Answer, judge the own answer (pointwise, Yes/No), and if judged wrong answer again with the
    answer marked incorrect; up to `eval.reflect_rounds` rounds. `greedy` holds the first answers'
    rewards; returns `reflection_outcomes` and, with any rounds, `ungated_outcomes` (every first
    answer reflected on once)."""
    reflect_template = templates.reflect_answer[1 % len(templates.reflect_answer)]

    def reflect(shown: list[str], ids: list[int], tag: str) -> list[str]:
        """One round: the answers `ids` of `shown` marked incorrect and answered again (greedy)."""
        retries = [reflection_sample(tasks[i], extract_answer(shown[i], pool.answer_format) or "none", "answer",
                                     reflect_template, f"{tasks[i].id}/{tag}") for i in ids]
        return [g.responses[0] for g in engine.generate(retries, 1, greedy=True)]

    def rewards(responses: list[str]) -> list[float]:
        return [g.reward for g in pool.grade([task_item(r, t) for r, t in zip(responses, tasks)])]

    current = list(answers)
    open_ids = list(range(len(tasks)))
    gated = [False] * len(tasks)
    for round_ in range(config.eval.reflect_rounds):
        judged = []
        for i in open_ids:
            answer = extract_answer(current[i], pool.answer_format)
            judged.append(pointwise_judge_sample(tasks[i], answer or "none", True, templates.yes_no,
                                                 f"{tasks[i].id}/self-judge{round_}"))
        verdicts = [extract_verdict(g.responses[0]) for g in engine.generate(judged, 1, greedy=True)] if judged else []
        open_ids = [i for i, verdict in zip(open_ids, verdicts) if verdict != "yes"]
        if round_ == 0:
            for i in open_ids:
                gated[i] = True
        if not open_ids:
            break
        for i, response in zip(open_ids, reflect(current, open_ids, f"reflect{round_}")):
            current[i] = response
    outcomes = reflection_outcomes(greedy, rewards(current), gated)
    if config.eval.reflect_rounds:
        outcomes |= ungated_outcomes(greedy, rewards(reflect(answers, list(range(len(tasks))), "reflect-ungated")))
    return outcomes
