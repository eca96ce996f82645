"""Rewards for responses, graded in worker processes with a hard per-sample deadline.

`math-verify` bounds its own work with SIGALRM, which only works in a main thread, and a
sympy simplification can still run away. Each task answer is therefore graded in a worker
process; a worker past the deadline is killed and replaced, the sample scores 0 and is
marked `timeout`.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Literal

from spark_vl.verify.compare import equivalent, latex_for_math_verify
from spark_vl.verify.extract import AnswerFormat, extract_answer, extract_verdict, normalise

Kind = Literal["task", "judge"]
_STARTUP_TIMEOUT_S = 300


@dataclass(frozen=True)
class GradeItem:
    response: str
    answer: str
    kind: Kind = "task"
    prompt: dict | None = None  # the prompt record, for a user's reward function


RewardFunction = Callable[[str, str, "dict | None"], float]


def load_reward_function(spec: str) -> RewardFunction:
    """`path/to/file.py:fn` or `module:fn` as a callable; ValueError naming the spec otherwise."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise ValueError(f"reward.function {spec!r}: write it as path/to/file.py:fn or module:fn")
    try:
        if target.endswith(".py"):
            loader_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
            if loader_spec is None or not Path(target).is_file():
                raise FileNotFoundError(f"{target} does not exist")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except Exception as exc:
        raise ValueError(f"reward.function {spec!r}: cannot load {target} ({type(exc).__name__}: {exc})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"reward.function {spec!r}: {target} has no function {name!r}")
    return function


def custom_reward(function: RewardFunction, item: GradeItem) -> float:
    """The user's reward, checked: a real number in [0, 1]."""
    value = function(item.response, item.answer, item.prompt)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"the reward function returned {value!r}; it must return a number in [0, 1]")
    return float(value)


@dataclass(frozen=True)
class Grade:
    reward: float
    status: Literal["ok", "timeout", "error"]
    extracted: str | None = None
    detail: str = ""


def needs_math_verify(predicted: str | None, answer: str) -> bool:
    """Whether only math-verify can tell whether `predicted` is `answer` (`compare.equivalent`
    leaves it undecided): two expressions, intervals or sets. Everything else is decided here."""
    return predicted is not None and equivalent(predicted, answer) is None


def task_reward(response: str, answer: str, answer_format: AnswerFormat = "strict") -> float:
    """1 when the response's answer (`extract.final_answer` under `answer_format`) is the ground
    truth (`compare.equivalent`, then math-verify where only it can tell), else 0."""
    predicted = extract_answer(response, answer_format)
    if predicted is None:
        return 0.0
    decided = equivalent(predicted, answer)
    if decided is not None:
        return float(decided)
    from math_verify import parse, verify

    gold = parse(f"${latex_for_math_verify(answer)}$")
    target = parse(f"\\boxed{{{latex_for_math_verify(predicted)}}}")
    return float(bool(gold) and bool(target) and verify(gold, target))


def judge_reward(response: str, label: str) -> float:
    """1 when the last \\box{}/\\boxed{} verdict equals the label (Yes/No or A/B)."""
    verdict = extract_verdict(response)
    return float(verdict is not None and verdict == normalise(label).strip("()"))


def grade_one(item: GradeItem, function: RewardFunction | None = None,
              answer_format: AnswerFormat = "strict") -> Grade:
    try:
        if item.kind == "judge":
            return Grade(judge_reward(item.response, item.answer), "ok", extract_verdict(item.response))
        extracted = extract_answer(item.response, answer_format)
        if function is not None:
            return Grade(custom_reward(function, item), "ok", extracted)
        return Grade(task_reward(item.response, item.answer, answer_format), "ok", extracted)
    except Exception as exc:  # a malformed response or a failing reward function scores 0; the run goes on
        return Grade(0.0, "error", None, f"{type(exc).__name__}: {exc}")


def _worker(conn, reward_function: str | None, answer_format: AnswerFormat) -> None:
    import math_verify  # noqa: F401  (imported before "ready": start-up is not graded time)

    function = load_reward_function(reward_function) if reward_function else None
    conn.send("ready")
    while True:
        item = conn.recv()
        if item is None:
            return
        conn.send(grade_one(item, function, answer_format))


