"""The grading spec (docs/grading.md) as a table of cases a careful grader labelled, and properties
tried on thousands of generated inputs (Hypothesis)."""

import json
import time
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spark_vl.verify.compare import equivalent
from spark_vl.verify.extract import final_answer
from spark_vl.verify.grading import task_reward

CASES = [json.loads(line) for line in (Path(__file__).parent / "data" / "grading_cases.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[f"{c['category']}-{i}" for i, c in enumerate(CASES)])
def test_the_case_table(case):
    """Each row: a response, its gold, the verdict and why (tests/data/grading_cases.jsonl)."""
    assert task_reward(case["response"], case["gold"], case["format"]) == float(case["right"]), case["why"]


def test_the_case_table_covers_every_category_with_both_verdicts():
    categories = {c["category"] for c in CASES}
    assert len(CASES) >= 300 and len(categories) >= 10
    for category in categories - {"golds"}:
        assert {c["right"] for c in CASES if c["category"] == category} == {True, False}, category


PROPERTY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DECIMALS = st.fractions(max_denominator=1000).map(lambda f: f.limit_denominator(1000))
WRAPPERS = st.sampled_from(["{}", "$ {} $", "\\[\n{}\n\\]", "$${}$$", "**{}**", "{}.", "{}!", "{}\u3002", "{} apples.",
                            "The answer is {}, since it is.", "{}<|im_end|>", "{}</s>", "{}<|eot_id|>",
                            "{}<|endoftext|>", "<think>\\boxed{{0}} or so</think> {}", "{}\n\nI hope this helps!",
                            "`{}`", "{} and again {}"])


def decimal(value: Fraction) -> str:
    """A finite decimal of `value` when it has one, else its fraction."""
    if 10 ** 12 % value.denominator == 0:
        digits = value.numerator * 10 ** 12 // value.denominator
        text = f"{abs(digits) // 10 ** 12}.{abs(digits) % 10 ** 12:012d}".rstrip("0").rstrip(".")
        return ("-" if digits < 0 else "") + text
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


@PROPERTY
@given(st.integers(min_value=-10 ** 500, max_value=10 ** 500), st.integers(min_value=-10 ** 500, max_value=10 ** 500))
def test_no_integer_but_the_gold_is_rewarded(answer, gold):
    assert task_reward(f"\\boxed{{{answer}}}", str(gold)) == float(answer == gold)


@PROPERTY
@given(DECIMALS, DECIMALS)
def test_no_decimal_or_fraction_but_the_golds_value_is_rewarded(answer, gold):
    assert task_reward(f"\\boxed{{{decimal(answer)}}}", decimal(gold)) == float(answer == gold)


@PROPERTY
@given(st.one_of(st.integers(-10 ** 30, 10 ** 30).map(str), DECIMALS.map(decimal),
                 st.sampled_from(["red", "grey", "left", "(B)", "x+1", "\\frac{\\pi}{2}", "30^\\circ"])), WRAPPERS)
def test_wrapping_a_right_answer_keeps_it_right(gold, wrapper):
    response = wrapper.format(f"\\boxed{{{gold}}}", f"\\boxed{{{gold}}}")
    assert task_reward(response, gold) == 1.0, response


@PROPERTY
@given(st.integers(0, 10 ** 6), st.integers(0, 10 ** 6), st.sampled_from(["{} or {}", "{} wait, {}", "{}\n{}"]))
def test_hedges_earn_nothing(first, second, joint):
    response = joint.format(f"\\boxed{{{first}}}", f"\\boxed{{{second}}}")
    assert task_reward(response, str(second)) == float(first == second)


@PROPERTY
@given(st.lists(st.integers(0, 99), min_size=2, max_size=6), st.booleans())
def test_stuffing_earns_nothing_under_either_rule(numbers, closed):
    inner = "".join(f"\\boxed{{{n}" for n in numbers) + ("}" * len(numbers) if closed else "")
    for answer_format in ("strict", "last_box"):
        assert all(task_reward(inner, str(n), answer_format) == 0.0 for n in numbers)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200), st.text(max_size=40))
def test_any_text_is_graded_or_refused_without_a_crash_and_fast(response, gold):
    """What needs no sympy is decided in this process in well under a millisecond or two; what
    needs it is left to a grading worker under the per-answer deadline (test_verify.py)."""
    start = time.perf_counter()
    answer = final_answer(response)
    if answer is not None:
        assert equivalent(answer, gold) in (True, False, None)
    assert time.perf_counter() - start < 0.5
