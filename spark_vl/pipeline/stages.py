"""The stages of iteration k, each a plain function of the workspace and k.

Every stage follows one protocol (`stage`): it returns at once when its done-marker exists in
`iter-K/`; otherwise it reads its inputs from the run directory, computes, and writes its outputs
atomically between the fault points `<stage>:k:before` and `<stage>:k:after`, the done-marker
last. A rerun therefore continues where the last one stopped and does nothing twice.
"""

from __future__ import annotations

import errno
import functools
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spark_vl.config import RunConfig
from spark_vl.evaluate import disagreements, evaluate, held_out_digest
from spark_vl.faults import fault_point
from spark_vl.layout import (VERIFIER_DISAGREEMENTS, deepspeed_dir, deepspeed_tag, iter_dir, metric_rows, policy_dir,
                             prune_deepspeed_state, prune_policies, read_json, write_json)
from spark_vl.pipeline.grading import grade_groups
from spark_vl.pipeline.judge_reward import SNAPSHOT, judge_rewards
from spark_vl.pipeline.rollout_process import RolloutProcess
from spark_vl.pipeline.sampling import sample_groups, sample_until_informative, task_prompts
from spark_vl.records import (JUDGE_KINDS, KINDS, SELF_JUDGED_KINDS, is_right, load_groups, load_prompts,
                              media_relative, save_groups, save_prompts)
from spark_vl.recycle import recycle
from spark_vl.runio import write_jsonl_atomic
from spark_vl.train.launch import distributed, is_worker, launch_training
from spark_vl.train.schedule import scheduled_lr
from spark_vl.workspace import Workspace

Writes = list[Callable[[], None]]


def stage(name: str, done: str):
    """The stage protocol around a function that computes iteration k's outputs and returns their
    writes in order (the one of `done`, the done-marker, last), or None when there is nothing to
    write: skipped when `iter-K/<done>` exists; the writes run between the stage's fault points."""

    def wrap(compute: Callable[[Workspace, int], Writes | None]) -> Callable[[Workspace, int], None]:
        @functools.wraps(compute)
        def run_stage(ws: Workspace, k: int) -> None:
            if (iter_dir(ws.run_dir, k) / done).exists():
                return
            writes = compute(ws, k)
            if writes is None:
                return
            fault_point(name, k, "before")
            for write in writes:
                write()
            fault_point(name, k, "after")

        return run_stage

    return wrap


def metrics_write(ws: Workspace, k: int, name: str, metrics: dict[str, float]) -> Callable[[], None]:
    return lambda: write_json(iter_dir(ws.run_dir, k) / f"{name}.json", metrics)


@stage("prompts", done="prompts.jsonl")
def stage_prompts(ws: Workspace, k: int) -> Writes:
    """Task prompts for iteration k plus the judge/reflection queue recycled in k-1."""
    prompts = task_prompts(ws, k)
    queue = iter_dir(ws.run_dir, k - 1) / "recycled.jsonl"
    if ws.config.spark.enabled and queue.exists():
        prompts += load_prompts(queue, ws.run_dir)
    return [lambda: save_prompts(iter_dir(ws.run_dir, k) / "prompts.jsonl", prompts, ws.run_dir)]


def rollout_policy(config: RunConfig, k: int) -> int:
    """The policy iteration k's rollouts sample from: k-1, or k-2 under `rollout.overlap` (they are
    sampled while policy k-1 trains), policy 0 for the first two then."""
    return max(0, k - 2) if config.rollout.overlap else k - 1


def rolls_ahead(config: RunConfig, k: int) -> bool:
    """Whether iteration k+1's prompts and rollouts are made while iteration k trains."""
    return config.rollout.overlap and k < config.train.iterations


