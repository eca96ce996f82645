"""Which task prompts an iteration rolls out, and how: the batch of iteration k, one group per
prompt at its kind's group size, and dynamic sampling's extra batches."""

from __future__ import annotations

import random

from spark_vl.config import RolloutConfig
from spark_vl.data import verifiable
from spark_vl.pipeline.grading import grade_groups
from spark_vl.prompts import solve_prompt
from spark_vl.records import PromptRecord, RolloutGroup
from spark_vl.train.grpo import group_advantages
from spark_vl.workspace import Workspace


def task_prompts(ws: Workspace, k: int, draw: int = 0, taken: set[str] = frozenset()) -> list[PromptRecord]:
    """The `draw`-th batch of task prompts of iteration k, none of the samples in `taken`. Draw 0
    is every run's batch; later draws are dynamic sampling's extra batches. Open-ended samples
    are drawn only when the judge rewards them (`spark.judge_reward.enabled`)."""
    cfg = ws.config
    rng = random.Random(cfg.rollout.seed * 1_000_003 + k if draw == 0 else f"{cfg.rollout.seed}:{k}:{draw}")
    samples = ws.samples("train") if cfg.spark.judge_reward.enabled else verifiable(ws.samples("train"))
    pool = [s for s in samples if s.id not in taken]
    samples = rng.sample(pool, min(cfg.rollout.prompts_per_batch, len(pool)))
    return [solve_prompt(s, cfg.data.instruction, f"k{k}/") for s in samples]


def sample_groups(engine, prompts: list[PromptRecord], cfg: RolloutConfig, seed: int) -> list[RolloutGroup]:
    """One group per prompt, of its kind's size (`rollout.kind_group_size`), in prompt order."""
    by_size: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_size.setdefault(cfg.group_size_for(prompt.kind), []).append(i)
    groups: dict[int, RolloutGroup] = {}
    for n, order in by_size.items():
        groups.update(zip(order, engine.generate([prompts[i] for i in order], n, seed=seed)))
    return [groups[i] for i in range(len(prompts))]


def sample_until_informative(ws: Workspace, k: int, engine, solve: list[RolloutGroup]) -> tuple[list[RolloutGroup], int]:
    """Dynamic sampling: (extra task groups, batches drawn in all). Draws more task prompts while
    fewer than `prompts_per_batch` task groups have differing rewards, at most
    `filter_groups.max_num_gen_batches` batches, never a training sample twice."""
    cfg = ws.config.rollout
    extra, new, draws = [], solve, 1
    while draws < cfg.filter_groups.max_num_gen_batches:
        grade_groups(new, ws.templates, ws.pool, ws.config.spark.judge_reply_check)
        if sum(any(group_advantages(g.rewards)) for g in solve + extra) >= cfg.prompts_per_batch:
            break
        prompts = task_prompts(ws, k, draws, {g.prompt.source_id for g in solve + extra})
        if not prompts:
            break
        new = engine.generate(prompts, cfg.group_size_for("solve"), seed=(cfg.seed * 1_000_003 + k) * 1_009 + draws)
        extra += new
        draws += 1
    return extra, draws
