"""The model as a judge: verdict probabilities from its own log-probs, calibration, the CLI."""

import json
import math
import shutil

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from spark_vl.cli import app
from spark_vl.config import load_config
from spark_vl.evaluate.judge import calibration, verdict_probabilities, with_verdict
from spark_vl.models import load_model, load_processor, vision_token_ids
from spark_vl.prompts import Templates, pointwise_judge_sample
from spark_vl.records import PromptRecord
from spark_vl.rollout.hf import HFRolloutEngine

TEMPLATES = Templates.load("tiny")


def test_calibration_against_hand_computed_values():
    ece, brier = calibration([0.1, 0.2, 0.8, 0.9], [False, True, True, True])
    assert brier == pytest.approx((0.01 + 0.64 + 0.04 + 0.01) / 4)
    assert ece == pytest.approx((0.1 + 0.8 + 0.2 + 0.1) / 4)  # one prompt per bin
    assert calibration([0.25] * 4, [True, False, False, False])[0] == pytest.approx(0.0)  # calibrated
    assert calibration([1.0, 0.0], [True, False]) == (0.0, 0.0)


def test_with_verdict_replaces_only_the_box():
    reply = "The image shows red. The proposed answer is blue. \\box{No}."
    assert with_verdict(reply, "Yes") == "The image shows red. The proposed answer is blue. \\box{Yes}."
    assert with_verdict("no box at all", "Yes") is None