class GradingPool:
    """A few worker processes grading one item each at a time, with a hard deadline per item.

    Answers that need no sympy (numbers, plain strings, verdicts) are graded in this process; the
    workers start, all at once, when the first item that needs math-verify arrives. With a
    `reward_function` (`reward.function`) every task item goes to a worker: user code runs under
    the deadline too. It is loaded here first, so a bad spec fails at once with what to fix."""

    def __init__(self, workers: int = 2, timeout_s: float = 5.0, reward_function: str | None = None,
                 answer_format: AnswerFormat = "strict"):
        self.timeout_s = timeout_s
        self.answer_format = answer_format
        self.size = max(1, workers)
        self.reward_function = reward_function
        if reward_function:
            load_reward_function(reward_function)
        self._ctx = mp.get_context("spawn")
        self._workers: list = []

    def _launch(self):
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker, args=(child, self.reward_function, self.answer_format),
                                    daemon=True)
        process.start()
        child.close()
        return process, parent

    @staticmethod
    def _await_ready(process, parent):
        if not parent.poll(_STARTUP_TIMEOUT_S) or parent.recv() != "ready":
            process.kill()
            raise RuntimeError(f"a grading worker did not start within {_STARTUP_TIMEOUT_S} s")
        return process, parent

    def _spawn(self):
        return self._await_ready(*self._launch())

    def start(self) -> None:
        """Start the workers now (they start on their own when first needed)."""
        if self._workers:
            return
        launched = [self._launch() for _ in range(self.size)]
        self._workers = [self._await_ready(*worker) for worker in launched]

    def _send(self, slot: int, item: GradeItem) -> None:
        """Hand `item` to a worker, replacing it first if it died between items (killed, out of
        memory); a worker that dies while grading is replaced in `grade`, its item marked error."""
        process, conn = self._workers[slot]
        if process.is_alive():
            try:
                conn.send(item)
                return
            except (BrokenPipeError, ConnectionResetError):
                process.kill()
        process.join()
        self._workers[slot] = self._spawn()
        self._workers[slot][1].send(item)

    def grade(self, items: list[GradeItem]) -> list[Grade]:
        results: list[Grade | None] = [None] * len(items)
        pending = list(range(len(items)))[::-1]
        busy: dict[int, tuple[int, float]] = {}  # worker slot -> (item index, deadline)
        while pending or busy:
            for slot in range(self.size):
                if slot not in busy and pending:
                    index = pending.pop()
                    item = items[index]
                    if item.kind == "judge" or (not self.reward_function and not needs_math_verify(
                            extract_answer(item.response, self.answer_format), item.answer)):
                        results[index] = grade_one(item, None, self.answer_format)  # no sympy: here, no round trip
                        continue
                    self.start()
                    self._send(slot, item)
                    busy[slot] = (index, time.monotonic() + self.timeout_s)
            if not busy:
                continue
            wait_s = max(0.0, min(deadline for _, deadline in busy.values()) - time.monotonic())
            ready = wait([self._workers[slot][1] for slot in busy], timeout=wait_s)
            for slot, (index, deadline) in list(busy.items()):
                process, conn = self._workers[slot]
                if conn in ready:
                    try:
                        results[index] = conn.recv()
                        del busy[slot]
                        continue
                    except EOFError:
                        pass
                if conn in ready or time.monotonic() > deadline or not process.is_alive():
                    timed_out = process.is_alive()
                    process.kill()
                    process.join()
                    self._workers[slot] = self._spawn()
                    status = "timeout" if timed_out else "error"
                    results[index] = Grade(0.0, status, None, f"grading exceeded {self.timeout_s:g} s"
                                           if timed_out else "grading worker died")
                    del busy[slot]
        return results  # type: ignore[return-value]

    def close(self) -> None:
        for process, conn in self._workers:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            process.join(timeout=1)
            if process.is_alive():
                process.kill()

    def __enter__(self) -> "GradingPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
