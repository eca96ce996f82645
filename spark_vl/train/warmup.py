"""Supervised format warm-up for the tiny default model (real checkpoints skip it).

A random tiny model can neither answer in a box nor judge. A short supervised run teaches the
formats: task prompts answered as `\\boxed{answer}`, judge prompts answered in the restate-then-
verdict format, reflection prompts answered in a box. A judge reply says what the image shows,
restates the proposed answer and gives the verdict that follows from those two (the comparison a
pretrained VLM can make); its reading of the image is right with probability
`train.warmup.verdict_accuracy` (1.0 in configs/tiny.yaml: the judge starts as good as its reading
of the image after this short step, and SPARK trains that reading on). Stopping early leaves the
task accuracy modest, where reinforcement learning has room to act; but a fixed step count leaves some
seeds unable to see anything in a task family (one answered 2 to every count), which RL then
cannot sharpen. `train.warmup.above_chance` stops instead once every question beats chance.

Whether a verdict follows from its reply's words (positive exactly when what the reply says the
image shows is the answer it restates) depends on two tokens being equal, neither of which predicts
it alone. Some seeds form that comparison within the format steps and some do not (for counting
questions the verdict stays one word: see docs/experiments.md); RL then grades replies whose verdict
is a coin. `train.warmup.verdict_follows` goes on with mostly judge prompts until the comparison holds.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from spark_vl.config import RunConfig
from spark_vl.data import TaskSample
from spark_vl.faults import fault_point
from spark_vl.models.inputs import conversation
from spark_vl.prompts import (Templates, pairwise_judge_sample, pointwise_judge_sample, reflection_sample, solve_prompt,
                              wrong_answers)
from spark_vl.records import PromptRecord, task_item
from spark_vl.rollout.hf import HFRolloutEngine
from spark_vl.runio import logger, write_text_atomic
from spark_vl.train.trainer import PolicyTrainer
from spark_vl.verify import GradingPool

# Shares of a warm-up batch by prompt kind. A judge can only compare what it sees with the
# proposed answer once it quotes that answer from the prompt, a copy a 2-layer model learns in
# about 100 steps of pointwise examples; solve examples are few, so the task stays modest.
MIX = {"solve": 0.3, "judge_pointwise": 0.5, "judge_pairwise": 0.1, "reflect": 0.1}
# Once every question beats chance (`verdict_follows`): mostly judge prompts; a fifth still answers
# in a box (judge prompts alone for 175 steps left 62% of seed 0's answers well-formed).
JUDGE_MIX = {"solve": 0.1, "judge_pointwise": 0.5, "judge_pairwise": 0.3, "reflect": 0.1}


def _reading(sample: TaskSample, misread: str, config: RunConfig, rng: random.Random) -> str:
    """What a warm-up judge reply says the image shows: the truth with probability
    `train.warmup.verdict_accuracy`, else `misread`, the one answer that makes the verdict that
    follows from it wrong (a weak judge misreads, it does not contradict itself)."""
    return sample.answer if rng.random() < config.train.warmup.verdict_accuracy else misread


def verdicts(labels: list[str], seen: str, restated: str) -> tuple[str, str]:
    """(the verdict that follows from a judge reply's words, the other one): the first of the
    template's `labels` (Yes, A) exactly when what the reply says the image shows is the answer it
    restates (the proposed one, or option A)."""
    positive, negative = labels
    return (positive, negative) if seen == restated else (negative, positive)


def warmup_example(sample: TaskSample, pool: dict[str, list[str]], config: RunConfig, templates: Templates,
                   rng: random.Random, mix: dict[str, float] = MIX) -> tuple[list[dict], str]:
    """(conversation, target text) of one warm-up example, its kind drawn from `mix`. A judge
    reply's verdict always follows from its own words (the positive one exactly when what it says
    the image shows is the answer it restates); its reading of the image is right
    `train.warmup.verdict_accuracy` of the time."""
    source = solve_prompt(sample, config.data.instruction)
    kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    wrongs = [a for a in pool[sample.question] if a != sample.answer] or ["none"]
    if kind == "solve":
        return conversation(source, config.model), f"\\boxed{{{sample.answer}}}"
    if kind == "judge_pointwise":
        template = rng.choice(templates.pointwise)
        correct = rng.random() < 0.5
        proposed = sample.answer if correct else rng.choice(wrongs)
        prompt = pointwise_judge_sample(source, proposed, correct, template, "warmup")
        seen = _reading(sample, rng.choice(wrongs) if correct else proposed, config, rng)
        return conversation(prompt, config.model), templates.judge_reply.format(
            seen=seen, answer=proposed, verdict=verdicts(template["labels"], seen, proposed)[0])
    if kind == "judge_pairwise":
        template = rng.choice(templates.pairwise)
        prompt = pairwise_judge_sample(source, sample.answer, rng.choice(wrongs), template, rng.random() < 0.5,
                                       "warmup")
        wrong = next(a for a in prompt.proposed if a != sample.answer)
        seen = _reading(sample, wrong, config, rng)
        return conversation(prompt, config.model), templates.pairwise_reply.format(
            seen=seen, answer=prompt.proposed[0], verdict=verdicts(template["labels"], seen, prompt.proposed[0])[0])
    prompt = reflection_sample(source, rng.choice(wrongs), "answer", rng.choice(templates.reflect_answer), "warmup")
    return conversation(prompt, config.model), f"\\boxed{{{sample.answer}}}"


def probe_accuracy(engine: HFRolloutEngine, probe: list[TaskSample], instruction: str,
                   pool: GradingPool) -> dict[str, float]:
    """Greedy task accuracy on `probe`, per question text, graded as the run grades."""
    prompts = [solve_prompt(s, instruction) for s in probe]
    answers = [g.responses[0] for g in engine.generate(prompts, 1, greedy=True)]
    right: dict[str, list[float]] = defaultdict(list)
    for sample, grade in zip(probe, pool.grade([task_item(a, p) for a, p in zip(answers, prompts)])):
        right[sample.question].append(grade.reward)
    return {question: sum(r) / len(r) for question, r in right.items()}


def beats_chance(accuracy: dict[str, float], answers: dict[str, list[str]], margin: float) -> bool:
    """Whether every question's accuracy is at least chance (1 / its number of answers) + margin."""
    return all(a >= 1 / len(answers[q]) + margin for q, a in accuracy.items())


