"""LoRA against full fine-tuning on the same GRPO step: trainable parameters, optimizer state,
peak memory, measured on the tiny model, and the same accounting for Qwen2.5-VL-7B from its
published dimensions.

    .venv/bin/python bench/lora_memory.py [--ranks 8 64]

Each measured case runs in a fresh process (peak RSS is per process): build the trainer, sample
16 prompts x 8 responses with the policy, one GRPO step. The 7B table is arithmetic, not a
measurement: bf16 weights (2 bytes), bf16 gradients for what trains (2), and DeepSpeed's fp32
master copy plus Adam's two moments for what trains (12); the full fine-tune also holds a frozen
bf16 reference model for the KL term, LoRA does not (the base with adapters disabled is the
reference). Activations and vLLM's share come on top of both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

from report import publish

ROOT = Path(__file__).resolve().parent.parent

# Qwen2.5-VL-7B-Instruct's config.json: text model and total parameter count.
QWEN_7B = {"hidden": 3584, "intermediate": 18944, "layers": 28, "heads": 28, "kv_heads": 4, "total": 8_292_166_656}


def lora_parameters(rank: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, **_) -> int:
    """Adapter parameters on q, k, v, o, gate, up and down of every layer: rank x (in + out) each."""
    kv = hidden // heads * kv_heads
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
              (hidden, intermediate), (hidden, intermediate), (intermediate, hidden)]
    return layers * sum(rank * (n_in + n_out) for n_in, n_out in shapes)


def estimate_7b(ranks: list[int]) -> list[str]:
    total = QWEN_7B["total"]
    rows = [("full fine-tuning", total, total * 2 + total * 16)]
    rows += [(f"LoRA rank {r}", lora_parameters(r, **QWEN_7B), total * 2 + lora_parameters(r, **QWEN_7B) * 16)
             for r in ranks]
    lines = ["| Qwen2.5-VL-7B | trainable parameters | weights, gradients, optimizer (+ reference) |", "|---|---|---|"]
    lines += [f"| {name} | {n / 1e6:,.1f} M | {b / 2**30:,.1f} GiB |" for name, n, b in rows]
    return lines


def measure(rank: int) -> dict:
    """One GRPO step in this process; rank 0 is full fine-tuning."""
    import torch

    torch.set_num_threads(1)
    from spark_vl.config import load_config
    from spark_vl.data import load_dataset
    from spark_vl.data.tasks import make_dataset
    from spark_vl.prompts import solve_prompt
    from spark_vl.models import build_tiny_model, load_processor
    from spark_vl.rollout.hf import HFRolloutEngine
    from spark_vl.train.trainer import PolicyTrainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"train.lora.rank={rank}", f"train.lora.alpha={2 * rank}"]
                          if rank else [])
        model_dir = build_tiny_model(cfg.model, Path(tmp) / "model")
        paths = make_dataset(Path(tmp) / "data", cfg.data.builtin.model_copy(update={"n_train": 16, "n_eval": 1}))
        samples = load_dataset(paths["train"], cfg.data.max_image_pixels).samples
        processor = load_processor(model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
        trainer = PolicyTrainer(cfg, processor, model_dir, model_dir)
        engine = HFRolloutEngine(trainer.model, processor, cfg.rollout, cfg.model, show_progress=False)
        groups = engine.generate([solve_prompt(s, cfg.data.instruction) for s in samples], 8, seed=0)
        for g in groups:
            g.rewards = [float(i % 2) for i in range(len(g.responses))]
        trainer.grpo_step(groups)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        optimizer_bytes = sum(t.numel() * t.element_size() for state in trainer.engine.optimizer.state.values()
                              for t in state.values() if torch.is_tensor(t))
        reference = sum(p.numel() for p in trainer.reference.parameters()) if trainer.reference is not None else 0
    return {"rank": rank, "trainable": trainable, "total": sum(p.numel() for p in trainer.model.parameters()),
            "optimizer_bytes": optimizer_bytes, "reference_parameters": reference,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", nargs="+", type=int, default=[8, 64])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a measured case, in its own process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one)))
        return
    results = []
    for rank in [0, *args.ranks]:
        out = subprocess.run([sys.executable, __file__, "--one", str(rank)], check=True, capture_output=True, text=True,
                             cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = [f"# LoRA against full fine-tuning ({date.today()})", "",
             "One GRPO step of the tiny model (`configs/tiny.yaml`, 16 prompts x 8 responses, fp32, DeepSpeed ZeRO-0 "
             "on the CPU), each case in a fresh process:", "",
             "| case | trainable parameters | of all | optimizer state | reference model | peak RSS |",
             "|---|---|---|---|---|---|"]
    for r in results:
        name = f"LoRA rank {r['rank']}" if r["rank"] else "full fine-tuning"
        lines.append(f"| {name} | {r['trainable']:,} | {r['trainable'] / r['total']:.1%} | "
                     f"{r['optimizer_bytes'] / 2**20:.2f} MiB | {r['reference_parameters']:,} parameters | "
                     f"{r['peak_rss_mb']:.0f} MB |")
    lines += ["", "Qwen2.5-VL-7B by the same accounting (bf16 weights; bf16 gradients and fp32 master weights and "
              "Adam moments for what trains, 16 bytes per trainable parameter; full fine-tuning adds a bf16 "
              "reference copy), not measured here:", "", *estimate_7b(args.ranks), "",
              f"Command: `.venv/bin/python bench/lora_memory.py --ranks {' '.join(map(str, args.ranks))}`"]
    publish("lora_memory", "\n".join(lines))


if __name__ == "__main__":
    main()
