import random
from collections import Counter
from pathlib import Path

import pytest

from spark_vl.config import SparkConfig
from spark_vl.prompts import POSITIVE_LABELS, Templates, pairwise_judge_sample, pointwise_judge_sample
from spark_vl.records import PromptRecord, RolloutGroup
from spark_vl.recycle import recycle

TEMPLATES = Templates.load()


def group(name, extracted, rewards, answer="3", question=None):
    question = question or f"How many in {name}?"
    prompt = PromptRecord(id=name, kind="solve", images=["/img.png"], text=f"{name}?", label=answer,
                          question=question, answer=answer, source_id=name)
    responses = [f"reasoning {i} \\boxed{{{a}}}" if a is not None else f"rambling {i}" for i, a in enumerate(extracted)]
    return RolloutGroup(prompt, responses, [[1]] * len(extracted), [[0.0]] * len(extracted),
                        rewards=rewards, statuses=["ok"] * len(extracted), extracted=extracted)


REFERENCE = SparkConfig(balance_judge_labels=False, judge_cap=1.0, reflect_cap=1.0)


def run(groups, cfg=REFERENCE, seed=0, batch_size=None):
    return recycle(groups, cfg, batch_size or len(groups), random.Random(seed), TEMPLATES, "k1")


def test_all_correct_gives_one_positive_pointwise_and_no_reflection():
    result = run([group("g", ["3", "3", "3"], [1, 1, 1])])
    (sample,) = result.prompts
    assert sample.kind == "judge_pointwise" and sample.label in POSITIVE_LABELS
    assert sample.proposed == ["3"] and "3" in sample.text and "How many in g?" in sample.text
    assert sample.images == ["/img.png"]


def test_all_wrong_gives_negative_pointwise_about_extractable_answer_and_a_reflection():
    result = run([group("g", [None, "5", None], [0, 0, 0])])
    judge = [p for p in result.prompts if p.kind.startswith("judge")]
    reflect = [p for p in result.prompts if p.kind.startswith("reflect")]
    assert len(judge) == 1 and judge[0].label not in POSITIVE_LABELS and judge[0].proposed == ["5"]
    assert len(reflect) == 1 and reflect[0].label == "3"


def test_all_wrong_without_any_boxed_answer_gives_no_judge_sample():
    result = run([group("g", [None, None], [0, 0])])
    assert [p.kind for p in result.prompts] == ["reflect_cot"]
    assert "rambling" in result.prompts[0].text


@pytest.mark.parametrize("balanced", [False, True])
def test_pairwise_samples_in_both_orders_are_kept_together(balanced):
    cfg = SparkConfig(balance_judge_labels=balanced, pair_judge_answers=balanced, pointwise_prob=0.0,
                      pairwise_both_orders=True, judge_cap=0.5)
    groups = [group(f"g{i}", ["3", "4", "3"], [1, 0, 1], question="How many?") for i in range(10)]
    pairwise = [p for p in run(groups, cfg).prompts if p.kind == "judge_pairwise"]
    by_source = {}
    for sample in pairwise:
        by_source.setdefault(sample.source_id, []).append(sample)
    assert pairwise and all(len(pair) == 2 for pair in by_source.values())  # never one order alone
    for first, second in by_source.values():
        assert first.proposed == second.proposed[::-1] and {first.label, second.label} == {"A", "B"}
        assert second.id == first.id + "-swapped"
        assert first.proposed["AB".index(first.label)] == "3" == second.proposed["AB".index(second.label)]


def test_mixed_groups_split_about_30_70_and_pairwise_label_points_at_correct():
    groups = [group(f"g{i}", ["3", "4", "3"], [1, 0, 1]) for i in range(2000)]
    result = run(groups)
    kinds = Counter(p.kind for p in result.prompts if p.kind.startswith("judge"))
    assert 0.26 < kinds["judge_pointwise"] / 2000 < 0.34
    pairwise = [p for p in result.prompts if p.kind == "judge_pairwise"]
    for sample in pairwise[:200]:
        correct_index = sample.proposed.index("3")
        assert sample.label == "AB"[correct_index]
        assert set(sample.proposed) == {"3", "4"}
    assert 0.4 < sum(p.label == "A" for p in pairwise) / len(pairwise) < 0.6


