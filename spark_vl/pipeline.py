"""A run as plain functions over its run directory; the Prefect flow wraps each stage as a task.

Each stage reads its inputs from the run directory (`spark_vl.layout`), writes its output
there atomically and returns at once when that output exists, so a rerun continues where the
last one stopped. `fault_point` marks where each stage can be made to fail, before and after
its output is written (`spark_vl.faults`).
"""

from __future__ import annotations

import errno
import random
import shutil
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from spark_vl.config import RolloutConfig, RunConfig, save_config
from spark_vl.data import warn_bad_rows
from spark_vl.data.tasks import make_dataset
from spark_vl.evaluate import evaluate, solve_prompt
from spark_vl.faults import fault_point
from spark_vl.layout import (deepspeed_dir, deepspeed_tag, iter_dir, metric_rows, policy_dir, prune_policies, read_json,
                             remove_partials, start_policy, write_json)
from spark_vl.models import build_tiny_model, load_processor
from spark_vl.records import (JUDGE_KINDS, REFLECT_KINDS, PromptRecord, RolloutGroup, load_groups, load_prompts,
                              save_groups, save_prompts, task_item)
from spark_vl.recycle import Templates, recycle, reply_is_intact
from spark_vl.runio import logger, write_jsonl_atomic
from spark_vl.train.grpo import group_advantages
from spark_vl.train.launch import distributed, is_worker, launch_training
from spark_vl.train.trainer import PolicyTrainer
from spark_vl.train.warmup import run_warmup
from spark_vl.verify import GradeItem, GradingPool, extract_answer, extract_verdict
from spark_vl.workspace import Workspace


def prepare_run(config: RunConfig, run_dir: Path) -> dict[str, Path]:
    """Write the config; build the tiny model, the built-in data and the warm-started starting
    policy when the config asks for them. Finished parts are skipped."""
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_partials(run_dir)
    save_config(config, run_dir / "config.yaml")
    ws = Workspace(config, run_dir)
    if config.data.train_path is None and not (run_dir / "data" / "eval.jsonl").exists():
        logger.info("rendering built-in tasks %s in %s", config.data.builtin.families, run_dir / "data")
        make_dataset(run_dir / "data", config.data.builtin)
    if config.data.train_path and not config.data.eval_path:
        logger.warning("data.eval_path is not set: held-out metrics are computed on the training set")
    for split in ("train", "eval"):
        warn_bad_rows(ws.dataset(split))
        logger.info("%s prompts: %d usable from %s", split, len(ws.samples(split)), ws.paths[split])
    start = start_policy(config, run_dir)
    if not (start / "config.json").exists():
        if config.model.path is None:
            init = run_dir / "model" / "init"
            if not (init / "config.json").exists():
                logger.info("building tiny %s model in %s", config.model.tiny.family, init)
                build_tiny_model(config.model, init)
            warm_start(config, run_dir, init, start)
        elif config.model.path.startswith("models:/"):
            staging = start.with_name(".from-registry.partial")
            shutil.rmtree(staging, ignore_errors=True)
            logger.info("downloading %s into %s", config.model.path, start)
            from spark_vl.tracking import resolve_model  # MLflow only where a registry model is asked for

            shutil.move(resolve_model(config.model.path, staging), start)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            raise FileNotFoundError(f"model.path {start} is not a Hugging Face checkpoint directory (no config.json)")
    ws.close()
    fault_point("prepare", 0, "after")
    return {"run_dir": run_dir, "policy": start, **ws.paths}