def _by_hand(model, processor, prompt: PromptRecord, reply: str, suppress: list[int]) -> float:
    """log p(reply | prompt) from one plain forward of the whole conversation."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.text}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    image = Image.open(prompt.images[0]).convert("RGB")
    inputs = processor(text=[text + reply], images=[image], return_tensors="pt")
    reply_ids = processor.tokenizer.encode(reply, add_special_tokens=False)
    with torch.no_grad():
        logits = model(**inputs).logits[0, -len(reply_ids) - 1:-1].float()
    logits[:, suppress] = -1e9
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(reply_ids)[:, None]).sum().item()


def test_verdict_probability_is_the_softmax_of_the_two_replies(tiny_model_dir, tiny_data_dir):
    cfg = load_config(None, ["spark.templates=tiny"])
    processor = load_processor(tiny_model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    model = load_model(tiny_model_dir, "float32").eval()
    engine = HFRolloutEngine(model, processor, cfg.rollout, cfg.model, show_progress=False)
    row = json.loads((tiny_data_dir / "eval.jsonl").read_text().splitlines()[0])
    source = PromptRecord(id="s", kind="solve", images=[str(tiny_data_dir / row["image"])], text=row["question"],
                          label=row["answer"], question=row["question"], answer=row["answer"], source_id="s")
    prompt = pointwise_judge_sample(source, "red", True, TEMPLATES.pointwise[0], "j")
    reply = "The image shows red. The proposed answer is red. \\box{No}"
    (p,) = verdict_probabilities(engine, [prompt], [reply])
    suppress = vision_token_ids(processor.tokenizer)
    yes = _by_hand(model, processor, prompt, with_verdict(reply, "Yes"), suppress)
    no = _by_hand(model, processor, prompt, reply, suppress)
    assert p == pytest.approx(torch.softmax(torch.tensor([yes, no]), 0)[0].item(), abs=1e-4)
    assert 0 < p < 1 and abs(p - 0.5) > 1e-3  # else swapping the verdicts would pass unseen
    assert verdict_probabilities(engine, [prompt], ["no verdict here"]) == [None]


class ScoredReplies:
    """Scores each completion by the verdict in its box (what `verdict_probabilities` asks of an
    engine), keeping the completions it was asked about."""

    def __init__(self):
        self.asked = []

    def score(self, prompts, completions):
        self.asked += completions
        return [{"\\box{Yes}": 1.0, "\\box{A}": 1.0}.get(c[c.index("\\box"):], 0.0) for c in completions]


def test_a_pointwise_reply_is_scored_with_the_verdicts_its_template_asks_for():
    """The default pools hold pointwise templates that answer A/B ("(A) correct (B) wrong"):
    their replies are scored with A and B in the box, never with Yes and No."""
    templates = Templates.load("default")
    ab = next(t for t in templates.pointwise if t["labels"] == ["A", "B"])
    yes_no = next(t for t in templates.pointwise if t["labels"] == ["Yes", "No"])
    source = PromptRecord(id="s", kind="solve", images=[], text="q", label="red", question="q", answer="red",
                          source_id="s")
    prompts = [pointwise_judge_sample(source, "blue", False, ab, "j1"),
               pointwise_judge_sample(source, "red", True, yes_no, "j2")]
    engine = ScoredReplies()
    p_ab, p_yes = verdict_probabilities(engine, prompts, ["It is blue. \\box{B}", "It is red. \\box{Yes}"])
    assert engine.asked == ["It is blue. \\box{A}", "It is blue. \\box{B}", "It is red. \\box{Yes}",
                            "It is red. \\box{No}"]
    assert p_ab == p_yes == pytest.approx(1 / (1 + math.exp(-1)))


def test_judge_command_writes_verdicts_and_probabilities(tiny_model_dir, tiny_data_dir, tmp_path):
    rows = [json.loads(line) for line in (tiny_data_dir / "eval.jsonl").read_text().splitlines()[:2]]
    shutil.copytree(tiny_data_dir / "images", tmp_path / "images")
    inputs = [{"image": rows[0]["image"], "question": rows[0]["question"], "answer": rows[0]["answer"]},
              {"image": rows[1]["image"], "question": rows[1]["question"], "answer_a": "1", "answer_b": "2"},
              {"images": [rows[0]["image"], rows[1]["image"]], "question": "Are the shapes in the two images the "
               "same colour? Answer yes or no.", "answer": "no"},  # two images asked about together
              {"video": "clip", "question": "Does the dot move left or right?", "answer": "left"}]  # frames
    (tmp_path / "clip").mkdir()
    for i, row in enumerate(rows * 2):
        shutil.copy(tmp_path / row["image"], tmp_path / "clip" / f"{i:02d}.png")
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in inputs) + "\n")
    result = CliRunner().invoke(app, ["judge", "--model", str(tiny_model_dir), str(tmp_path / "rows.jsonl"),
                                      "--out", str(tmp_path / "out.jsonl"), "--set", "rollout.max_new_tokens=8"])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [o["question"] for o in out] == [r["question"] for r in inputs]
    for o in out:
        assert set(o) >= {"verdict", "p_positive", "reply"}
        assert o["p_positive"] is None or 0 <= o["p_positive"] <= 1
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "missing.png", "question": "q", "answer": "a"}) + "\n")
    result = CliRunner().invoke(app, ["judge", "--model", str(tiny_model_dir), str(tmp_path / "bad.jsonl"),
                                      "--out", str(tmp_path / "never.jsonl")])
    assert result.exit_code == 2 and "bad.jsonl line 1" in result.output and "missing.png" in result.output
    assert not (tmp_path / "never.jsonl").exists()
    (tmp_path / "bad.jsonl").write_text(json.dumps({"images": "one.png", "question": "q", "answer": "a"}) + "\n")
    result = CliRunner().invoke(app, ["judge", "--model", str(tiny_model_dir), str(tmp_path / "bad.jsonl"),
                                      "--out", str(tmp_path / "never.jsonl")])
    assert result.exit_code == 2 and "images must be a list" in result.output
    (tmp_path / "bad.jsonl").write_text(json.dumps({"video": "gone", "question": "q", "answer": "a"}) + "\n")
    result = CliRunner().invoke(app, ["judge", "--model", str(tiny_model_dir), str(tmp_path / "bad.jsonl"),
                                      "--out", str(tmp_path / "never.jsonl")])
    assert result.exit_code == 2 and "bad.jsonl line 1: video" in result.output
    assert "gone does not exist" in result.output


def test_best_of_n_keeps_what_the_judge_rates_highest():
    from spark_vl.evaluate.core import pick_best

    assert pick_best([0.2, 0.9, 0.5]) == 1
    assert pick_best([0.7, 0.7, 0.1]) == 0  # ties: the first
    assert pick_best([None, 0.01, None]) == 1  # no verdict ranks last
    assert pick_best([None, None]) == 0


def test_eval_best_of_n_is_reported_and_bounded(tiny_model_dir, tiny_data_dir):
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--data", str(tiny_data_dir / "eval.jsonl"),
                                      "--best-of-n", "3", "--json", "--set", "eval.n_task=4", "--set", "eval.n_judge=2",
                                      "--set", "eval.reflect_rounds=1", "--set", "rollout.max_new_tokens=8"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output.strip().splitlines()[-1])
    assert 0 <= metrics["eval/task_acc_best_of_n"] <= 1 and 0 <= metrics["eval/task_acc_sampled"] <= 1
    assert 0 <= metrics["eval/task_acc_majority"] <= 1
    assert {"eval/judge_ece", "eval/judge_brier"} <= set(metrics)  # NaN here: a random model writes no verdict box


def test_judge_bench_on_preference_rows_in_the_vl_rewardbench_schema(tiny_model_dir, tiny_data_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (tiny_data_dir / "eval.jsonl").read_text().splitlines()[:4]]
    shutil.copytree(tiny_data_dir / "images", tmp_path / "images")
    bench = [{"id": f"p{i}", "query": r["question"], "image": r["image"],
              "response": [r["answer"], "none"] if i % 2 else ["none", r["answer"]],
              "human_ranking": [0, 1] if i % 2 else [1, 0]} for i, r in enumerate(rows)]
    (tmp_path / "bench.jsonl").write_text("\n".join(json.dumps(r) for r in bench) + "\n")
    with_bytes = [{**r, "image": {"bytes": (tmp_path / r["image"]).read_bytes(), "path": None}} for r in bench]
    pq.write_table(pa.Table.from_pylist(with_bytes), tmp_path / "bench.parquet")
    command = ["eval", "--model", str(tiny_model_dir), "--json", "--set", "rollout.max_new_tokens=8", "--judge-bench"]
    results = []
    for name in ("bench.jsonl", "bench.parquet"):
        result = CliRunner().invoke(app, command + [str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        results.append(json.loads(result.output.strip().splitlines()[-1]))
    assert results[0] == results[1]  # the same rows, images as files or as bytes
    assert results[0]["eval/judge_bench_pairs"] == 4.0
    assert 0 <= results[0]["eval/judge_bench_acc"] <= 1 and 0 <= results[0]["eval/judge_bench_acc_swapped"] <= 1
    (tmp_path / "tie.jsonl").write_text(json.dumps({**bench[0], "human_ranking": [0, 0]}) + "\n")
    result = CliRunner().invoke(app, command + [str(tmp_path / "tie.jsonl")])
    assert result.exit_code == 2 and "tie.jsonl row 0" in result.output and "lower is preferred" in result.output


def test_preference_labels_follow_the_people_in_both_orders():
    from spark_vl.data.preference import PreferencePair
    from spark_vl.evaluate.judge import preference_accuracy

    class Always:  # a judge that always answers A: right exactly where A is the preferred response
        def generate(self, prompts, n, greedy=False, seed=0):
            from spark_vl.records import RolloutGroup

            return [RolloutGroup(p, ["The image shows red. \\box{A}"], [[1]], [[0.0]]) for p in prompts]

    pairs = [PreferencePair("a", "/x.png", "q", ("good", "bad"), 0), PreferencePair("b", "/x.png", "q", ("bad", "good"), 1),
             PreferencePair("c", "/x.png", "q", ("good", "bad"), 0)]
    metrics = preference_accuracy(Always(), pairs, TEMPLATES)
    assert metrics == {"eval/judge_bench_acc": 2 / 3, "eval/judge_bench_acc_swapped": 1 / 3}
