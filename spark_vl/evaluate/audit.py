"""Verifier audits: the policy's own judge read against the rule verifier. Where the judge is
confident and says the opposite, one of them is wrong; once the judge is good, those are the
answers a verifier mis-grades (a form it cannot parse, a wrong reference answer)."""

from __future__ import annotations

from typing import Any

from spark_vl.records import is_right

CONFIDENT = 0.9  # P(right) at or above, or P(wrong) at or above, counts as confident


def disagreements(cases: list[dict[str, Any]], confident: float = CONFIDENT) -> list[dict[str, Any]]:
    """The cases (each with `verifier_reward` and `p_positive`, the judge's probability that the
    answer is right; None: no verdict) where the judge is confident and the verifier says the
    opposite, most confident first, each with `judge_confidence`."""
    found = []
    for case in cases:
        p = case.get("p_positive")
        if p is None:
            continue
        says_right, says_wrong = p >= confident, p <= 1 - confident
        if (says_right and not is_right(case["verifier_reward"])) or (says_wrong and is_right(case["verifier_reward"])):
            found.append({**case, "judge_confidence": max(p, 1 - p)})
    return sorted(found, key=lambda case: -case["judge_confidence"])
