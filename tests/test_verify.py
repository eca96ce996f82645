
import pytest

from spark_vl.verify import (GradeItem, GradingPool, extract_answer, extract_verdict, judge_reward,
                             task_reward)


@pytest.mark.parametrize("response, expected", [
    (r"so \boxed{3}", "3"),
    (r"\boxed{3}.", "3"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"\boxed{ {a}{b} }", "{a}{b}"),
    (r"\boxed{unclosed", None),
    ("no box at all", None),
    (r"\box{Yes}", None),
    # Malformed: no answer, whatever its last box holds.
    (r"\boxed{1} then \boxed{2}", None),
    (r"\boxed{11111111\boxed{1.\boxed{2}\\\\", None),
    # Text after the box does not change the answer (docs/grading.md).
    (r"\boxed{2} and more", "2"),
    (r"\boxed{2}}", "2"),
])
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


@pytest.mark.parametrize("response, label, reward", [
    (r"\boxed{3}", "3", 1),
    (r"\boxed{0.5}", "1/2", 1),
    (r"\boxed{\frac{2}{4}}", "0.5", 1),
    (r"\boxed{ Red }", "red", 1),
    (r"\boxed{\text{red}}", "red", 1),
    (r"\boxed{der}", "red", 0),  # sympy alone would call these equal
    (r"\boxed{4}", "3", 0),
    ("3", "3", 0),  # no boxed answer
    (r"\boxed{}", "3", 0),
])
def test_task_reward(response, label, reward):
    assert task_reward(response, label) == reward


@pytest.mark.parametrize("response, label, reward", [
    (r"The image shows red. \box{Yes}", "Yes", 1),
    (r"\boxed{ no }", "No", 1),
    (r"\box{A}", "A", 1),
    (r"\box{(B)}", "B", 1),
    (r"\box{Yes} wait \boxed{No}", "Yes", 0),
    ("Yes", "Yes", 0),
])
def test_judge_reward(response, label, reward):
    assert judge_reward(response, label) == reward
    assert extract_verdict(response) is None or isinstance(extract_verdict(response), str)


def test_pool_grades_in_order_and_times_out_a_hanging_sympy_expression():
    hanging = r"\boxed{(x+1)^{100000000} - (x+1)^{100000001}/(x+1)}"
    items = [GradeItem(r"\boxed{2}", "2"), GradeItem(hanging, "(x+2)^{99999999}"),
             GradeItem(r"\box{No}", "No", "judge"), GradeItem(r"\boxed{5}", "4")]
    with GradingPool(workers=2, timeout_s=2.0) as pool:
        grades = pool.grade(items)
        assert [g.reward for g in grades] == [1, 0, 1, 0]
        assert [g.status for g in grades] == ["ok", "timeout", "ok", "ok"]
        again = pool.grade([GradeItem(r"\boxed{7}", "7")])  # the killed worker was replaced
        assert again[0].reward == 1 and again[0].status == "ok"


def test_a_killed_grading_worker_is_replaced_and_every_response_graded():
    items = [GradeItem(r"\boxed{\frac{1}{2}}", "1/2"), GradeItem(r"\boxed{2/4}", "1/2"), GradeItem(r"\boxed{x+1}", "1+x")]
    with GradingPool(workers=2, timeout_s=30.0) as pool:
        pool.start()
        dead, _ = pool._workers[0]
        dead.kill()
        dead.join()  # dead before the batch: no race with its first item
        grades = pool.grade(items)
        assert [(g.reward, g.status) for g in grades] == [(1, "ok")] * 3
        assert pool._workers[0][0] is not dead and pool._workers[0][0].is_alive()


def test_pool_starts_no_worker_while_no_answer_needs_math_verify():
    import multiprocessing

    before = len(multiprocessing.active_children())
    with GradingPool(workers=2, timeout_s=2.0) as pool:
        grades = pool.grade([GradeItem(r"\boxed{2}", "2"), GradeItem(r"\box{Yes}", "Yes", "judge"),
                             GradeItem(r"\boxed{red}", "blue")])
        assert [g.reward for g in grades] == [1, 1, 0]
        assert len(multiprocessing.active_children()) == before
        assert pool.grade([GradeItem(r"\boxed{1/2}", "0.5")])[0].reward == 1  # exact fractions, here
        assert len(multiprocessing.active_children()) == before
        assert pool.grade([GradeItem(r"\boxed{x+1}", "1+x")])[0].reward == 1
        assert len(multiprocessing.active_children()) == before + 2


