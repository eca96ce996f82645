"""GPU check: a 2-iteration SPARK run of a random-initialised Qwen2.5-VL of about 2 B parameters
on one CUDA device, bf16, DeepSpeed, transformers rollouts, task responses rewarded by a coin
(`coin_reward`: a random model earns nothing). Prints step time, tokens per second, an MFU estimate
and peak memory. Runs without Prefect and MLflow (the lent machine has neither).

    bash bench/gpu_check.sh            # on the GPU machine (installs the carried wheels first)
    python bench/gpu_check.py --smoke  # the same path with a tiny model, on any machine
    bash bench/gpu_check.sh --set train.tis_imp_ratio_cap=2 --set train.max_tokens_per_micro_batch=16384 \
        --set train.adv_estimator=rloo --set train.kl_loss_type=k1
                                       # the training options of issue #28 on CUDA (bf16, all-reduce on device)
    bash bench/gpu_check.sh --set rollout.overlap=true --set train.iterations=3
                                       # overlapped rollouts: a second process samples on the same device
    bash bench/gpu_check.sh --set train.padding_free=true
                                       # packed training batches (train_step_s against the plain check)

MFU counts 6 N FLOPs per trained token for the policy's forward and backward plus 2 N for the
reference model's forward (N: parameters), against the device's dense bf16 peak (--peak-tflops,
989 for H100/H200 SXM).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from spark_vl import pipeline, workspace
from spark_vl.config import load_config

ROOT = Path(__file__).resolve().parent.parent
# Qwen2-1.5B text shape with the Qwen2.5-VL vision tower: about 2 B parameters.
TWO_B = ["model.tiny.hidden_size=1536", "model.tiny.num_layers=28", "model.tiny.num_heads=12",
         "model.tiny.num_kv_heads=2", "model.tiny.intermediate_size=8960", "model.tiny.vision_hidden_size=1280",
         "model.tiny.vision_depth=32", "model.tiny.vision_heads=16", "model.dtype=bfloat16",
         "rollout.prompts_per_batch=32", "rollout.max_new_tokens=128", "train.micro_batch_size=16",
         "train.gradient_checkpointing=true", "train.deepspeed_config=configs/deepspeed/zero2.json"]
SMOKE = ["rollout.prompts_per_batch=4", "rollout.max_new_tokens=8", "train.micro_batch_size=8"]
COMMON = ["train.iterations=2", "train.warmup.enabled=false", "eval.every=2", "eval.n_task=32", "eval.n_judge=32",
          "eval.reflect_rounds=1", "data.builtin.n_train=256", "data.builtin.n_eval=64", "data.builtin.image_size=224",
          "model.min_pixels=50176", "model.max_pixels=50176", "rollout.group_size=8", "rollout.temperature=1.0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model: check the path, not the speed")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a config override after the check's own, e.g. --set train.tis_imp_ratio_cap=2 "
                        "(repeatable; the docstring shows the training options of issue #28 at once)")
    args = parser.parse_args()
    coin = f"reward.function={Path(__file__).resolve()}:coin_reward"
    config = load_config(ROOT / "configs" / "tiny.yaml", COMMON + (SMOKE if args.smoke else TWO_B) + [coin]
                         + args.overrides)
    if args.overrides:
        print(f"overrides: {' '.join(args.overrides)}")
    cuda = torch.cuda.is_available()
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; torch {torch.__version__}")
    run_dir = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "run"
    start = time.perf_counter()
    pipeline.prepare_run(config, run_dir)
    from safetensors import safe_open

    with safe_open(str(run_dir / "model" / "policy-0000" / "model.safetensors"), "pt") as weights:
        n_params = sum(_numel(weights.get_slice(name).get_shape()) for name in weights.keys())
    print(f"model: {n_params / 1e6:,.1f} M parameters, built in {time.perf_counter() - start:.0f} s")
    rows = run_iterations(config, run_dir)
    if config.rollout.overlap:
        print("overlapped: the rollouts of iteration k+1 sampled beside training k (time/rollout_s is theirs); "
              "an iteration's wall time is in iteration_s")
    for row in rows:
        train_s, tokens = row["time/train_s"], row.get("train/tokens", 0.0)
        flops = 8 * n_params * tokens
        print(json.dumps({
            "iteration": row["iteration"],
            "iteration_s": round(row["iteration_s"], 2),
            "rollout_s": round(row["time/rollout_s"], 2),
            "rollout_tokens_per_s": round(row["throughput/rollout_tokens_per_s"], 1),
            "train_step_s": round(train_s, 2),
            "train_tokens": int(tokens),
            "train_tokens_per_s": round(tokens / train_s, 1),
            "mfu_estimate": round(flops / train_s / (args.peak_tflops * 1e12), 4) if cuda else None,
            "reward_mean": round(row["rollout/reward_mean"], 3),
        }))
    if cuda:
        print(f"peak memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB "
              f"(reserved {torch.cuda.max_memory_reserved() / 2**30:.1f} GiB)")
    print(f"total wall time: {time.perf_counter() - start:.0f} s; run directory: {run_dir}")


def coin_reward(response: str, answer: str, prompt: dict) -> float:
    """A random model earns no reward: the parity of a response's length stands in for it, so
    nearly every group has both rewards and trains, as in a real run."""
    return float(len(response) % 2)


def run_iterations(config, run_dir: Path) -> list[dict]:
    """The run's iterations (`pipeline.run_iteration`, overlapped under `rollout.overlap`); each
    row gets its wall time as `iteration_s`."""
    ws = workspace.Workspace(config, run_dir)
    rows = []
    try:
        for k in range(1, config.train.iterations + 1):
            start = time.perf_counter()
            row = pipeline.run_iteration(config, run_dir, k, ws)
            rows.append({**row, "iteration_s": time.perf_counter() - start})
    finally:
        ws.close()
    return rows


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


if __name__ == "__main__":
    main()
