"""Open-ended prompts rewarded by the policy's own judge (`spark.judge_reward`): rows without an
answer, the `describe` task, the snapshot and its anchor guard, and a run that uses them."""

import json
import logging
import math
import random

import pytest

from spark_vl.config import load_config
from spark_vl.data import scan_dataset, verifiable
from spark_vl.data.tasks import COLOURS, describe_scene, open_ended_score, render
from spark_vl.faults import ENV, InjectedFault
from spark_vl.layout import iter_dir, metric_rows, policy_dir, read_json
from spark_vl.pipeline import grade_groups, run
from spark_vl.pipeline.judge_reward import balanced_accuracy, refresh_due, score_open_groups
from spark_vl.prompts import Templates, solve_prompt
from spark_vl.records import RolloutGroup
from spark_vl.verify import GradingPool
from tests.test_resume import _assert_same_run

TEMPLATES = Templates.load("tiny")


def test_rows_without_an_answer_are_open_ended(tmp_path, tiny_data_dir):
    image = "shape.png"
    (tmp_path / image).write_bytes((tiny_data_dir / "images/train/000000.png").read_bytes())
    rows = [{"image": image, "question": "What colour?", "answer": "red"},
            {"image": image, "question": "Describe it.", "answer": None},
            {"image": image, "question": "Describe it.", "answer": "a red disc", "reward": "judge"},
            {"image": image, "question": "Describe it."},
            {"image": image, "question": "Describe it.", "answer": "x", "reward": "people"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = scan_dataset(path)
    assert [s.answer for s in result.samples] == ["red", None, None]
    assert [s.answer for s in verifiable(result.samples)] == ["red"]
    assert [(b.row, b.reason) for b in result.bad] == [(3, "missing_answer"), (4, "unparseable")]
    assert '"answer": null' in result.bad[0].detail and "'verifier' or 'judge'" in result.bad[1].detail
    prompts = [solve_prompt(s, "Answer with \\boxed{}.") for s in result.samples]
    assert [p.kind for p in prompts] == ["solve", "solve_open", "solve_open"] and prompts[1].label == ""


def test_describe_scenes_show_the_two_colours_their_rubric_names():
    rng = random.Random(5)
    for _ in range(10):
        scene = describe_scene(rng, 112, 3)
        assert scene.answer is None and len(set(scene.rubric)) == 2
        image = render(scene, 112)
        for shape in scene.shapes:
            assert image.getpixel((shape.cx, shape.cy + shape.radius // 2)) == COLOURS[shape.colour]
        assert {s.colour for s in scene.shapes} == set(scene.rubric)
    assert open_ended_score(" Red", ["blue", "red"]) == 1.0
    assert open_ended_score("green", ["blue", "red"]) == 0.0 and open_ended_score(None, ["red"]) == 0.0


def test_anchor_accuracy_is_balanced_and_a_snapshot_moves_after_refresh_iterations():
    labels = [True] * 6 + [False] * 2
    assert balanced_accuracy([0.9] * 8, labels) == 0.5  # always "Yes": 0.75 of the labels, chance balanced
    assert balanced_accuracy([0.9] * 6 + [0.1, 0.7], labels) == 0.75
    assert balanced_accuracy([None] * 6 + [0.1, 0.2], labels) == 0.5  # no verdict counts as wrong
    assert balanced_accuracy([0.8, 0.2], [True, True]) == 0.5 and math.isnan(balanced_accuracy([], []))
    assert not refresh_due(9, 0, 10) and refresh_due(10, 0, 10) and refresh_due(12, 2, 10)


class ScriptedJudge:
    """A judge behind the engine protocol: a fixed reply, and log p(reply) of +2 with a Yes in its
    box for the answer `red`, of -2 for any other answer, 0 with a No."""

    def generate(self, prompts, n, greedy=False, seed=0):
        replies = [f"The image shows red. The proposed answer is {p.proposed[0]}. \\box{{Yes}}" for p in prompts]
        return [RolloutGroup(p, [r], [[1]], [[0.0]]) for p, r in zip(prompts, replies)]

    def score(self, prompts, completions):
        return [0.0 if "{No}" in c else 2.0 if "answer is red." in c else -2.0 for c in completions]


def test_open_ended_responses_are_rewarded_with_the_judges_probability_of_yes(tiny_data_dir):
    sample = scan_dataset(tiny_data_dir / "train.jsonl").samples[0]
    prompt = solve_prompt(sample.__class__(**{**sample.__dict__, "answer": None}), "Answer with \\boxed{}.")
    group = RolloutGroup(prompt, ["\\boxed{red}", "\\boxed{blue}", "no box"], [[1]] * 3, [[0.0]] * 3)
    with GradingPool(workers=1, timeout_s=5.0, reward_function=None) as pool:
        grade_groups([group], TEMPLATES, pool, "restate")
    assert group.extracted == ["red", "blue", None] and group.rewards == [0.0] * 3  # the verifier leaves them
    score_open_groups(ScriptedJudge(), [group], TEMPLATES.pointwise[0])
    assert group.rewards == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2)), 0.0])


