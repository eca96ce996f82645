"""A run as plain functions over its run directory; the Prefect flow wraps each stage as a task.

Run directory (the source of truth; every file is written atomically, and a stage whose
output exists is skipped, so a rerun continues where the last one stopped):

    config.yaml                  the resolved config
    data/                        built-in task data (when the config names no dataset)
    model/init/                  the tiny model as built (tiny runs only)
    model/policy-0000/           the starting policy: the tiny model after its warm-up
                                 (runs from a checkpoint start from `model.path` itself)
    model/policy-KKKK/           the policy after iteration K (Hugging Face directory)
    deepspeed/iter-KKKK/         DeepSpeed state after iteration K (optimizer included)
    iter-KKKK/prompts.jsonl      task prompts + the judge/reflection queue recycled in K-1
    iter-KKKK/rollouts.jsonl     n responses per prompt with the sampling log-probs
    iter-KKKK/verified.jsonl     the same with rewards, statuses and extracted answers
    iter-KKKK/recycled.jsonl     the queue: judge and reflection prompts for iteration K+1
    iter-KKKK/eval_samples.jsonl the graded held-out responses of an evaluation
    iter-KKKK/<stage>.json       each stage's metrics
    metrics.jsonl                one row per iteration (iteration 0: the starting policy)
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from spark_vl.config import RunConfig, save_config
from spark_vl.data import TaskSample, load_dataset
from spark_vl.data.tasks import make_dataset
from spark_vl.evaluate import evaluate, solve_prompt
from spark_vl.models import build_tiny_model, load_model, load_processor, vision_token_ids
from spark_vl.records import JUDGE_KINDS, REFLECT_KINDS, load_groups, load_prompts, save_groups, save_prompts
from spark_vl.recycle import Templates, recycle, reply_is_intact
from spark_vl.rollout.hf import HFRolloutEngine, RolloutEngine
from spark_vl.rollout.vllm import VLLMRolloutEngine
from spark_vl.rollout.vllm_server import VLLMServer
from spark_vl.runio import logger, read_jsonl, write_jsonl_atomic, write_text_atomic
from spark_vl.train.launch import distributed, is_worker, launch_training
from spark_vl.train.trainer import PolicyTrainer
from spark_vl.train.warmup import run_warmup
from spark_vl.verify import GradeItem, GradingPool, extract_answer, extract_verdict


def iter_dir(run_dir: Path, k: int) -> Path:
    return run_dir / f"iter-{k:04d}"


def policy_dir(run_dir: Path, k: int) -> Path:
    return run_dir / "model" / f"policy-{k:04d}"


def start_policy(config: RunConfig, run_dir: Path) -> Path:
    """The policy of iteration 0, which is also the reference model of the KL term: the warm-
    started tiny model, a registry model downloaded into the run, or `model.path` itself."""
    if config.model.path is None:
        return policy_dir(run_dir, 0)
    if config.model.path.startswith("models:/"):
        return run_dir / "model" / "from-registry"
    return Path(config.model.path)


def policy_at(config: RunConfig, run_dir: Path, k: int) -> Path:
    return start_policy(config, run_dir) if k == 0 else policy_dir(run_dir, k)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


@dataclass
class Workspace:
    """What a process keeps between stages: datasets, processor, grading pool, and the trainer
    holding the newest policy. Everything here can be rebuilt from the run directory."""

    config: RunConfig
    run_dir: Path
    _cache: dict[str, Any] = field(default_factory=dict)
    trainer: PolicyTrainer | None = None
    trainer_iteration: int | None = None

    @property
    def paths(self) -> dict[str, Path]:
        data = self.run_dir / "data"
        train = Path(self.config.data.train_path) if self.config.data.train_path else data / "train.jsonl"
        held_out = Path(self.config.data.eval_path) if self.config.data.eval_path else (
            data / "eval.jsonl" if not self.config.data.train_path else train)
        return {"train": train, "eval": held_out}

    def samples(self, split: str) -> list[TaskSample]:
        key = f"samples/{split}"
        if key not in self._cache:
            self._cache[key] = load_dataset(self.paths[split], self.config.data.max_image_pixels).samples
        return self._cache[key]

    @property
    def processor(self):
        if "processor" not in self._cache:
            m = self.config.model
            self._cache["processor"] = load_processor(start_policy(self.config, self.run_dir), m.min_pixels,
                                                      m.max_pixels)
        return self._cache["processor"]

    @property
    def templates(self) -> Templates:
        if "templates" not in self._cache:
            self._cache["templates"] = Templates.load(self.config.spark.templates)
        return self._cache["templates"]

    @property
    def pool(self) -> GradingPool:
        if "pool" not in self._cache:
            self._cache["pool"] = GradingPool(self.config.rollout.verify_workers, self.config.rollout.verify_timeout_s)
        return self._cache["pool"]

    def trainer_at(self, k: int) -> PolicyTrainer:
        """The trainer holding policy k (built from disk, DeepSpeed state restored, when needed)."""
        if self.trainer_iteration != k:
            self.trainer = None
            trainer = PolicyTrainer(self.config, self.processor, policy_at(self.config, self.run_dir, k),
                                    start_policy(self.config, self.run_dir))
            ds_dir = self.run_dir / "deepspeed"
            if k > 0 and (ds_dir / f"iter-{k:04d}").exists():
                trainer.load_state(ds_dir, f"iter-{k:04d}")
            elif k > 0:
                logger.warning("no DeepSpeed state for iteration %d: resuming with a fresh optimizer", k)
            self.trainer, self.trainer_iteration = trainer, k
        return self.trainer

    @property
    def rollout_server(self) -> VLLMServer:
        """The run's vLLM server (started on first use, see `engine_at`)."""
        if "server" not in self._cache:
            self._cache["server"] = VLLMServer(self.config.rollout.vllm, start_policy(self.config, self.run_dir),
                                               self.run_dir / "vllm")
        return self._cache["server"]

    def engine_at(self, k: int) -> RolloutEngine:
        """An engine sampling from policy k: the trainer's model, or the vLLM server holding its weights
        (started, or restarted after a failed health check, here)."""
        if self.config.rollout.engine == "vllm":
            server = self.rollout_server
            server.ensure_running()
            server.wake_up()
            server.load_weights(policy_at(self.config, self.run_dir, k))
            patch = getattr(self.processor.image_processor, "patch_size", 14)
            return VLLMRolloutEngine(server, self.config.rollout, self.config.model,
                                     vision_token_ids(self.processor.tokenizer), patch, show_progress=False)
        model = self.trainer_at(k).model if not distributed(self.config.train) else self.rollout_model_at(k)
        return HFRolloutEngine(model, self.processor, self.config.rollout, self.config.model, show_progress=False)

    def rollout_model_at(self, k: int):
        """Policy k for generation only, when training happens in launched workers."""
        if self._cache.get("rollout_model_iteration") != k:
            self._cache["rollout_model"] = load_model(policy_at(self.config, self.run_dir, k), self.config.model.dtype)
            self._cache["rollout_model_iteration"] = k
        return self._cache["rollout_model"]

    def close(self) -> None:
        """Stop what the workspace started: the grading pool and the vLLM server."""
        for key in ("pool", "server"):
            if key in self._cache:
                self._cache.pop(key).close()


