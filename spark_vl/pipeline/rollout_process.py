"""The run's second process under `rollout.overlap`: it runs the rollout stage of iteration k+1 with
the transformers engine while this process trains policy k. It keeps its own generation copy of
the policy it samples from, since the trainer's model changes under the update it overlaps."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from spark_vl.config import RunConfig
from spark_vl.workspace import Workspace

_workspace: Workspace | None = None  # the second process's own, made when it starts


class RolloutProcess:
    """One spawned process holding a workspace of the run; started on first use, replaced after it died."""

    def __init__(self, config: RunConfig, run_dir: Path):
        self.config = config
        self.run_dir = run_dir
        self._executor: ProcessPoolExecutor | None = None

    def run(self, stage: Callable[[Workspace, int], None], k: int) -> None:
        """`stage(workspace, k)` in the second process; what it raises is raised here."""
        if self._executor is None:
            self._executor = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_open_workspace,
                                                 initargs=(self.config, self.run_dir, torch.get_num_threads()))
        try:
            self._executor.submit(_run_stage, stage, k).result()
        except BrokenProcessPool:
            self.close()
            raise RuntimeError(f"the rollout process of {self.run_dir} died while sampling iteration {k} (killed, or "
                               "out of memory); rerun to sample that iteration again") from None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None


def _open_workspace(config: RunConfig, run_dir: Path, threads: int) -> None:
    global _workspace
    torch.set_num_threads(threads)  # the run's thread count: the same samples whichever process resumes
    _workspace = Workspace(config, run_dir, is_rollout_process=True)


def _run_stage(stage: Callable[[Workspace, int], None], k: int) -> None:
    stage(_workspace, k)
