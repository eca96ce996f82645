"""What a process keeps between the stages of a run, rebuilt from the run directory on demand."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spark_vl.config import ConfigError, RunConfig
from spark_vl.data import LoadedDataset, TaskSample, load_dataset
from spark_vl.layout import check_policy, deepspeed_dir, deepspeed_tag, policy_at, start_policy
from spark_vl.models import load_model, load_processor, vision_token_ids
from spark_vl.recycle import Templates
from spark_vl.rollout.hf import HFRolloutEngine, RolloutEngine
from spark_vl.rollout.vllm import VLLMRolloutEngine
from spark_vl.rollout.vllm_server import VLLMServer
from spark_vl.runio import logger
from spark_vl.train.launch import distributed
from spark_vl.train.trainer import PolicyTrainer
from spark_vl.verify import GradingPool


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

    def dataset(self, split: str) -> LoadedDataset:
        """The split's good rows and its bad ones (reported once per run, by `prepare_run`)."""
        key = f"dataset/{split}"
        if key not in self._cache:
            self._cache[key] = load_dataset(self.paths[split], self.config.data.max_image_pixels, warn=False)
        return self._cache[key]

    def samples(self, split: str) -> list[TaskSample]:
        return self.dataset(split).samples

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
            rollout = self.config.rollout
            try:
                self._cache["pool"] = GradingPool(rollout.verify_workers, rollout.verify_timeout_s,
                                                  self.config.reward.function)
            except ValueError as exc:  # a reward function that does not load: not worth a retry
                raise ConfigError(str(exc)) from None
        return self._cache["pool"]

    def trainer_at(self, k: int) -> PolicyTrainer:
        """The trainer holding policy k (built from disk, DeepSpeed state restored, when needed)."""
        if self.trainer_iteration != k:
            self.trainer = None
            policy = policy_at(self.config, self.run_dir, k)
            check_policy(policy)
            trainer = PolicyTrainer(self.config, self.processor, policy, start_policy(self.config, self.run_dir))
            ds_dir = deepspeed_dir(self.run_dir)
            if k > 0 and (ds_dir / deepspeed_tag(k)).exists():
                trainer.load_state(ds_dir, deepspeed_tag(k))
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
                                     vision_token_ids(self.processor.tokenizer), patch, show_progress=False,
                                     tokenizer=self.processor.tokenizer)
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