def prepare_run(config: RunConfig, run_dir: Path) -> dict[str, Path]:
    """Write the config; build the tiny model, the built-in data and the warm-started starting
    policy when the config asks for them. Finished parts are skipped."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    ws = Workspace(config, run_dir)
    if config.data.train_path is None and not (run_dir / "data" / "eval.jsonl").exists():
        logger.info("rendering built-in tasks %s in %s", config.data.builtin.families, run_dir / "data")
        make_dataset(run_dir / "data", config.data.builtin)
    if config.data.train_path and not config.data.eval_path:
        logger.warning("data.eval_path is not set: held-out metrics are computed on the training set")
    for split in ("train", "eval"):
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
    return {"run_dir": run_dir, "policy": start, **ws.paths}


def warm_start(config: RunConfig, run_dir: Path, init: Path, start: Path) -> None:
    m = config.model
    processor = load_processor(init, m.min_pixels, m.max_pixels)
    if not config.train.warmup.enabled or config.train.warmup.steps == 0:
        shutil.copytree(init, start)
        return
    ws = Workspace(config, run_dir)
    trainer = PolicyTrainer(config, processor, init, None, lr=config.train.warmup.lr)
    losses = run_warmup(trainer, ws.samples("train"), config, ws.templates)
    write_json(run_dir / "warmup.json", {"loss_first": losses[0], "loss_last": losses[-1], "steps": len(losses)})
    trainer.save(start)


def stage_prompts(ws: Workspace, k: int) -> None:
    """Task prompts for iteration k plus the judge/reflection queue recycled in k-1."""
    out = iter_dir(ws.run_dir, k) / "prompts.jsonl"
    if out.exists():
        return
    cfg = ws.config
    rng = random.Random(cfg.rollout.seed * 1_000_003 + k)
    samples = rng.sample(ws.samples("train"), min(cfg.rollout.prompts_per_batch, len(ws.samples("train"))))
    prompts = [solve_prompt(s, cfg.data.instruction, f"k{k}/") for s in samples]
    queue = iter_dir(ws.run_dir, k - 1) / "recycled.jsonl"
    if cfg.spark.enabled and queue.exists():
        prompts += load_prompts(queue)
    save_prompts(out, prompts)


def stage_rollout(ws: Workspace, k: int) -> None:
    out = iter_dir(ws.run_dir, k) / "rollouts.jsonl"
    if out.exists():
        return
    prompts = load_prompts(iter_dir(ws.run_dir, k) / "prompts.jsonl")
    engine = ws.engine_at(k - 1)
    start = time.perf_counter()
    groups = engine.generate(prompts, ws.config.rollout.group_size, seed=ws.config.rollout.seed * 1_000_003 + k)
    seconds = time.perf_counter() - start
    tokens = sum(len(ids) for g in groups for ids in g.response_ids)
    solve_lengths = [len(ids) for g in groups if g.prompt.kind == "solve" for ids in g.response_ids]
    save_groups(out, groups)
    write_json(iter_dir(ws.run_dir, k) / "rollout.json", {
        "rollout/response_len": sum(solve_lengths) / max(1, len(solve_lengths)),
        "throughput/rollout_tokens_per_s": tokens / seconds,
        "time/rollout_s": seconds,
    })


def grade_groups(groups, templates: Templates, pool: GradingPool, judge_reply_check: str) -> None:
    """Fill rewards, statuses and extracted answers in place: solve and reflect responses against
    the ground truth, judge responses against their verdict label."""
    items, where = [], []
    for gi, group in enumerate(groups):
        judge = group.prompt.kind in JUDGE_KINDS
        for ri, response in enumerate(group.responses):
            items.append(GradeItem(response, group.prompt.label, "judge" if judge else "task"))
            where.append((gi, ri))
    grades = pool.grade(items)
    for group in groups:
        n = len(group.responses)
        group.rewards, group.statuses, group.extracted = [0.0] * n, ["ok"] * n, [None] * n
    for (gi, ri), grade in zip(where, grades):
        group = groups[gi]
        reward = grade.reward
        if group.prompt.kind in JUDGE_KINDS:
            group.extracted[ri] = extract_verdict(group.responses[ri])
            if reward and not reply_is_intact(group.responses[ri], group.prompt, templates, judge_reply_check):
                reward = 0.0
        else:
            group.extracted[ri] = extract_answer(group.responses[ri])
        group.rewards[ri], group.statuses[ri] = reward, grade.status


def stage_verify(ws: Workspace, k: int) -> None:
    out = iter_dir(ws.run_dir, k) / "verified.jsonl"
    if out.exists():
        return
    start = time.perf_counter()
    groups = load_groups(iter_dir(ws.run_dir, k) / "rollouts.jsonl")
    grade_groups(groups, ws.templates, ws.pool, ws.config.spark.judge_reply_check)
    save_groups(out, groups)

    def mean_reward(kinds) -> float:
        rewards = [r for g in groups if g.prompt.kind in kinds for r in g.rewards]
        return sum(rewards) / len(rewards) if rewards else float("nan")

    solve = [g for g in groups if g.prompt.kind == "solve"]
    statuses = [s for g in groups for s in g.statuses]
    write_json(iter_dir(ws.run_dir, k) / "verify.json", {
        "rollout/reward_mean": mean_reward(("solve",)),
        "rollout/all_correct_frac": sum(all(r > 0 for r in g.rewards) for g in solve) / max(1, len(solve)),
        "rollout/all_wrong_frac": sum(all(r <= 0 for r in g.rewards) for g in solve) / max(1, len(solve)),
        "verify/timeout_frac": statuses.count("timeout") / max(1, len(statuses)),
        "aux/judge_reward_mean": mean_reward(JUDGE_KINDS),
        "aux/reflect_reward_mean": mean_reward(REFLECT_KINDS),
        "time/verify_s": time.perf_counter() - start,
    })


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
    write_json(iter_dir(ws.run_dir, k) / "recycle.json", {
        **{f"recycle/{key}": float(value) for key, value in counts.items()},
        "time/recycle_s": time.perf_counter() - start,
    })
    save_prompts(out, prompts)


def stage_train(ws: Workspace, k: int) -> None:
    """One GRPO step from policy k-1 to policy k: in this process, or on launched DeepSpeed
    workers (each runs this function; rank 0 writes the outputs)."""
    out = policy_dir(ws.run_dir, k)
    if (out / "config.json").exists():
        return
    start = time.perf_counter()
    if ws.config.rollout.engine == "vllm" and ws.config.rollout.vllm.sleep_during_train:
        ws.rollout_server.sleep()
    if distributed(ws.config.train) and not is_worker():
        launch_training(ws.config.train, ws.run_dir, k)
        ws.trainer, ws.trainer_iteration = None, None
        train_json = iter_dir(ws.run_dir, k) / "train.json"
        write_json(train_json, {**read_json(train_json), "time/train_s": time.perf_counter() - start})
        return
    trainer = ws.trainer_at(k - 1)
    stats = trainer.grpo_step(load_groups(iter_dir(ws.run_dir, k) / "verified.jsonl"))
    if trainer.rank == 0:
        write_json(iter_dir(ws.run_dir, k) / "train.json", {**stats, "time/train_s": time.perf_counter() - start})
    trainer.save(out, ws.run_dir / "deepspeed", f"iter-{k:04d}")
    ws.trainer_iteration = k
    if trainer.rank == 0:
        _prune_deepspeed_state(ws.run_dir / "deepspeed", keep=f"iter-{k:04d}")


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
    metrics, records = evaluate(ws.engine_at(k), ws.samples("eval"), ws.config, ws.templates, ws.pool)
    write_jsonl_atomic(iter_dir(ws.run_dir, k) / "eval_samples.jsonl", records)
    write_json(out, {**metrics, "time/evaluate_s": time.perf_counter() - start})


def stage_log(ws: Workspace, k: int) -> dict[str, float]:
    """Merge the stage metrics of iteration k into metrics.jsonl (one row per iteration)."""
    row: dict[str, Any] = {"iteration": k}
    for name in ("rollout", "verify", "recycle", "train", "eval"):
        path = iter_dir(ws.run_dir, k) / f"{name}.json"
        if path.exists():
            row.update(read_json(path))
    rows = [r for r in metric_rows(ws.run_dir) if r["iteration"] != k]
    write_jsonl_atomic(ws.run_dir / "metrics.jsonl", sorted(rows + [row], key=lambda r: r["iteration"]))
    return row


def metric_rows(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.jsonl"
    return list(read_jsonl(path)) if path.exists() else []


def latest_task_accuracy(run_dir: Path, k: int) -> float:
    """Held-out task accuracy of the newest evaluation at or before iteration k."""
    evals = [r for r in metric_rows(run_dir) if "eval/task_acc" in r and r["iteration"] <= k]
    if not evals:
        raise ValueError(f"{run_dir} has no evaluation up to iteration {k}")
    return evals[-1]["eval/task_acc"]


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