def verdict_cases(probe: list[TaskSample], pool: dict[str, list[str]], templates: Templates,
                  instruction: str) -> list[tuple[PromptRecord, str, str]]:
    """Judge replies written out, to check whether the model's verdict follows their words. Per
    probe sample: a pointwise prompt about its answer and one about a wrong answer, and a pairwise
    prompt of the two (right answer first for every other sample); each with a reply that reads the
    image as the (first) proposed answer and one that reads it otherwise. Returns (prompt, reply
    with the verdict that follows from its words, the same reply with the other verdict)."""
    cases = []
    for i, sample in enumerate(probe):
        wrongs = [a for a in pool[sample.question] if a != sample.answer]
        if not wrongs:
            continue
        source, wrong = solve_prompt(sample, instruction), wrongs[i % len(wrongs)]
        for proposed, other in ((sample.answer, wrong), (wrong, sample.answer)):
            template = templates.pointwise[i % len(templates.pointwise)]
            prompt = pointwise_judge_sample(source, proposed, proposed == sample.answer, template,
                                            f"verdict/{sample.id}")
            for seen in (proposed, other):
                reply = functools.partial(templates.judge_reply.format, seen=seen, answer=proposed)
                cases.append((prompt, *(reply(verdict=v) for v in verdicts(template["labels"], seen, proposed))))
        template = templates.pairwise[i % len(templates.pairwise)]
        prompt = pairwise_judge_sample(source, sample.answer, wrong, template, i % 2 == 0, f"verdict/{sample.id}")
        for seen in (sample.answer, wrong):
            reply = functools.partial(templates.pairwise_reply.format, seen=seen, answer=prompt.proposed[0])
            cases.append((prompt, *(reply(verdict=v) for v in verdicts(template["labels"], seen, prompt.proposed[0]))))
    return cases


def verdict_follow_rates(engine: HFRolloutEngine, cases: list[tuple[PromptRecord, str, str]]) -> dict[str, float]:
    """Per judge kind and question ("judge_pointwise: How many ..."): the share of `verdict_cases`
    whose reply the model finds likelier with the verdict that follows from its words."""
    prompts = [prompt for prompt, _, _ in cases]
    scores = engine.score(prompts + prompts, [c[1] for c in cases] + [c[2] for c in cases])
    follows: dict[str, list[bool]] = defaultdict(list)
    for prompt, right, wrong in zip(prompts, scores[:len(cases)], scores[len(cases):]):
        follows[f"{prompt.kind}: {prompt.question}"].append(right > wrong)
    return {key: sum(hits) / len(hits) for key, hits in sorted(follows.items())}


