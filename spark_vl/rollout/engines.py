"""The engine protocol and the one factory that opens the configured engine.

A new engine is one module with a class that has `generate`, `score` and a classmethod
`open(engines, policy, model)`, plus one line in `ENGINES` (and its name among the config's
`rollout.engine` choices).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from spark_vl.config import RunConfig
from spark_vl.records import PromptRecord, RolloutGroup
from spark_vl.rollout.hf import HFRolloutEngine
from spark_vl.rollout.vllm import VLLMRolloutEngine


class RolloutEngine(Protocol):
    """What the pipeline needs from an engine."""

    def generate(self, prompts: list[PromptRecord], n: int, greedy: bool = False,
                 seed: int = 0) -> list[RolloutGroup]:
        """`n` responses to each prompt (one when greedy), with the sampling log-probs."""
        ...

    def score(self, prompts: list[PromptRecord], completions: list[str]) -> list[float]:
        """log p(completion | prompt) of each completion."""
        ...


class Engines:
    """Opens `rollout.engine` on a policy, and keeps what must outlive one engine (a vLLM server
    that reloads each new policy) in `services` until `close`."""

    def __init__(self, config: RunConfig, processor, work_dir: Path, show_progress: bool = False):
        self.config = config
        self.processor = processor
        self.work_dir = work_dir
        self.show_progress = show_progress
        self.services: dict[str, Any] = {}

    def open(self, policy: Path, model=None) -> RolloutEngine:
        """An engine sampling from the checkpoint at `policy`; `model`: the same weights already
        loaded in this process (the trainer's), which the transformers engine samples from."""
        return ENGINES[self.config.rollout.engine](self, policy, model)

    def sleep(self) -> None:
        """Free the device memory the services hold while training runs (vLLM's sleep mode)."""
        for service in self.services.values():
            service.sleep()

    def close(self) -> None:
        """Stop the services (a vLLM server the run started)."""
        while self.services:
            self.services.popitem()[1].close()


ENGINES: dict[str, Callable[[Engines, Path, Any], RolloutEngine]] = {
    "hf": HFRolloutEngine.open,
    "vllm": VLLMRolloutEngine.open,
}