def warm_start(config: RunConfig, run_dir: Path, init: Path, start: Path) -> None:
    m = config.model
    processor = load_processor(init, m.min_pixels, m.max_pixels)
    if not config.train.warmup.enabled or config.train.warmup.steps == 0:
        fault_point("prepare", 0, "before")
        staging = start.with_name(f".{start.name}.partial")
        shutil.copytree(init, staging)
        staging.rename(start)
        return
    ws = Workspace(config, run_dir)
    trainer = PolicyTrainer(config, processor, init, None, lr=config.train.warmup.lr, adapters=False)
    try:
        losses, checks = run_warmup(trainer, ws.samples("train"), config, ws.templates, ws.pool)
    finally:
        ws.close()
    if checks:
        probe = ", ".join(f"{q} {a:.2f}" for q, a in checks[-1]["accuracy"].items())
        logger.info("warm-up: %d steps; held-back train samples answered right: %s", len(losses), probe)
        if not checks[-1]["passed"]:
            logger.warning("warm-up reached train.warmup.max_steps (%d) before every question beat chance by "
                           "train.warmup.above_chance: raise max_steps or lower above_chance", len(losses))
    write_json(run_dir / "warmup.json", {"loss_first": losses[0], "loss_last": losses[-1], "steps": len(losses),
                                         "probe": checks})
    fault_point("prepare", 0, "before")
    trainer.save(start)


def task_prompts(ws: Workspace, k: int, draw: int = 0, taken: set[str] = frozenset()) -> list[PromptRecord]:
    """The `draw`-th batch of task prompts of iteration k, none of the samples in `taken`. Draw 0
    is every run's batch; later draws are dynamic sampling's extra batches."""
    cfg = ws.config
    rng = random.Random(cfg.rollout.seed * 1_000_003 + k if draw == 0 else f"{cfg.rollout.seed}:{k}:{draw}")
    pool = [s for s in ws.samples("train") if s.id not in taken]
    samples = rng.sample(pool, min(cfg.rollout.prompts_per_batch, len(pool)))
    return [solve_prompt(s, cfg.data.instruction, f"k{k}/") for s in samples]


def stage_prompts(ws: Workspace, k: int) -> None:
    """Task prompts for iteration k plus the judge/reflection queue recycled in k-1."""
    out = iter_dir(ws.run_dir, k) / "prompts.jsonl"
    if out.exists():
        return
    cfg = ws.config
    prompts = task_prompts(ws, k)
    queue = iter_dir(ws.run_dir, k - 1) / "recycled.jsonl"
    if cfg.spark.enabled and queue.exists():
        prompts += load_prompts(queue)
    fault_point("prompts", k, "before")
    save_prompts(out, prompts)
    fault_point("prompts", k, "after")


def stage_rollout(ws: Workspace, k: int) -> None:
    out = iter_dir(ws.run_dir, k) / "rollouts.jsonl"
    if out.exists():
        return
    cfg = ws.config.rollout
    prompts = load_prompts(iter_dir(ws.run_dir, k) / "prompts.jsonl")
    engine = ws.engine_at(k - 1)
    start = time.perf_counter()
    groups = sample_groups(engine, prompts, cfg, seed=cfg.seed * 1_000_003 + k)
    draws = 1
    if cfg.filter_groups.enable:
        extra, draws = sample_until_informative(ws, k, engine, [g for g in groups if g.prompt.kind == "solve"])
        groups += extra
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for g in groups for ids in g.response_ids)
    solve_lengths = [len(ids) for g in groups if g.prompt.kind == "solve" for ids in g.response_ids]
    fault_point("rollout", k, "before")
    write_json(iter_dir(ws.run_dir, k) / "rollout.json", {
        "rollout/response_len": sum(solve_lengths) / max(1, len(solve_lengths)),
        "rollout/gen_batches": float(draws),
        "throughput/rollout_tokens_per_s": tokens / seconds,
        "time/rollout_s": seconds,
    })
    save_groups(out, groups)
    fault_point("rollout", k, "after")


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


def grade_groups(groups, templates: Templates, pool: GradingPool, judge_reply_check: str) -> None:
    """Fill rewards, statuses and extracted answers in place: solve and reflect responses against
    the ground truth, judge responses against their verdict label."""
    items, where = [], []
    for gi, group in enumerate(groups):
        judge = group.prompt.kind in JUDGE_KINDS
        for ri, response in enumerate(group.responses):
            items.append(GradeItem(response, group.prompt.label, "judge") if judge else task_item(response, group.prompt))
            where.append((gi, ri))
    grades = pool.grade(items)
    for group in groups:
        n = len(group.responses)
        group.rewards, group.statuses, group.extracted = [0.0] * n, ["ok"] * n, [None] * n
    for (gi, ri), grade in zip(where, grades):
        group = groups[gi]
        reward = grade.reward
        status = grade.status
        if group.prompt.kind in JUDGE_KINDS:
            group.extracted[ri] = extract_verdict(group.responses[ri])
            if not reply_is_intact(group.responses[ri], group.prompt, templates, judge_reply_check):
                reward, status = 0.0, "malformed" if status == "ok" else status
        else:
            group.extracted[ri] = extract_answer(group.responses[ri])
        group.rewards[ri], group.statuses[ri] = reward, status