def test_caps_are_a_share_of_the_batch():
    groups = [group(f"g{i}", ["3", "4"], [1, 0]) for i in range(16)]
    cfg = SparkConfig(balance_judge_labels=False)  # default caps: half a batch each
    result = run(groups, cfg)
    assert result.counts["n_pointwise"] + result.counts["n_pairwise"] == 8
    assert result.counts["n_reflect"] == 8
    modes = Counter(p.kind for p in result.prompts if p.kind.startswith("reflect"))
    assert modes == {"reflect_cot": 4, "reflect_answer": 4}


def test_reference_rules_feed_a_nearly_always_right_policy_mostly_yes():
    groups = [group(f"g{i}", ["3"] * 4, [1] * 4) for i in range(15)] + [group("w", ["3", "4", "3", "3"], [1, 0, 1, 1])]
    result = run(groups, SparkConfig(balance_judge_labels=False, judge_cap=1.0), seed=1)
    labels = [p.label in POSITIVE_LABELS for p in result.prompts if p.kind == "judge_pointwise"]
    assert sum(labels) >= 15 and len(labels) - sum(labels) <= 1


@pytest.mark.parametrize("seed", range(5))
def test_balance_switch_gives_equal_correct_and_wrong_pointwise(seed):
    groups = [group(f"g{i}", ["3"] * 4, [1] * 4, question="How many?") for i in range(15)]
    groups += [group("w", ["3", "4", "3", "3"], [1, 0, 1, 1], question="How many?")]
    result = run(groups, SparkConfig(balance_judge_labels=True, judge_cap=0.5), seed=seed)
    pointwise = [p for p in result.prompts if p.kind == "judge_pointwise"]
    positive = sum(p.label in POSITIVE_LABELS for p in pointwise)
    assert positive == len(pointwise) - positive >= 2
    assert all(p.proposed == ["4"] for p in pointwise if p.label not in POSITIVE_LABELS)
    assert len([p for p in result.prompts if p.kind.startswith("judge")]) <= 8


def test_balance_is_per_question_and_borrows_answers_of_the_same_question():
    colour = [group(f"c{i}", [c] * 4, [1] * 4, answer=c, question="What colour?")
              for i, c in enumerate(["red", "blue", "red", "green"])]
    count = [group(f"n{i}", ["1", "2", "2", "1"], [1, 0, 0, 1], answer="1", question="How many?") for i in range(4)]
    result = run(colour + count, SparkConfig(balance_judge_labels=True, judge_cap=1.0, pointwise_prob=1.0), seed=0)
    for question in ("What colour?", "How many?"):
        labels = [p.label in POSITIVE_LABELS for p in result.prompts if p.kind == "judge_pointwise"
                  and p.question == question]
        assert labels and sum(labels) * 2 == len(labels), question
    for sample in result.prompts:
        if sample.kind == "judge_pointwise":
            assert (sample.proposed[0] == sample.answer) == (sample.label in POSITIVE_LABELS)


@pytest.mark.parametrize("seed", range(5))
def test_answer_pairs_propose_one_answer_for_two_images_right_on_one_wrong_on_the_other(seed):
    colour = [group(f"c{i}", [c] * 4, [1] * 4, answer=c, question="What colour?")
              for i, c in enumerate(["red", "blue", "red", "green"])]
    colour += [group("w", ["purple"] * 4, [0] * 4, answer="blue", question="What colour?")]  # nobody's truth
    cfg = SparkConfig(balance_judge_labels=True, pair_judge_answers=True, judge_cap=1.0, pointwise_prob=1.0)
    pointwise = [p for p in run(colour, cfg, seed=seed, batch_size=10).prompts if p.kind == "judge_pointwise"]
    by_answer = Counter((p.proposed[0], p.label in POSITIVE_LABELS) for p in pointwise)
    assert by_answer and all(by_answer[(a, True)] == by_answer[(a, False)] for a, _ in by_answer)
    for sample in pointwise:
        assert (sample.proposed[0] == sample.answer) == (sample.label in POSITIVE_LABELS)
    assert "purple" not in {p.proposed[0] for p in pointwise}  # right nowhere: no counterpart, dropped
    assert len(pointwise) == 8  # the four right answers, each beside a wrong twin on another image