def save_warmup_state(trainer: PolicyTrainer, folder: Path, rng: random.Random, losses: list[float],
                      checks: list[dict]) -> None:
    """Checkpoint the warm-up after `len(losses)` steps: the DeepSpeed state (weights, optimizer)
    under its own tag, then `latest.json` naming it (written atomically: a tag without it was never
    finished), then older tags deleted."""
    tag = f"step-{len(losses):05d}"
    state = {"rng": [rng.getstate()[0], list(rng.getstate()[1]), rng.getstate()[2]], "losses": losses, "checks": checks}
    trainer.engine.save_checkpoint(str(folder), tag=tag, client_state={"warmup": state})
    write_text_atomic(folder / "latest.json", json.dumps({"tag": tag}))
    for old in folder.glob("step-*"):
        if old.name != tag:
            shutil.rmtree(old, ignore_errors=True)


def resume_warmup_state(trainer: PolicyTrainer, folder: Path) -> dict | None:
    """Load the newest finished warm-up checkpoint into the trainer: its state (`rng`, `losses`,
    `checks`), or None when there is none."""
    marker = folder / "latest.json"
    if not marker.exists():
        return None
    _, client_state = trainer.engine.load_checkpoint(str(folder), tag=json.loads(marker.read_text())["tag"])
    state = client_state["warmup"]
    logger.info("warm-up resumes after step %d (%s)", len(state["losses"]), folder)
    return state


def run_warmup(trainer: PolicyTrainer, samples: list[TaskSample], config: RunConfig, templates: Templates,
               pool: GradingPool, checkpoints: Path | None = None) -> tuple[list[float], list[dict]]:
    """`train.warmup.steps` supervised steps, then with `above_chance` more until every question
    of the probe beats chance by that margin (each seed's warm-up then leaves the policy able to
    see something in every task family, for RL to sharpen), then with `verdict_follows` mostly
    judge prompts (`JUDGE_MIX`) until the verdict follows the reply's words that often. Returns the
    loss per step and the probe checks: each {"step", "accuracy": {question: accuracy}, "sees": beats chance,
    "verdict": `verdict_follow_rates` (once judging), "passed": the warm-up may stop}. With
    `checkpoints`, every `train.warmup.checkpoint_every` steps are saved there, and a warm-up
    killed midway resumes from the newest to the run an uninterrupted one makes."""
    cfg = config.train.warmup
    rng = random.Random(config.train.seed)
    answers = wrong_answers(samples)
    probe = samples[-cfg.probe_size:] if cfg.above_chance is not None else []
    if probe and len(probe) >= len(samples):
        raise ValueError(f"train.warmup.probe_size ({cfg.probe_size}) leaves no train samples to warm up on "
                         f"({len(samples)} in the train split): lower it")
    train = samples[:len(samples) - len(probe)]
    cases = verdict_cases(probe, answers, templates, config.data.instruction) if cfg.verdict_follows is not None else []
    engine = HFRolloutEngine(trainer.model, trainer.processor, config.rollout, config.model, show_progress=False)
    tokenizer = trainer.processor.tokenizer
    end = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    last = cfg.steps if cfg.above_chance is None else cfg.max_steps
    losses: list[float] = []
    checks: list[dict] = []
    if checkpoints is not None and (state := resume_warmup_state(trainer, checkpoints)):
        version, internal, gauss = state["rng"]
        rng.setstate((version, tuple(internal), gauss))
        losses, checks = state["losses"], state["checks"]
    with tqdm(total=last, initial=len(losses), desc="warm-up", unit="step") as bar:
        while len(losses) < last:
            judging = bool(cases) and any(check["sees"] for check in checks)
            batch = [warmup_example(rng.choice(train), answers, config, templates, rng, JUDGE_MIX if judging else MIX)
                     for _ in range(cfg.batch_size)]
            targets = [tokenizer.encode(text, add_special_tokens=False) + end for _, text in batch]
            losses.append(trainer.sft_step([conv for conv, _ in batch], targets))
            bar.update()
            if probe and len(losses) >= cfg.steps and (len(losses) - cfg.steps) % cfg.check_every == 0:
                accuracy = probe_accuracy(engine, probe, config.data.instruction, pool)
                check = {"step": len(losses), "accuracy": accuracy, "sees": beats_chance(accuracy, answers,
                                                                                         cfg.above_chance)}
                bar.set_postfix({q[:12]: f"{a:.2f}" for q, a in accuracy.items()})
                if cases and (check["sees"] or judging):
                    check["verdict"] = verdict_follow_rates(engine, cases)
                    check["passed"] = min(check["verdict"].values()) >= cfg.verdict_follows
                    bar.set_postfix({k.removeprefix("judge_")[:16]: f"{v:.2f}" for k, v in check["verdict"].items()})
                else:
                    check["passed"] = check["sees"]
                checks.append(check)
                if check["passed"]:
                    break
            if checkpoints is not None and cfg.checkpoint_every and len(losses) % cfg.checkpoint_every == 0:
                save_warmup_state(trainer, checkpoints, rng, losses, checks)
                fault_point("warmup", len(losses), "after")
    return losses, checks