def stage_verify(ws: Workspace, k: int) -> None:
    out = iter_dir(ws.run_dir, k) / "verified.jsonl"
    if out.exists():
        return
    start = time.perf_counter()
    groups = load_groups(iter_dir(ws.run_dir, k) / "rollouts.jsonl")
    grade_groups(groups, ws.templates, ws.pool, ws.config.spark.judge_reply_check)

    def mean_reward(kinds) -> float:
        rewards = [r for g in groups if g.prompt.kind in kinds for r in g.rewards]
        return sum(rewards) / len(rewards) if rewards else float("nan")

    solve = [g for g in groups if g.prompt.kind == "solve"]
    statuses = [s for g in groups for s in g.statuses]
    judge_statuses = [s for g in groups if g.prompt.kind in JUDGE_KINDS for s in g.statuses]
    fault_point("verify", k, "before")
    write_json(iter_dir(ws.run_dir, k) / "verify.json", {
        "rollout/reward_mean": mean_reward(("solve",)),
        "rollout/all_correct_frac": sum(all(r > 0 for r in g.rewards) for g in solve) / max(1, len(solve)),
        "rollout/all_wrong_frac": sum(all(r <= 0 for r in g.rewards) for g in solve) / max(1, len(solve)),
        "verify/timeout_frac": statuses.count("timeout") / max(1, len(statuses)),
        "verify/judge_malformed_frac": judge_statuses.count("malformed") / max(1, len(judge_statuses)),
        "aux/judge_reward_mean": mean_reward(JUDGE_KINDS),
        "aux/reflect_reward_mean": mean_reward(REFLECT_KINDS),
        "time/verify_s": time.perf_counter() - start,
    })
    save_groups(out, groups)
    fault_point("verify", k, "after")


def stage_recycle(ws: Workspace, k: int) -> None:
    out = iter_dir(ws.run_dir, k) / "recycled.jsonl"
    if out.exists():
        return
    start = time.perf_counter()
    cfg = ws.config
    groups = load_groups(iter_dir(ws.run_dir, k) / "verified.jsonl")
    if cfg.spark.enabled:
        rng = random.Random(cfg.train.seed * 1_000_003 + k)
        result = recycle(groups, cfg.spark, cfg.rollout.prompts_per_batch, rng, ws.templates, f"k{k}")
        prompts, counts = result.prompts, result.counts
    else:
        prompts, counts = [], {"n_pointwise": 0, "n_pairwise": 0, "n_reflect": 0}
    fault_point("recycle", k, "before")
    write_json(iter_dir(ws.run_dir, k) / "recycle.json", {
        **{f"recycle/{key}": float(value) for key, value in counts.items()},
        "time/recycle_s": time.perf_counter() - start,
    })
    save_prompts(out, prompts)
    fault_point("recycle", k, "after")


def stage_train(ws: Workspace, k: int) -> None:
    """One GRPO step from policy k-1 to policy k: in this process, or on launched DeepSpeed
    workers (each runs this function; rank 0 writes the outputs). train.json, written after the
    policy, marks the stage done (the policy itself may be pruned later)."""
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
    stats = trainer.grpo_step(load_groups(iter_dir(ws.run_dir, k) / "verified.jsonl"),
                              mid_step=lambda: fault_point("train", k, "step"),
                              seed=ws.config.train.seed * 1_000_003 + k)
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
        _prune_deepspeed_state(deepspeed_dir(ws.run_dir), keep=deepspeed_tag(k))
    fault_point("train", k, "after")