def test_balance_without_any_wrong_answer_drops_one_sided_samples():
    result = run([group(f"g{i}", ["3"] * 4, [1] * 4) for i in range(8)], SparkConfig(balance_judge_labels=True))
    assert result.prompts == []


def test_same_seed_same_samples_and_templates_filled():
    groups = [group(f"g{i}", ["3", "4", None], [1, 0, 0]) for i in range(10)]
    assert run(groups, seed=3).prompts == run(groups, seed=3).prompts
    for prompt in run(groups, seed=3).prompts:
        assert "{" not in prompt.text.replace("\\boxed{}", "").replace("\\box{", "").replace("\\boxed{", "")


def test_reply_pattern_matches_intact_judge_reply():
    pattern = TEMPLATES.reply_pattern(pairwise=False)
    match = pattern.match(r"The image shows red. The proposed answer is blue. \box{No}")
    assert match and match.groups() == ("red", "blue", "No")
    assert not pattern.match(r"TTTTTT \box{No}")
    match = TEMPLATES.reply_pattern(pairwise=True).match(r"The image shows 3. (A) is 4. \box{B}")
    assert match and match.groups() == ("3", "4", "B")
    assert not TEMPLATES.reply_pattern(pairwise=True).match(r"The image shows 3. \box{A}")


def test_parenthesised_template_file_loads_and_parses_its_replies():
    path = Path(__file__).resolve().parent.parent / "configs" / "templates-tiny-parens.json"
    templates = Templates.load(str(path))
    reply = r"The image shows (red). The proposed answer is (blue). \box{No}"
    match = templates.reply_pattern(pairwise=False).match(reply)
    assert match and match.groups() == ("red", "blue", "No")
    assert "(green)" in pointwise_judge_sample(group("g", ["3"], [1]).prompt, "green", False,
                                               templates.pointwise[0], "j").text


