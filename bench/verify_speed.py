"""Before/after of one speed change: grading in-process whatever needs no sympy.

    .venv/bin/python bench/verify_speed.py RUN_DIR [--repeats 5]

Grades the verified rollouts of every iteration in RUN_DIR (e.g. runs/tiny) with the grading
pool as of commit 1b0cce8 (every task answer sent to a worker process, math-verify imported on
first use) and with the current one, alternately, each with a fresh pool of 2 workers as the
stage has; prints seconds per 128 responses and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from before_after import import_as_of

BEFORE = "1b0cce8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from spark_vl.records import load_groups
    from spark_vl.verify import grading

    before = import_as_of(BEFORE, {"spark_vl/verify/grading.py": "grading_before"})
    groups = [g for path in sorted(args.run_dir.glob("iter-*/verified.jsonl")) for g in load_groups(path, args.run_dir)]
    solve = [(r, g.prompt.label) for g in groups if g.prompt.kind in ("solve", "reflect_cot", "reflect_answer")
             for r in g.responses]
    seconds: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        for name, module in (("before", before), ("after", grading)):
            with module.GradingPool(2, 5.0) as pool:
                items = [module.GradeItem(r, a) for r, a in solve]
                start = time.perf_counter()
                rewards = [g.reward for g in pool.grade(items)]
                seconds[name].append((time.perf_counter() - start) * 128 / len(items))
            if name == "before":
                expected = rewards
            elif rewards != expected:
                raise SystemExit("the two implementations disagree on some reward")
    b, a = statistics.median(seconds["before"]), statistics.median(seconds["after"])
    print(f"{len(solve)} task responses from {args.run_dir}; seconds per 128 (median of {args.repeats}): "
          f"before {b:.3f}, after {a:.3f}: {b / a:.1f}x faster; same rewards")


if __name__ == "__main__":
    main()
