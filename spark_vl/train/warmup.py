"""Supervised format warm-up for the tiny default model (real checkpoints skip it).

A random tiny model can neither answer in a box nor judge. A short supervised run teaches the
formats: task prompts answered as `\\boxed{answer}`, judge prompts answered in the restate-then-
verdict format, reflection prompts answered in a box. Judge verdicts are right only with
probability `train.warmup.verdict_accuracy` (0.5: random), a weak prior at most, so judging skill
the model shows later comes from SPARK, not from this step. Stopping early leaves the task
accuracy modest, where reinforcement learning has room to act.
"""

from __future__ import annotations

import random

from tqdm import tqdm

from spark_vl.config import RunConfig
from spark_vl.data import TaskSample
from spark_vl.evaluate import solve_prompt, wrong_answers
from spark_vl.recycle import Templates, pairwise_judge_sample, pointwise_judge_sample, reflection_sample
from spark_vl.rollout.hf import conversation
from spark_vl.train.trainer import PolicyTrainer

# Shares of a warm-up batch by prompt kind. A judge can only compare what it sees with the
# proposed answer once it quotes that answer from the prompt, a copy a 2-layer model learns in
# about 100 steps of pointwise examples; solve examples are few, so the task stays modest.
MIX = {"solve": 0.3, "judge_pointwise": 0.5, "judge_pairwise": 0.1, "reflect": 0.1}


def _verdict(label: str, template: dict, config: RunConfig, rng: random.Random) -> str:
    """The true label with probability `train.warmup.verdict_accuracy`, else the other one: at 0.5
    the verdicts say nothing (the judge starts at chance), above it they give a weak prior."""
    if rng.random() < config.train.warmup.verdict_accuracy:
        return label
    return next(other for other in template["labels"] if other != label)


def warmup_example(sample: TaskSample, pool: dict[str, list[str]], config: RunConfig, templates: Templates,
                   rng: random.Random) -> tuple[list[dict], str]:
    """(conversation, target text) of one warm-up example."""
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
        return conversation(prompt, config.model), templates.judge_reply.format(
            seen=sample.answer, answer=proposed, verdict=_verdict(prompt.label, template, config, rng))
    if kind == "judge_pairwise":
        template = rng.choice(templates.pairwise)
        prompt = pairwise_judge_sample(source, sample.answer, rng.choice(wrongs), template, rng.random() < 0.5,
                                       "warmup")
        return conversation(prompt, config.model), templates.pairwise_reply.format(
            seen=sample.answer, verdict=_verdict(prompt.label, template, config, rng))
    prompt = reflection_sample(source, rng.choice(wrongs), "answer", rng.choice(templates.reflect_answer), "warmup")
    return conversation(prompt, config.model), f"\\boxed{{{sample.answer}}}"


def run_warmup(trainer: PolicyTrainer, samples: list[TaskSample], config: RunConfig,
               templates: Templates) -> list[float]:
    """`train.warmup.steps` supervised steps; returns the loss per step."""
    cfg = config.train.warmup
    rng = random.Random(config.train.seed)
    pool = wrong_answers(samples)
    tokenizer = trainer.processor.tokenizer
    end = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    losses = []
    for _ in tqdm(range(cfg.steps), desc="warm-up", unit="step"):
        batch = [warmup_example(rng.choice(samples), pool, config, templates, rng) for _ in range(cfg.batch_size)]
        targets = [tokenizer.encode(text, add_special_tokens=False) + end for _, text in batch]
        losses.append(trainer.sft_step([conv for conv, _ in batch], targets))
    return losses