@stage("rollout", done="rollouts.jsonl")
def stage_rollout(ws: Workspace, k: int) -> Writes | None:
    """`group_size` responses to every prompt from the policy `rollout_policy` names, with dynamic
    sampling's extra task batches when `rollout.filter_groups` asks for them. Under
    `rollout.overlap` the transformers engine samples in the run's second process (this one's
    model is being trained), which then runs this whole stage."""
    cfg = ws.config.rollout
    if cfg.overlap and cfg.engine == "hf" and not ws.is_rollout_process:
        ws.kept("rollout_process", lambda: RolloutProcess(ws.config, ws.run_dir)).run(stage_rollout, k)
        return None
    prompts = load_prompts(iter_dir(ws.run_dir, k) / "prompts.jsonl", ws.run_dir)
    policy = rollout_policy(ws.config, k)
    engine = ws.engine_at(policy)
    start = time.perf_counter()
    groups = sample_groups(engine, prompts, cfg, seed=cfg.seed * 1_000_003 + k)
    draws = 1
    if cfg.filter_groups.enable:
        extra, draws = sample_until_informative(ws, k, engine, [g for g in groups if g.prompt.kind == "solve"])
        groups += extra
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for g in groups for ids in g.response_ids)
    solve_lengths = [len(ids) for g in groups if g.prompt.kind == "solve" for ids in g.response_ids]
    metrics = {"rollout/response_len": sum(solve_lengths) / max(1, len(solve_lengths)),
               "rollout/gen_batches": float(draws),
               "rollout/policy_lag": float(k - 1 - policy),
               "throughput/rollout_tokens_per_s": tokens / seconds,
               "time/rollout_s": seconds}
    return [metrics_write(ws, k, "rollout", metrics),
            lambda: save_groups(iter_dir(ws.run_dir, k) / "rollouts.jsonl", groups, ws.run_dir)]


@stage("verify", done="verified.jsonl")
def stage_verify(ws: Workspace, k: int) -> Writes:
    """Rewards for every response (`grade_groups`; open-ended ones from the judge snapshot,
    `judge_rewards`), and their means per kind's metric."""
    start = time.perf_counter()
    groups = load_groups(iter_dir(ws.run_dir, k) / "rollouts.jsonl", ws.run_dir)
    grade_groups(groups, ws.templates, ws.pool, ws.config.spark.judge_reply_check)
    judged = {}
    if any(g.prompt.kind in SELF_JUDGED_KINDS for g in groups):
        judged = judge_rewards(ws, k, rollout_policy(ws.config, k), groups)
    solve = [g for g in groups if g.prompt.kind == "solve"]
    statuses = [s for g in groups for s in g.statuses]
    judge_statuses = [s for g in groups if g.prompt.kind in JUDGE_KINDS for s in g.statuses]
    metrics = {
        "rollout/all_correct_frac": sum(all(map(is_right, g.rewards)) for g in solve) / max(1, len(solve)),
        "rollout/all_wrong_frac": sum(not any(map(is_right, g.rewards)) for g in solve) / max(1, len(solve)),
        "verify/timeout_frac": statuses.count("timeout") / max(1, len(statuses)),
        "verify/judge_malformed_frac": judge_statuses.count("malformed") / max(1, len(judge_statuses)),
    }
    for metric in dict.fromkeys(spec.reward_metric for spec in KINDS.values()):
        rewards = [r for g in groups if KINDS[g.prompt.kind].reward_metric == metric for r in g.rewards]
        metrics[metric] = sum(rewards) / len(rewards) if rewards else float("nan")
    metrics.update(judged)
    metrics["time/verify_s"] = time.perf_counter() - start
    return [metrics_write(ws, k, "verify", metrics),
            lambda: save_groups(iter_dir(ws.run_dir, k) / "verified.jsonl", groups, ws.run_dir)]


@stage("recycle", done="recycled.jsonl")
def stage_recycle(ws: Workspace, k: int) -> Writes:
    """SPARK's recycling of the verified task groups into the judge and reflection prompts of k+1."""
    start = time.perf_counter()
    cfg = ws.config
    groups = load_groups(iter_dir(ws.run_dir, k) / "verified.jsonl", ws.run_dir)
    if cfg.spark.enabled:
        rng = random.Random(cfg.train.seed * 1_000_003 + k)
        result = recycle(groups, cfg.spark, cfg.rollout.prompts_per_batch, rng, ws.templates, f"k{k}")
        prompts, counts = result.prompts, result.counts
    else:
        prompts, counts = [], {"n_pointwise": 0, "n_pairwise": 0, "n_reflect": 0}
    metrics = {**{f"recycle/{key}": float(value) for key, value in counts.items()},
               "time/recycle_s": time.perf_counter() - start}
    return [metrics_write(ws, k, "recycle", metrics),
            lambda: save_prompts(iter_dir(ws.run_dir, k) / "recycled.jsonl", prompts, ws.run_dir)]