def _prune_deepspeed_state(ds_dir: Path, keep: str) -> None:
    """Keep only the newest DeepSpeed state: it alone is needed to resume."""
    for tag in ds_dir.glob("iter-*"):
        if tag.name != keep:
            shutil.rmtree(tag, ignore_errors=True)


def evaluation_due(config: RunConfig, k: int) -> bool:
    return k == 0 or k % config.eval.every == 0 or k == config.train.iterations


def stage_evaluate(ws: Workspace, k: int) -> None:
    out = iter_dir(ws.run_dir, k) / "eval.json"
    if out.exists() or not evaluation_due(ws.config, k):
        return
    start = time.perf_counter()
    metrics, records = evaluate(ws.engine_at(k), ws.samples("eval"), ws.config, ws.templates, ws.pool,
                                ws.processor.tokenizer)
    fault_point("evaluate", k, "before")
    write_jsonl_atomic(iter_dir(ws.run_dir, k) / "eval_samples.jsonl", records)
    write_json(out, {**metrics, "time/evaluate_s": time.perf_counter() - start})
    fault_point("evaluate", k, "after")


def stage_log(ws: Workspace, k: int) -> dict[str, float]:
    """Merge the stage metrics of iteration k into metrics.jsonl (one row per iteration)."""
    row: dict[str, Any] = {"iteration": k}
    for name in ("rollout", "verify", "recycle", "train", "eval"):
        path = iter_dir(ws.run_dir, k) / f"{name}.json"
        if path.exists():
            row.update(read_json(path))
    rows = [r for r in metric_rows(ws.run_dir) if r["iteration"] != k]
    fault_point("log", k, "before")
    write_jsonl_atomic(ws.run_dir / "metrics.jsonl", sorted(rows + [row], key=lambda r: r["iteration"]))
    prune_policies(ws.config, ws.run_dir, k)
    fault_point("log", k, "after")
    return row


def metrics_markdown(row: dict[str, float]) -> str:
    """One iteration's metrics as a markdown table."""
    lines = [f"# Iteration {row['iteration']}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4g} |" for key, value in sorted(row.items()) if key != "iteration"]
    return "\n".join(lines)


def sample_rows(run_dir: Path, k: int, limit: int = 64) -> dict[str, list[dict[str, Any]]]:
    """A readable sample of iteration k's verified rollouts and recycled prompts."""
    rollouts = []
    verified = iter_dir(run_dir, k) / "verified.jsonl"
    for group in (load_groups(verified) if verified.exists() else [])[:limit]:
        for response, reward in zip(group.responses[:2], group.rewards[:2]):
            rollouts.append({"kind": group.prompt.kind, "prompt": group.prompt.text, "label": group.prompt.label,
                             "response": response, "reward": reward})
    queue = iter_dir(run_dir, k) / "recycled.jsonl"
    recycled = [{"kind": p.kind, "prompt": p.text, "label": p.label, "source": p.source_id}
                for p in (load_prompts(queue) if queue.exists() else [])[:limit]]
    return {"rollouts": rollouts, "recycled": recycled}


def run_iteration(config: RunConfig, run_dir: Path, k: int, ws: Workspace | None = None) -> dict[str, float]:
    """All stages of iteration k; each is skipped when its output is already in run_dir."""
    ws = ws or Workspace(config, run_dir)
    for stage in (stage_prompts, stage_rollout, stage_verify, stage_recycle, stage_train, stage_evaluate):
        stage(ws, k)
    return stage_log(ws, k)


def run(config: RunConfig, run_dir: Path) -> list[dict[str, float]]:
    """Prepare, evaluate the starting policy, then all iterations with a progress bar."""
    prepare_run(config, run_dir)
    ws = Workspace(config, run_dir)
    try:
        stage_evaluate(ws, 0)
        rows = [stage_log(ws, 0)]
        progress = tqdm(range(1, config.train.iterations + 1), desc="SPARK", unit="iter")
        for k in progress:
            row = run_iteration(config, run_dir, k, ws)
            progress.set_postfix(reward=f"{row.get('rollout/reward_mean', 0):.2f}",
                                 judge=f"{row.get('aux/judge_reward_mean', float('nan')):.2f}")
            rows.append(row)
        return rows
    finally:
        ws.close()
