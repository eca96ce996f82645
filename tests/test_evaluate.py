import random

import pytest

from spark_vl.config import load_config
from spark_vl.data import TaskSample
from spark_vl.evaluate import held_out_judge_prompts
from spark_vl.prompts import POSITIVE_LABELS, Templates, solve_prompt, wrong_answers
from spark_vl.train.warmup import beats_chance, verdict_cases, warmup_example
from spark_vl.verify import extract_verdict

TEMPLATES = Templates.load()
COLOURS = ["red", "green", "blue", "yellow"]
SAMPLES = [TaskSample(f"s{i}", i, ("/img.png",), "What colour is the shape?", COLOURS[i % 4]) for i in range(40)]


def test_solve_prompt_appends_instruction_once():
    assert solve_prompt(SAMPLES[0], "Answer with \\boxed{}.").text == "What colour is the shape? Answer with \\boxed{}."
    boxed = TaskSample("b", 0, ("/i.png",), "Sum? Put it in \\boxed{}.", "3")
    assert solve_prompt(boxed, "Answer with \\boxed{}.").text == boxed.question


def test_judge_labels_are_balanced_within_each_question():
    cfg = load_config(None, ["eval.n_judge=40"])
    mixed = [TaskSample(f"m{i}", i, ("/img.png",), ["What colour?", "How many?"][i % 2],
                        [COLOURS[i % 4], str(i % 3 + 1)][i % 2]) for i in range(40)]
    pointwise, _ = held_out_judge_prompts(mixed, cfg, TEMPLATES, seed=0)
    for question in ("What colour?", "How many?"):
        labels = [p.label for p in pointwise if p.question == question]
        assert labels.count("Yes") + labels.count("A") == len(labels) // 2


def test_held_out_judge_prompts_are_balanced_and_labelled():
    cfg = load_config(None, ["eval.n_judge=20"])
    pointwise, pairwise = held_out_judge_prompts(SAMPLES, cfg, TEMPLATES, seed=0)
    assert len(pointwise) == len(pairwise) == 20
    positive = [p for p in pointwise if p.label in POSITIVE_LABELS]
    assert len(positive) == 10
    for prompt in pointwise:
        assert (prompt.proposed[0] == prompt.answer) == (prompt.label in POSITIVE_LABELS)
    for prompt in pairwise:
        assert prompt.proposed["AB".index(prompt.label)] == prompt.answer
        assert len(set(prompt.proposed)) == 2
    again, _ = held_out_judge_prompts(SAMPLES, cfg, TEMPLATES, seed=0)
    assert again == pointwise


def test_wrong_answers_pool_per_question():
    assert wrong_answers(SAMPLES) == {"What colour is the shape?": sorted(COLOURS)}


@pytest.mark.parametrize("accuracy", [0.5, 0.8])
def test_warmup_judge_verdicts_are_right_as_often_as_asked(accuracy):
    """A warm-up judge reply misreads the image 1 - accuracy of the time and judges by its reading:
    at 0.5 (the default) the verdicts carry no information; at 0.8, a weak prior."""
    cfg = load_config(None, [f"train.warmup.verdict_accuracy={accuracy}"])
    rng = random.Random(0)
    pool = wrong_answers(SAMPLES)
    counts = {(True, True): 0, (True, False): 0, (False, True): 0, (False, False): 0}
    for i in range(3000):
        sample = SAMPLES[i % len(SAMPLES)]
        conv, target = warmup_example(sample, pool, cfg, TEMPLATES, rng)
        text = conv[0]["content"][-1]["text"]
        if "Reply as" not in text or "(A)" in text:
            continue
        seen = target.split("The image shows ")[1].split(".")[0]
        proposed = target.split("The proposed answer is ")[1].split(".")[0]
        positive = extract_verdict(target) in ("yes", "a")
        assert positive == (seen == proposed)  # the verdict follows from the reply's own words
        counts[(proposed == sample.answer, positive)] += 1
    yes_if_right = counts[(True, True)] / (counts[(True, True)] + counts[(True, False)])
    yes_if_wrong = counts[(False, True)] / (counts[(False, True)] + counts[(False, False)])
    assert sum(counts.values()) > 300
    assert yes_if_right == pytest.approx(accuracy, abs=0.06)
    assert yes_if_wrong == pytest.approx(1 - accuracy, abs=0.06)


def test_warmup_stops_only_when_every_question_beats_its_own_chance():
    answers = {"colour?": ["blue", "green", "red", "yellow"], "count?": ["1", "2", "3"]}
    assert beats_chance({"colour?": 0.41, "count?": 0.49}, answers, 0.15)  # above 0.25 + 0.15, 0.333 + 0.15
    assert not beats_chance({"colour?": 0.90, "count?": 0.47}, answers, 0.15)  # counting still near chance
    assert not beats_chance({"colour?": 0.39, "count?": 0.90}, answers, 0.15)


