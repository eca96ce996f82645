"""Fault injection at named points of a run, so tests and the chaos benchmark need no races.

`SPARK_VL_FAULT` names where and how a process fails, as `STAGE:ITERATION:POINT:ACTION`
(several separated by commas). A stage calls `fault_point(stage, k, point)` at its points:
`before` its output is written and `after` it (for `log`: after metrics.jsonl, before the
MLflow batch; for `register`: after the registry call, before the marker; `promote:K:before`
sits between reading the champion's accuracy and moving the alias; `train:K:step` is inside
every training worker's first update, after its forward and before its backward, where
several workers are mid-way through a collective step; `warmup:N:after` follows the warm-up's
checkpoint after step N). ACTION is

- `kill`:   SIGKILL, of the whole process group when this process leads it (a run started
            in its own session takes its grading workers and launched trainers with it);
- `enospc`: raise OSError(ENOSPC), as a full disk would;
- `error`:  raise InjectedFault (a RuntimeError);
- `pause`:  meet the test at two named pipes in `SPARK_VL_FAULT_DIR`, `STAGE-K-POINT.reached`
            (opened for writing: returns once the test has seen the process arrive) and then
            `STAGE-K-POINT.release` (opened for reading: returns once the test lets it go on).
            Opening a pipe blocks until the other end opens it: no clock, no polling.

Unset, `fault_point` does nothing.
"""

from __future__ import annotations

import errno
import os
import signal
from dataclasses import dataclass

ENV = "SPARK_VL_FAULT"
STAGES = ("prepare", "warmup", "prompts", "rollout", "verify", "recycle", "train", "evaluate", "log", "register",
          "promote")
POINTS = ("before", "after", "step")
ACTIONS = ("kill", "enospc", "error", "pause")
PAUSE_DIR = "SPARK_VL_FAULT_DIR"


class InjectedFault(RuntimeError):
    """Raised at a fault point with the action `error`."""


@dataclass(frozen=True)
class Fault:
    stage: str
    iteration: int
    point: str
    action: str

    def __str__(self) -> str:
        return f"{self.stage}:{self.iteration}:{self.point}:{self.action}"


def parse_faults(text: str) -> list[Fault]:
    """`train:2:before:kill,log:3:after:error` -> Faults; a malformed spec says what is allowed."""
    faults = []
    for spec in filter(None, (part.strip() for part in text.split(","))):
        parts = spec.split(":")
        if (len(parts) != 4 or parts[0] not in STAGES or not parts[1].isdigit() or parts[2] not in POINTS
                or parts[3] not in ACTIONS):
            raise ValueError(f"{ENV}={text!r}: {spec!r} is not STAGE:ITERATION:POINT:ACTION with STAGE in "
                             f"{', '.join(STAGES)}, POINT in {', '.join(POINTS)}, ACTION in {', '.join(ACTIONS)}")
        faults.append(Fault(parts[0], int(parts[1]), parts[2], parts[3]))
    return faults


def fault_point(stage: str, k: int, point: str) -> None:
    """Fail here if `SPARK_VL_FAULT` names this stage, iteration and point."""
    text = os.environ.get(ENV)
    if not text:
        return
    for fault in parse_faults(text):
        if (fault.stage, fault.iteration, fault.point) != (stage, k, point):
            continue
        if fault.action == "kill":
            if os.getpgrp() == os.getpid():
                os.killpg(os.getpid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        if fault.action == "pause":
            pause_at(fault)
            continue
        if fault.action == "enospc":
            raise OSError(errno.ENOSPC, f"No space left on device (injected at {fault})")
        raise InjectedFault(f"injected fault at {fault}")


def pause_at(fault: Fault) -> None:
    """Rendezvous with the test at `fault`'s two named pipes (made by the test with os.mkfifo)."""
    base = os.path.join(os.environ[PAUSE_DIR], f"{fault.stage}-{fault.iteration}-{fault.point}")
    with open(f"{base}.reached", "w"):
        pass
    with open(f"{base}.release") as release:
        release.read()