def stage_train(ws: Workspace, k: int) -> None:
    """One GRPO step from policy k-1 to policy k: in this process, or on launched DeepSpeed
    workers (each runs this function; rank 0 writes the outputs). train.json, written after the
    policy, marks the stage done (the policy itself may be pruned later). Its fault point
    `train:k:before` sits inside the save, before the policy is renamed into place."""
    out, done = policy_dir(ws.run_dir, k), iter_dir(ws.run_dir, k) / "train.json"
    if done.exists():
        return
    start = time.perf_counter()
    if ws.config.rollout.engine == "vllm" and ws.config.rollout.vllm.sleep_during_train:
        ws.rollout_server.sleep()
    if distributed(ws.config.train) and not is_worker():
        launch_training(ws.config.train, ws.run_dir, k)
        ws.trainer, ws.trainer_iteration = None, None
        write_json(done, {**read_json(done), "time/train_s": time.perf_counter() - start})
        return
    trainer = ws.trainer_at(k - 1)
    ws.trainer_iteration = None  # stepped but not saved, it is no policy of the run: a retry reloads k-1
    stats = trainer.grpo_step(load_groups(iter_dir(ws.run_dir, k) / "verified.jsonl", ws.run_dir),
                              mid_step=lambda: fault_point("train", k, "step"),
                              seed=ws.config.train.seed * 1_000_003 + k, lr=scheduled_lr(ws.config.train, k))
    try:
        trainer.save(out, deepspeed_dir(ws.run_dir), deepspeed_tag(k),
                     before_publish=lambda: fault_point("train", k, "before"))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OSError(exc.errno, f"no space left on the device while saving policy {k} to {out}; nothing "
                          f"half-written was kept: free space under {ws.run_dir} and rerun (iteration {k} is "
                          "trained again)") from None
        raise
    ws.trainer_iteration = k
    if trainer.rank == 0:
        write_json(done, {**stats, "time/train_s": time.perf_counter() - start})
        prune_deepspeed_state(ws.run_dir, keep=k)
    fault_point("train", k, "after")


def evaluation_due(config: RunConfig, k: int) -> bool:
    return k == 0 or k % config.eval.every == 0 or k == config.train.iterations


@stage("evaluate", done="eval.json")
def stage_evaluate(ws: Workspace, k: int) -> Writes | None:
    """The held-out metrics of policy k (`evaluate`), when an evaluation is due at k."""
    if not evaluation_due(ws.config, k):
        return None
    start = time.perf_counter()
    metrics, records = evaluate(ws.engine_at(k), ws.samples("eval"), ws.config, ws.templates, ws.pool,
                                ws.processor.tokenizer)
    metrics["time/evaluate_s"] = time.perf_counter() - start
    records = [media_relative(record, ws.run_dir) for record in records]
    audit = disagreements([r for r in records if r["kind"] == "judge_own"])
    return [lambda: write_jsonl_atomic(iter_dir(ws.run_dir, k) / "eval_samples.jsonl", records),
            lambda: write_jsonl_atomic(iter_dir(ws.run_dir, k) / VERIFIER_DISAGREEMENTS, audit),
            metrics_write(ws, k, "eval", metrics)]


def held_out_set(config: RunConfig, run_dir: Path) -> str:
    """The digest of the held-out set this run's task accuracy is measured on (`held_out_digest`)."""
    return held_out_digest(Workspace(config, run_dir).samples("eval"), config)


def stage_log(ws: Workspace, k: int) -> dict[str, float]:
    """Merge the stage metrics of iteration k into metrics.jsonl (one row per iteration), then
    prune the policies no later stage needs. Runs every time: the merge is idempotent."""
    row: dict[str, Any] = {"iteration": k}
    for name in ("rollout", "verify", "recycle", "train", "eval"):
        path = iter_dir(ws.run_dir, k) / f"{name}.json"
        if path.exists():
            row.update(read_json(path))
    rows = sorted([r for r in metric_rows(ws.run_dir) if r["iteration"] != k] + [row], key=lambda r: r["iteration"])
    fault_point("log", k, "before")
    write_jsonl_atomic(ws.run_dir / "metrics.jsonl", rows)
    judge = next((r[SNAPSHOT] for r in reversed(rows) if SNAPSHOT in r), None)  # it rewards open-ended prompts
    prune_policies(ws.config, ws.run_dir, k, pinned=set() if judge is None else {int(judge)})
    fault_point("log", k, "after")
    return row
