"""How an iteration's sequences are stepped on: the learning rate of iteration k, the optimizer
steps (mini-batches of whole groups) and the micro-batches within a token budget. Pure functions of
their arguments, so a resumed run and every launched worker step as an uninterrupted one would."""

from __future__ import annotations

import math
import random

from spark_vl.config import TrainConfig
from spark_vl.train.sequences import Sequence


def scheduled_lr(train: TrainConfig, k: int) -> float:
    """The learning rate of iteration k's update (`train.lr_scheduler_type`): `lr` throughout, or a
    cosine from `lr` at iteration 1 to `lr * min_lr_ratio` at the last one. A function of k alone,
    so a resumed run steps with the rate an uninterrupted one would."""
    if train.lr_scheduler_type == "constant" or train.iterations == 1:
        return train.lr
    progress = (k - 1) / (train.iterations - 1)
    return train.lr * (train.min_lr_ratio + (1 - train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def mini_batches(sequences: list[Sequence], groups_per_step: int | None, seed: int) -> list[list[Sequence]]:
    """The sequences split into optimizer steps of `groups_per_step` whole groups (verl's
    ppo_mini_batch_size); the groups are shuffled with `seed` first, so each step mixes task,
    judge and reflection groups. None: one step on all."""
    if groups_per_step is None:
        return [sequences]
    order = sorted({s.group for s in sequences})
    random.Random(seed).shuffle(order)
    step_of = {group: i // groups_per_step for i, group in enumerate(order)}
    steps: list[list[Sequence]] = [[] for _ in range(math.ceil(len(order) / groups_per_step))]
    for s in sequences:
        steps[step_of[s.group]].append(s)
    return steps


def token_budget_chunks(sizes: list[tuple[int, int]], budget: int) -> list[list[int]]:
    """Indices of sequences, given as (prompt tokens, completion tokens), split in order into
    micro-batches whose padded size, rows x (longest prompt + longest completion), stays within
    `budget` (verl's ppo_max_token_len_per_gpu): long judge and reflection prompts then go in
    fewer rows instead of setting the memory peak. A sequence over the budget goes alone."""
    chunks: list[list[int]] = []
    prompt = completion = 0
    for i, (p, c) in enumerate(sizes):
        wider_p, wider_c = max(prompt, p), max(completion, c)
        if chunks and (len(chunks[-1]) + 1) * (wider_p + wider_c) <= budget:
            chunks[-1].append(i)
            prompt, completion = wider_p, wider_c
        else:
            chunks.append([i])
            prompt, completion = p, c
    return chunks