def test_verdict_cases_pair_each_written_reply_with_the_verdict_its_words_imply():
    cases = verdict_cases(SAMPLES[:8], wrong_answers(SAMPLES), TEMPLATES, "Answer with \\boxed{}.")
    assert len(cases) == 8 * 6  # per sample: 2 pointwise prompts and 1 pairwise, each read 2 ways
    positive = []
    for prompt, follows, contradicts in cases:
        seen = follows.split("The image shows ")[1].split(".")[0]
        verdict = extract_verdict(follows)
        positive.append(verdict in ("yes", "a"))
        assert positive[-1] == (seen == prompt.proposed[0])  # the verdict follows from the reply's own words
        assert extract_verdict(contradicts) not in (verdict, None)
        assert follows.rsplit("{", 1)[0] == contradicts.rsplit("{", 1)[0]  # nothing else differs
    assert sum(positive) == len(cases) // 2
    pairwise = [prompt for prompt, _, _ in cases if prompt.kind == "judge_pairwise"]
    assert [p.label for p in pairwise[::2]] == ["A", "B"] * 4  # the right answer first for every other sample
    assert all(p.proposed[p.label == "A"] != p.answer for p in pairwise)


def test_same_form_accuracy_gives_a_shape_rule_no_credit(tiny_model_dir):
    from spark_vl.evaluate.core import same_form_accuracy, token_form
    from spark_vl.models import load_processor
    from spark_vl.prompts import pointwise_judge_sample

    tokenizer = load_processor(tiny_model_dir, 12544, 12544).tokenizer
    forms = {colour: token_form(tokenizer, colour) for colour in COLOURS}
    assert forms["red"] == forms["blue"] and forms["red"] != forms["green"]  # the tiny tokenizer's shapes
    template = TEMPLATES.pointwise[0]
    source = solve_prompt(SAMPLES[0], "Answer with \\boxed{}.")  # the answer is red
    prompts = [pointwise_judge_sample(source, "red", True, template, "right"),
               pointwise_judge_sample(source, "blue", False, template, "alike"),
               pointwise_judge_sample(source, "green", False, template, "other")]
    # "Yes when the words look alike" is right on red and green, wrong on blue: no credit.
    assert same_form_accuracy(prompts, [1.0, 0.0, 1.0], tokenizer) == 0.5
    assert same_form_accuracy(prompts, [0.0, 1.0, 0.0], tokenizer) == 0.5  # always No
    assert same_form_accuracy(prompts, [1.0, 1.0, 0.0], tokenizer) == 1.0  # the look-alike caught


def test_held_out_pairs_come_in_both_orders():
    cfg = load_config(None, ["eval.n_judge=20"])
    _, pairwise = held_out_judge_prompts(SAMPLES, cfg, TEMPLATES, seed=0)
    assert len(pairwise) == 20
    assert [p.label for p in pairwise] == ["A", "B"] * 10  # balanced: right answer first, then second
    for first, second in zip(pairwise[::2], pairwise[1::2]):
        assert first.proposed == second.proposed[::-1] and first.source_id == second.source_id


def test_pairwise_metrics_expose_a_position_bias():
    from spark_vl.evaluate.core import pairwise_metrics

    always_b = pairwise_metrics([0.0, 1.0] * 4, [r"The image shows 3. (A) is 3. \box{B}"] * 8)
    assert always_b == {"eval/judge_pairwise_acc": 0.5, "eval/judge_pairwise_consistent": 0.0,
                        "eval/judge_pairwise_first_rate": 0.0}
    replies = [r"\box{A}", r"\box{B}", r"\box{A}", r"\box{A}"]  # pair 1 right twice, pair 2 right once
    assert pairwise_metrics([1.0, 1.0, 1.0, 0.0], replies) == {
        "eval/judge_pairwise_acc": 0.75, "eval/judge_pairwise_consistent": 0.5, "eval/judge_pairwise_first_rate": 0.75}


def test_reflection_outcomes_count_fixes_breaks_and_gates():
    from spark_vl.evaluate.core import reflection_outcomes

    greedy = [1.0, 1.0, 0.0, 0.0, 0.0]
    reflected = [1.0, 0.0, 1.0, 0.0, 0.0]
    gated = [False, True, True, True, False]  # a right answer sent to reflect and broken, a wrong one fixed
    outcomes = reflection_outcomes(greedy, reflected, gated)
    assert outcomes == {"eval/task_acc_reflect": 0.4, "eval/reflect_fixed": 0.2, "eval/reflect_broke": 0.2,
                        "eval/reflect_gate_right": 0.5, "eval/reflect_gate_wrong": pytest.approx(2 / 3)}
    assert outcomes["eval/task_acc_reflect"] - sum(greedy) / 5 == pytest.approx(
        outcomes["eval/reflect_fixed"] - outcomes["eval/reflect_broke"])


