"""How the vLLM server should see a LoRA policy: the merged weights reloaded (what a run does) or
the adapter served by vLLM's own LoRA support. Measured on the CPU server with the tiny model.

    .venv/bin/python bench/vllm_lora.py

One LoRA policy (rank 8, adapters perturbed so it differs from the base) is saved the way a run
saves it: the merged model, and the adapter in `adapter/`. Then, on one server each:
- merged: the server starts from the base, and `reload_weights` loads the merged policy;
- adapter: the server starts from the base with `--enable-lora` and loads the adapter at run
  time (`/v1/load_lora_adapter`); requests name the adapter.
For each: seconds to make the new policy servable, seconds for 16 prompts x 8 samples, and the
largest gap between the served log-probs and the adapted model's own (transformers, fp32).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from report import publish
from spark_vl.config import load_config
from spark_vl.data import load_dataset
from spark_vl.data.tasks import make_dataset
from spark_vl.prompts import solve_prompt
from spark_vl.models import build_tiny_model, load_processor, vision_token_ids
from spark_vl.models.inputs import conversation
from spark_vl.rollout.vllm import VLLMRolloutEngine
from spark_vl.rollout.vllm_server import VLLMServer
from spark_vl.models.forward import completion_batch, completion_logps
from spark_vl.train.trainer import PolicyTrainer

ROOT = Path(__file__).resolve().parent.parent


def gap(trainer: PolicyTrainer, processor, cfg, groups) -> float:
    flat = [(g, i) for g in groups for i in range(len(g.responses))]
    batch = completion_batch(processor, [conversation(g.prompt, cfg.model) for g, _ in flat],
                             [g.response_ids[i] for g, i in flat], torch.device("cpu"))
    with torch.no_grad():
        ours, _ = completion_logps(trainer.model, batch, cfg.rollout.temperature, suppress_ids=trainer.suppress)
    return max((ours[row, :len(g.logprobs[i])] - torch.tensor(g.logprobs[i])).abs().max().item()
               for row, (g, i) in enumerate(flat))


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = load_config(ROOT / "configs" / "tiny.yaml", [
            "rollout.engine=vllm", f"rollout.vllm.python={ROOT / '.venv-vllm' / 'bin' / 'python'}",
            "train.lora.rank=8", "train.lora.alpha=16", f"train.deepspeed_config={ROOT / 'configs/deepspeed/zero0.json'}"])
        base = build_tiny_model(cfg.model, tmp / "base")
        paths = make_dataset(tmp / "data", cfg.data.builtin.model_copy(update={"n_train": 16, "n_eval": 1}))
        prompts = [solve_prompt(s, cfg.data.instruction) for s in load_dataset(paths["train"], 10**8).samples]
        processor = load_processor(base, cfg.model.min_pixels, cfg.model.max_pixels)
        trainer = PolicyTrainer(cfg, processor, base, base)
        with torch.no_grad():
            for name, p in trainer.model.named_parameters():
                if "lora_B" in name:
                    p.add_(torch.randn_like(p) * 0.5)
        trainer.save(tmp / "policy")
        suppress = vision_token_ids(processor.tokenizer)
        rows = []
        for mode in ("merged", "adapter"):
            vllm = cfg.rollout.vllm
            args = list(vllm.args) + (["--enable-lora", "--max-lora-rank", "8", "--max-loras", "1"]
                                      if mode == "adapter" else [])
            env = {**vllm.env, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
            server_cfg = vllm.model_copy(update={"args": args, "env": env})
            server = VLLMServer(server_cfg, base, tmp / f"vllm-{mode}")
            try:
                start = time.perf_counter()
                server.start()
                startup = time.perf_counter() - start
                start = time.perf_counter()
                if mode == "merged":
                    server.load_weights(tmp / "policy")
                else:
                    server.post("/v1/load_lora_adapter", {"lora_name": "adapter",
                                                          "lora_path": str(tmp / "policy" / "adapter")})
                    server.config = server_cfg.model_copy(update={"served_model_name": "adapter"})  # requests name it
                swap = time.perf_counter() - start
                engine = VLLMRolloutEngine(server, cfg.rollout, cfg.model, suppress, image_patch_size=14,
                                           show_progress=False)
                start = time.perf_counter()
                groups = engine.generate(prompts, 8)
                sample = time.perf_counter() - start
                rows.append((mode, f"{startup:.1f}", f"{swap:.2f}", f"{sample:.2f}", f"{gap(trainer, processor, cfg, groups):.2e}"))
            except Exception as exc:  # a mode the CPU build cannot serve is a result too
                rows.append((mode, "-", "-", "-", f"failed: {type(exc).__name__}: {str(exc)[:200]}"))
            finally:
                server.close()
        lines = ["# The vLLM server and a LoRA policy (CPU, tiny model)", "",
                 "| how | server start (s) | new policy servable (s) | 16 prompts x 8 samples (s) | "
                 "largest log-prob gap to the adapted model |", "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", "Command: `.venv/bin/python bench/vllm_lora.py`"]
        publish("vllm_lora", "\n".join(lines))
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