SMALL = ["rollout.prompts_per_batch=6", "rollout.group_size=4", "rollout.max_new_tokens=8", "train.iterations=4",
         "train.warmup.steps=3", "train.warmup.batch_size=8", "train.micro_batch_size=8", "train.keep_policies=1",
         "eval.every=2", "eval.n_task=6", "eval.n_judge=8", "eval.reflect_rounds=1", "data.builtin.n_train=40",
         "data.builtin.n_eval=12", "data.builtin.families=[colour,describe]", "spark.judge_reward.refresh=2"]


JUDGED = SMALL + ["spark.judge_reward.anchor_floor=0.0"]


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """A run whose judge snapshot passes any floor, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("judged") / "on"
    run(load_config(None, JUDGED), run_dir)
    return run_dir


def test_a_run_rewards_open_ended_prompts_with_a_checked_snapshot(tmp_path, caplog, judged):
    """With a floor any judge passes, the snapshot moves every 2 iterations (policy 0, 0, 2, 2),
    stays on disk while pruning deletes the policies around it, and the open-ended groups carry
    the judge's rewards; the held-out open-ended answers are recorded with the rubric's prompts.
    With a floor no judge passes, open-ended rewards stay 0 and the run says why."""
    rows = metric_rows(judged)[1:]
    assert [r["judge_reward/snapshot"] for r in rows] == [0.0, 0.0, 2.0, 2.0]
    assert all(r["judge_reward/in_use"] == 1.0 and 0.0 <= r["judge_reward/mean"] <= 1.0 for r in rows)
    assert policy_dir(judged, 2).exists() and not policy_dir(judged, 1).exists()
    verified = map(json.loads, (iter_dir(judged, 1) / "verified.jsonl").read_text().splitlines())
    open_groups = [g for g in verified if g["prompt"]["kind"] == "solve_open"]
    assert open_groups and all(0.0 <= r <= 1.0 for g in open_groups for r in g["rewards"])
    records = map(json.loads, (iter_dir(judged, 4) / "eval_samples.jsonl").read_text().splitlines())
    held_out = [r for r in records if r["kind"] == "solve_open"]
    assert held_out and "eval/open_self_judged" in read_json(iter_dir(judged, 4) / "eval.json")
    assert all(r["prompt"].startswith("Name a colour") for r in held_out)

    with caplog.at_level(logging.WARNING, logger="spark_vl"):
        rows = run(load_config(None, SMALL + ["spark.judge_reward.anchor_floor=1.0"]), tmp_path / "off")[1:]
    assert all(r["judge_reward/in_use"] == 0.0 and r["judge_reward/mean"] == 0.0 for r in rows)
    assert "below spark.judge_reward.anchor_floor" in caplog.text
    assert [r["iteration"] for r in metric_rows(tmp_path / "off")] == [0, 1, 2, 3, 4]


def test_a_run_crashed_around_the_judge_resumes_to_the_same_run(tmp_path, monkeypatch, judged):
    """Crashes while the refreshed snapshot rewards iteration 3 and while iteration 2's pruning
    runs: the rerun takes up the same snapshot and ends as the uninterrupted run."""
    run_dir = tmp_path / "run"
    for crash in ("verify:3:before", "log:2:before", "log:3:after"):
        monkeypatch.setenv(ENV, f"{crash}:error")
        with pytest.raises(InjectedFault, match=crash):
            run(load_config(None, JUDGED), run_dir)
    monkeypatch.delenv(ENV)
    run(load_config(None, JUDGED), run_dir)
    _assert_same_run(run_dir, judged, 4)