def test_ungated_outcomes_are_what_reflection_alone_does():
    from spark_vl.evaluate.core import reflection_outcomes, ungated_outcomes

    greedy = [1.0, 1.0, 0.0, 0.0]
    every = [1.0, 0.0, 1.0, 1.0]  # every answer reflected on: one right answer broken, two wrong ones fixed
    assert ungated_outcomes(greedy, every) == {"eval/task_acc_reflect_ungated": 0.75, "eval/reflect_ungated_fixed": 0.5,
                                               "eval/reflect_ungated_broke": 0.25}
    # A judge that never says No keeps the reflection's +0.25 from the gated result: the gate holds it back.
    shut = reflection_outcomes(greedy, greedy, [False] * 4)
    assert shut["eval/task_acc_reflect"] == 0.5 and shut["eval/reflect_gate_wrong"] == 0.0


def test_the_held_out_digest_names_what_accuracy_is_measured_on(tmp_path):
    """Equal for the same questions, answers and image bytes; different when any of them, the
    number of held-out tasks or the instruction changes."""
    from spark_vl.config import load_config
    from spark_vl.data import TaskSample
    from spark_vl.evaluate import held_out_digest

    for name, colour in (("a.png", b"red"), ("b.png", b"blue")):
        (tmp_path / name).write_bytes(colour)
    samples = [TaskSample(f"s{i}", i, (str(tmp_path / "a.png"),), "What colour?", "red") for i in range(3)]
    config = load_config(None, ["eval.n_task=2"])
    digest = held_out_digest(samples, config)
    assert digest == held_out_digest([*samples[:2], samples[0]], config)  # beyond n_task: not measured
    other_image = [samples[0], TaskSample("s1", 1, (str(tmp_path / "b.png"),), "What colour?", "red")]
    assert digest != held_out_digest(other_image, config)
    assert digest != held_out_digest([samples[0], TaskSample("s1", 1, samples[1].images, "What colour?", "blue")],
                                     config)
    assert digest != held_out_digest(samples, load_config(None, ["eval.n_task=3"]))
    assert digest != held_out_digest(samples, load_config(None, ["eval.n_task=2", "data.instruction=Box it."]))


def test_the_audit_surfaces_what_a_broken_grader_misgrades(tmp_path):
    """A user's grader that cannot read a number written with a space in its box (a form it does
    not parse) pays 0 for right answers. Beside the verdicts of a judge that knows the truth
    (P(right) 0.97 for right answers, 0.03 for wrong ones, none for a reply without a verdict),
    the audit lists exactly the right answers the grader refused, most confident first; an
    unsure judge (0.6) raises nothing. `spark-vl audit` prints them from a run folder."""
    import json

    from typer.testing import CliRunner

    from spark_vl.cli import app
    from spark_vl.evaluate import disagreements
    from spark_vl.records import PromptRecord, task_item
    from spark_vl.verify import GradingPool

    (tmp_path / "grader.py").write_text(
        "import re\n\n\ndef strict(response, answer, prompt):\n"
        "    found = re.search(r'\\\\boxed\\{(\\d+)\\}', response)\n"
        "    return float(bool(found) and found.group(1) == answer)\n")
    replies = ["\\boxed{3}", "\\boxed{ 4}", "\\boxed{2}", "\\boxed{ 5}", "\\boxed{ 7}", "\\boxed{1}"]
    truths = ["3", "4", "3", "5", "7", "1"]
    prompts = [PromptRecord(f"q{i}", "solve", [], "How many circles are there?", t, "q", t, f"q{i}")
               for i, t in enumerate(truths)]
    with GradingPool(workers=1, timeout_s=5.0, reward_function=f"{tmp_path / 'grader.py'}:strict") as pool:
        rewards = [g.reward for g in pool.grade([task_item(r, p) for r, p in zip(replies, prompts)])]
    assert rewards == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # q1, q3, q4 right but refused; q2 rightly wrong
    judge = [0.97, 0.99, 0.03, 0.95, None, 0.6]  # q4: no verdict; q5: unsure
    cases = [{"kind": "judge_own", "prompt": p.text, "label": p.label, "answer": r[7:-1].strip(),
              "policy_reply": r, "verifier_reward": reward, "p_positive": q}
             for p, r, reward, q in zip(prompts, replies, rewards, judge)]
    found = disagreements(cases)
    assert [c["label"] for c in found] == ["4", "5"] and found[0]["judge_confidence"] == 0.99
    assert disagreements([{**cases[0], "p_positive": 0.05}]) != []  # right by the verifier, confidently wrong

    run = tmp_path / "run"
    (run / "iter-0002").mkdir(parents=True)
    (run / "iter-0002" / "verifier_disagreements.jsonl").write_text("".join(json.dumps(c) + "\n" for c in found))
    (run / "metrics.jsonl").write_text(json.dumps({"iteration": 2, "verify/judge_disagreement_rate": 0.4}) + "\n")
    result = CliRunner().invoke(app, ["audit", str(run), "--top", "1"])
    assert result.exit_code == 0, result.output
    assert "0.400" in result.output and "(1 of 2)" in result.output and "P(right) 0.990" in result.output
    assert "truth '4'" in result.output and "answer '4'" in result.output
    assert CliRunner().invoke(app, ["audit", str(tmp_path)]).exit_code == 2
