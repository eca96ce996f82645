"""The case table of docs/grading.md graded by spark-vl and by two reward functions other projects
ship, each run unmodified: TRL's `accuracy_reward` (math-verify) and mathruler's `grade_answer`
on its `extract_boxed_content` (EasyR1's math reward). Agreement with the careful grader's
verdicts per category, on the rows each grader decides; wrong answers each rewards and right
answers each refuses; spark-vl's grading time per case.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/grading_agreement.py
"""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

from report import publish

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "data" / "grading_cases.jsonl"


def spark_vl(case: dict) -> bool:
    from spark_vl.verify.grading import task_reward

    return task_reward(case["response"], case["gold"], case["format"]) == 1.0


def trl(case: dict) -> bool | None:
    """None where TRL skips the row (a gold it cannot parse)."""
    from trl.rewards import accuracy_reward

    reward = accuracy_reward([[{"role": "assistant", "content": case["response"]}]], [case["gold"]])[0]
    return None if reward is None else reward == 1.0


def mathruler(case: dict) -> bool:
    from mathruler.grader import extract_boxed_content, grade_answer

    return bool(grade_answer(extract_boxed_content(case["response"]), case["gold"]))


GRADERS = {"spark-vl": spark_vl, "TRL accuracy_reward": trl, "mathruler grade_answer": mathruler}


def main() -> None:
    cases = [json.loads(line) for line in CASES.read_text().splitlines()]
    verdicts: dict[str, list[bool | None]] = {}
    seconds: list[float] = []
    for name, grade in GRADERS.items():
        verdicts[name] = []
        for case in cases:
            start = time.perf_counter()
            try:
                verdicts[name].append(grade(case))
            except Exception:  # a reference grader that crashes on a row decides nothing there
                verdicts[name].append(None)
            if name == "spark-vl":
                seconds.append(time.perf_counter() - start)
    categories = sorted({c["category"] for c in cases})
    lines = ["# Grading agreement with a careful grader", "",
             f"{len(cases)} cases in {len(categories)} categories (`tests/data/grading_cases.jsonl`, each with its "
             "verdict and why). Agreement on the rows each grader decides (TRL skips a gold it cannot parse; a crash "
             "decides nothing); spark-vl grades `last_box` rows with that rule and the rest with `strict`.", "",
             "| category | rows | " + " | ".join(GRADERS) + " |", "|---|---|" + "---|" * len(GRADERS)]
    for category in categories + ["all"]:
        rows = [i for i, c in enumerate(cases) if category in ("all", c["category"])]
        cells = []
        for name in GRADERS:
            decided = [i for i in rows if verdicts[name][i] is not None]
            agree = sum(verdicts[name][i] == cases[i]["right"] for i in decided)
            cells.append(f"{agree / len(decided):.2f} ({len(decided)})" if decided else "n/a")
        lines.append(f"| {category} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "| grader | wrong answers rewarded | right answers refused | rows not decided |", "|---|---|---|---|"]
    for name in GRADERS:
        wrong = sum(v is True and not c["right"] for v, c in zip(verdicts[name], cases))
        refused = sum(v is False and c["right"] for v, c in zip(verdicts[name], cases))
        lines.append(f"| {name} | {wrong} | {refused} | {sum(v is None for v in verdicts[name])} |")
    misses = defaultdict(list)
    for name in GRADERS:
        for v, c in zip(verdicts[name], cases):
            if v is not None and v != c["right"] and len(misses[name]) < 12:
                misses[name].append(f"`{c['response'][:50]}` for `{c['gold'][:20]}`: {c['why']}")
    for name, rows in misses.items():
        lines += ["", f"Where {name} disagrees (first {len(rows)}):", ""] + [f"- {r}" for r in rows]
    ordered = sorted(seconds)
    lines += ["", f"spark-vl grading time per case in this process (math-verify included where it is needed): "
              f"p50 {statistics.median(ordered) * 1e3:.2f} ms, p99 {ordered[int(0.99 * (len(ordered) - 1))] * 1e3:.2f} "
              f"ms, max {ordered[-1] * 1e3:.1f} ms.", "",
              "Command: `.venv/bin/python bench/grading_agreement.py`"]
    publish("grading_agreement", "\n".join(lines))


if __name__ == "__main__":
    main()