def test_recycle_cli_prints_samples_from_verified_rollouts(tmp_path):
    import json
    from dataclasses import asdict

    from typer.testing import CliRunner

    from spark_vl.cli import app

    groups = [group(f"g{i}", ["3", "4", "3", None], [1, 0, 1, 0]) for i in range(4)]
    unverified = group("u", ["3", "5"], [])
    unverified.responses = [r"\boxed{3}", r"\boxed{5}"]
    unverified.extracted = []
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(asdict(g)) + "\n" for g in groups + [unverified]))
    result = CliRunner().invoke(app, ["recycle", str(path), "--set", "spark.balance_judge_labels=false"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    samples = [json.loads(line) for line in lines[:-1]]
    assert {s["kind"] for s in samples} <= {"judge_pointwise", "judge_pairwise", "reflect_cot", "reflect_answer"}
    assert sum(s["kind"].startswith("judge") for s in samples) == 2  # half a batch of 5 groups
    assert "5 solve groups" in lines[-1]


def test_judge_reply_checks():
    from spark_vl.prompts import reply_is_intact

    source = group("g", ["3"], [1]).prompt
    prompt = pointwise_judge_sample(source, "4", False, TEMPLATES.pointwise[0], "j")
    faithful = r"The image shows 3. The proposed answer is 4. \box{No}"
    misquoted = r"The image shows 3. The proposed answer is 2. \box{No}"
    degenerate = r"TTTTTTTT \box{No}"
    assert [reply_is_intact(r, prompt, TEMPLATES, "verdict") for r in (faithful, misquoted, degenerate)] == [True] * 3
    assert [reply_is_intact(r, prompt, TEMPLATES, "format") for r in (faithful, misquoted, degenerate)] == [
        True, True, False]
    assert [reply_is_intact(r, prompt, TEMPLATES, "restate") for r in (faithful, misquoted, degenerate)] == [
        True, False, False]
    misread = r"The image shows 4. The proposed answer is 4. \box{No}"  # the truth (label source) is 3
    assert [reply_is_intact(r, prompt, TEMPLATES, "grounded") for r in (faithful, misquoted, misread, degenerate)] == [
        True, False, False, False]


def test_pairwise_reply_must_restate_option_a():
    """The pairwise letter follows the reasoning: the reply says what the image shows and what (A)
    is, so choosing A or B is the same comparison the pointwise judge makes."""
    from spark_vl.prompts import reply_is_intact

    source = group("g", ["3"], [1]).prompt
    prompt = pairwise_judge_sample(source, "3", "4", TEMPLATES.pairwise[0], False, "j")  # (A) 4, (B) 3
    assert prompt.proposed == ["4", "3"] and prompt.label == "B"
    replies = [r"The image shows 3. (A) is 4. \box{B}", r"The image shows 3. (A) is 3. \box{B}",
               r"The image shows 3. \box{B}"]
    assert [reply_is_intact(r, prompt, TEMPLATES, "restate") for r in replies] == [True, False, False]
    assert [reply_is_intact(r, prompt, TEMPLATES, "grounded") for r in replies] == [True, False, False]


def test_grading_marks_a_malformed_judge_reply_whatever_its_verdict():
    """A reply that fails the reply check earns 0 and is marked `malformed`, so verdict credit
    puts its advantage on all of it, not only on a verdict that may be right."""
    from spark_vl.pipeline import grade_groups
    from spark_vl.verify import GradingPool

    prompt = pointwise_judge_sample(group("g", ["3"], [1]).prompt, "4", False, TEMPLATES.pointwise[0], "j")
    replies = [r"The image shows 3. The proposed answer is 4. \box{No}",
               r"The image shows 3. The proposed answer is 4. \box{Yes}",
               r"The image shows 3. The proposed answer is 2. \box{No}", r"The image showsNo}"]
    judged = RolloutGroup(prompt, replies, [[1]] * 4, [[0.0]] * 4)
    with GradingPool(workers=1, timeout_s=5.0, reward_function=None) as pool:
        grade_groups([judged], TEMPLATES, pool, "restate")
    assert judged.rewards == [1.0, 0.0, 0.0, 0.0]
    assert judged.statuses == ["ok", "ok", "malformed", "malformed"]


def test_partial_credit_is_not_right_for_judge_or_reflection_data():
    """A user's reward function gave 0.5 to "red-ish but I say \\boxed{blue}" (truth red): recycling
    labels blue wrong and the group still yields a reflection sample."""
    partial = group("g", ["red", "blue", "red"], [1.0, 0.5, 1.0], answer="red", question="What colour?")
    cfg = SparkConfig(balance_judge_labels=False, pointwise_prob=1.0, judge_cap=1.0, reflect_cap=1.0)
    labels = {}
    for seed in range(40):
        for prompt in run([partial], cfg, seed=seed).prompts:
            if prompt.kind == "judge_pointwise":
                labels.setdefault(prompt.proposed[0], set()).add(prompt.label in POSITIVE_LABELS)
            else:
                assert prompt.kind.startswith("reflect") and prompt.proposed[0] in ("blue", partial.responses[1])
    assert labels == {"red": {True}, "blue": {False}}


def test_pairwise_share_reserves_part_of_the_judge_cap():
    groups = [group(f"g{i}", ["3", "4", "3"], [1, 0, 1], question="How many?") for i in range(8)]
    groups += [group(f"h{i}", ["4", "3", "4"], [1, 0, 1], answer="4", question="How many?") for i in range(8)]
    base = dict(balance_judge_labels=True, pair_judge_answers=True, pairwise_both_orders=True, judge_cap=1.0)
    counts = []
    for share in (0.0, 0.5):
        kinds = Counter(p.kind for p in run(groups, SparkConfig(**base, pairwise_share=share), seed=1).prompts)
        counts.append(kinds["judge_pairwise"])
        assert kinds["judge_pointwise"] + kinds["judge_pairwise"] <= 16
    assert counts[1] == 8 and counts[0] < 8  # half the cap of 16, in mirrored pairs