def test_verify_cli_keeps_order_and_marks_errors(tmp_path):
    import json

    from typer.testing import CliRunner

    from spark_vl.cli import app

    rows = [{"response": r"\boxed{4}", "answer": "4"}, {"response": r"\box{No}", "answer": "Yes", "kind": "judge"},
            {"answer": "1"}, {"response": r"x \boxed{1/2}", "answer": "0.5", "kind": "task"}]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    result = CliRunner().invoke(app, ["verify", str(src), "--out", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["reward"], r["status"]) for r in out] == [(1, "ok"), (0, "ok"), (0, "error"), (1, "ok"), (0, "error")]
    assert out[1]["kind"] == "judge" and out[0]["response"] == r"\boxed{4}"
    assert out[4]["raw"] == "not json"  # the unparseable line itself, not a copy of the row before
    assert "5 rows" in result.output


@pytest.mark.parametrize("predicted, answer, needed", [
    ("2", "2", False), ("2", "3", False), ("2.50", "2.5", False), ("red", "blue", False), (None, "2", False),
    ("1/2", "0.5", False), ("\\frac{1}{2}", "0.5", False), ("x+1", "1+x", True), ("(0,1)", "0<x<1", True),
])
def test_only_differing_mathematics_goes_to_math_verify(predicted, answer, needed):
    from spark_vl.verify.grading import needs_math_verify

    assert needs_math_verify(predicted, answer) is needed


USER_REWARDS = '''
import threading


def partial(response, answer, prompt):
    """Half a point for the right answer anywhere, a full one when the prompt's question is about colour."""
    if answer not in response:
        return 0.0
    return 1.0 if prompt and "colour" in prompt["question"] else 0.5


def forever(response, answer, prompt):
    threading.Event().wait()  # never returns: only the pool's deadline ends it


def raises(response, answer, prompt):
    raise RuntimeError("the user's bug")


def too_much(response, answer, prompt):
    return 2.0
'''


def test_a_users_reward_function_grades_under_the_deadline(tmp_path):
    (tmp_path / "rewards.py").write_text(USER_REWARDS)
    colour = {"question": "What colour is the shape?"}
    items = [GradeItem("\\boxed{red}", "red", "task", colour), GradeItem("red", "red", "task", {"question": "Which?"}),
             GradeItem("\\boxed{blue}", "red", "task", colour), GradeItem("\\box{Yes}", "Yes", "judge")]
    with GradingPool(workers=2, timeout_s=2.0, reward_function=f"{tmp_path / 'rewards.py'}:partial") as pool:
        assert [(g.reward, g.status) for g in pool.grade(items)] == [(1.0, "ok"), (0.5, "ok"), (0.0, "ok"),
                                                                    (1.0, "ok")]  # judge: built-in
    for name, status, detail in [("forever", "timeout", "exceeded 2 s"), ("raises", "error", "the user's bug"),
                                 ("too_much", "error", "must return a number in [0, 1]")]:
        with GradingPool(workers=1, timeout_s=2.0, reward_function=f"{tmp_path / 'rewards.py'}:{name}") as pool:
            (grade,) = pool.grade([GradeItem("\\boxed{red}", "red")])
            assert (grade.reward, grade.status) == (0.0, status) and detail in grade.detail
    for spec, message in [(f"{tmp_path / 'nope.py'}:partial", "does not exist"),
                          (f"{tmp_path / 'rewards.py'}:missing", "has no function 'missing'"),
                          ("no_colon", "path/to/file.py:fn or module:fn"),
                          ("not_a_module_here:fn", "cannot load not_a_module_here")]:
        with pytest.raises(ValueError, match=message):
            GradingPool(reward_function=spec)


def test_verify_cli_with_a_reward_function(tmp_path):
    import json

    from typer.testing import CliRunner

    from spark_vl.cli import app

    (tmp_path / "rewards.py").write_text(USER_REWARDS)
    rows = [{"response": "\\boxed{red}", "answer": "red", "prompt": {"question": "What colour?"}},
            {"response": "red", "answer": "red"}]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl"),
                                      "--reward-function", f"{tmp_path / 'rewards.py'}:partial"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["reward"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == [1.0, 0.5]
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "x.jsonl"),
                                      "--reward-function", "rewards.py"])
    assert result.exit_code == 2 and "path/to/file.py:fn" in result.output
