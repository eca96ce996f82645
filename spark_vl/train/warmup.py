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
"""

from __future__ import annotations

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
from spark_vl.records import task_item
from spark_vl.rollout.hf import HFRolloutEngine
from spark_vl.runio import logger, write_text_atomic
from spark_vl.train.trainer import PolicyTrainer
from spark_vl.verify import GradingPool

# Shares of a warm-up batch by prompt kind. A judge can only compare what it sees with the
# proposed answer once it quotes that answer from the prompt, a copy a 2-layer model learns in
# about 100 steps of pointwise examples; solve examples are few, so the task stays modest.
MIX = {"solve": 0.3, "judge_pointwise": 0.5, "judge_pairwise": 0.1, "reflect": 0.1}


def _reading(sample: TaskSample, misread: str, config: RunConfig, rng: random.Random) -> str:
    """What a warm-up judge reply says the image shows: the truth with probability
    `train.warmup.verdict_accuracy`, else `misread`, the one answer that makes the verdict that
    follows from it wrong (a weak judge misreads, it does not contradict itself)."""
    return sample.answer if rng.random() < config.train.warmup.verdict_accuracy else misread


def warmup_example(sample: TaskSample, pool: dict[str, list[str]], config: RunConfig, templates: Templates,
                   rng: random.Random) -> tuple[list[dict], str]:
    """(conversation, target text) of one warm-up example. A judge reply's verdict always follows
    from its own words (the positive one exactly when what it says the image shows is the answer it
    restates); its reading of the image is right `train.warmup.verdict_accuracy` of the time."""
    source = solve_prompt(sample, config.data.instruction)
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    wrongs = [a for a in pool[sample.question] if a != sample.answer] or ["none"]
    if kind == "solve":
        return conversation(source, config.model), f"\\boxed{{{sample.answer}}}"
    if kind == "judge_pointwise":
        template = rng.choice(templates.pointwise)
        correct = rng.random() < 0.5
        proposed = sample.answer if correct else rng.choice(wrongs)
        prompt = pointwise_judge_sample(source, proposed, correct, template, "warmup")
        seen = _reading(sample, rng.choice(wrongs) if correct else proposed, config, rng)
        positive, negative = template["labels"]
        return conversation(prompt, config.model), templates.judge_reply.format(
            seen=seen, answer=proposed, verdict=positive if seen == proposed else negative)
    if kind == "judge_pairwise":
        template = rng.choice(templates.pairwise)
        prompt = pairwise_judge_sample(source, sample.answer, rng.choice(wrongs), template, rng.random() < 0.5,
                                       "warmup")
        wrong = next(a for a in prompt.proposed if a != sample.answer)
        seen = _reading(sample, wrong, config, rng)
        first, second = template["labels"]
        return conversation(prompt, config.model), templates.pairwise_reply.format(
            seen=seen, answer=prompt.proposed[0], verdict=first if seen == prompt.proposed[0] else second)
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
    see something in every task family, for RL to sharpen). Returns the loss per step and the
    probe checks: each {"step", "accuracy": {question: accuracy}, "passed": beats chance}. With
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
            batch = [warmup_example(rng.choice(train), answers, config, templates, rng) for _ in range(cfg.batch_size)]
            targets = [tokenizer.encode(text, add_special_tokens=False) + end for _, text in batch]
            losses.append(trainer.sft_step([conv for conv, _ in batch], targets))
            bar.update()
            if probe and len(losses) >= cfg.steps and (len(losses) - cfg.steps) % cfg.check_every == 0:
                accuracy = probe_accuracy(engine, probe, config.data.instruction, pool)
                checks.append({"step": len(losses), "accuracy": accuracy,
                               "passed": beats_chance(accuracy, answers, cfg.above_chance)})
                bar.set_postfix({q[:12]: f"{a:.2f}" for q, a in accuracy.items()})
                if checks[-1]["passed"]:
                    break
            if checkpoints is not None and cfg.checkpoint_every and len(losses) % cfg.checkpoint_every == 0:
                save_warmup_state(trainer, checkpoints, rng, losses, checks)
                fault_point("warmup", len(losses), "after")
    return losses, checks
