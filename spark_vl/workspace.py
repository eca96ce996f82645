"""What a process keeps between the stages of a run, rebuilt from the run directory on demand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spark_vl.config import ConfigError, RunConfig
from spark_vl.data import LoadedDataset, TaskSample, load_dataset
from spark_vl.layout import check_policy, deepspeed_dir, deepspeed_tag, policy_at, start_policy
from spark_vl.models import load_model, load_processor
from spark_vl.prompts import Templates
from spark_vl.rollout import ENGINES, Engines, RolloutEngine
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
    is_rollout_process: bool = False  # the run's second process, sampling while the first trains (rollout.overlap)

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
                                                  self.config.reward.function, self.config.reward.answer_format)
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
    def engines(self) -> Engines:
        """Opens `rollout.engine` on the run's policies; holds the run's vLLM server."""
        if "engines" not in self._cache:
            self._cache["engines"] = Engines(self.config, self.processor, self.run_dir)
        return self._cache["engines"]

    def engine_at(self, k: int) -> RolloutEngine:
        """An engine sampling from policy k: the trainer's model in this process, the policy loaded
        for generation when training runs elsewhere (launched workers, the run's first process), or a
        vLLM server holding it."""
        model = None
        if self.config.rollout.engine == "hf":
            elsewhere = self.is_rollout_process or distributed(self.config.train)
            model = self.rollout_model_at(k) if elsewhere else self.trainer_at(k).model
        return self.engines.open(policy_at(self.config, self.run_dir, k), model)

    def rollout_model_at(self, k: int):
        """Policy k for generation only, when training happens in other processes."""
        if self._cache.get("rollout_model_iteration") != k:
            self._cache["rollout_model"] = load_model(policy_at(self.config, self.run_dir, k), self.config.model.dtype)
            self._cache["rollout_model_iteration"] = k
        return self._cache["rollout_model"]

    def judge_engine(self, k: int) -> RolloutEngine:
        """Policy k as the judge that rewards open-ended prompts: transformers on its own copy of
        the weights, whatever `rollout.engine` is (it must score completions, and stay frozen while
        the policy trains or is served)."""
        if self._cache.get("judge_iteration") != k:
            self._cache.pop("judge_engine", None)
            self._cache["judge_engine"] = ENGINES["hf"](self.engines, policy_at(self.config, self.run_dir, k), None)
            self._cache["judge_iteration"] = k
        return self._cache["judge_engine"]

    def kept(self, key: str, make: Callable[[], Any]) -> Any:
        """`make()` once per workspace: what a higher layer starts for the whole run (the rollout
        process) and `close` stops."""
        if f"kept/{key}" not in self._cache:
            self._cache[f"kept/{key}"] = make()
        return self._cache[f"kept/{key}"]

    def close(self) -> None:
        """Stop what the workspace started: the grading pool, the vLLM server, what it `kept`."""
        for key in ("pool", "engines", *(key for key in self._cache if key.startswith("kept/"))):
            if key in self._cache:
                self._cache.pop(key).close()
