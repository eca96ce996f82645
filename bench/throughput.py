"""One RL iteration of the same work in spark-vl and in TRL's GRPOTrainer, side by side.

    .venv/bin/pip install -e '.[bench]'    # TRL
    .venv/bin/python bench/throughput.py [--repeats 5]

The work: the warm-started tiny model of configs/tiny.yaml, the same 16 prompts with their
images, n = 8 samples each, up to 24 new tokens, temperature 1, one optimizer step (AdamW, same
learning rate, KL coefficient 1e-3 to the same reference, clip 0.2), plain GRPO (SPARK's
recycling off, which TRL does not have). Each measurement runs in a fresh child process (one
torch thread), alternating spark-vl and TRL; it times the second iteration of the process
(steady state: models built, grading pool up) and reports its own peak resident memory.
spark-vl's iteration is its rollout, verify and train stages (train includes saving the
policy and the DeepSpeed state, which TRL does not do per step). The table is printed and
written to bench/results/throughput.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from report import publish

ROOT = Path(__file__).resolve().parent.parent
PROMPTS, GROUP, NEW_TOKENS = 16, 8, 24
OVERRIDES = ["spark.enabled=false", f"rollout.prompts_per_batch={PROMPTS}", f"rollout.group_size={GROUP}",
             f"rollout.max_new_tokens={NEW_TOKENS}", "rollout.temperature=1.0", "train.micro_batch_size=32"]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prepare(work: Path) -> Path:
    """The warm-started tiny model and the built-in data, shared by both frameworks."""
    from spark_vl import pipeline
    from spark_vl.config import load_config

    base = work / "base"
    pipeline.prepare_run(load_config(ROOT / "configs" / "tiny.yaml", OVERRIDES), base)
    return base


def iteration_prompts(base: Path, k: int):
    """The task prompts spark-vl draws for iteration k: TRL gets the same ones."""
    from spark_vl import layout, pipeline, workspace
    from spark_vl.config import load_config
    from spark_vl.records import load_prompts

    ws = workspace.Workspace(load_config(base / "config.yaml"), base)
    pipeline.stage_prompts(ws, k)
    return load_prompts(layout.iter_dir(base, k) / "prompts.jsonl", base)


def child_spark(base: Path, work: Path) -> dict:
    from spark_vl import pipeline, workspace
    from spark_vl.config import load_config

    run_dir = work / "spark"
    shutil.copytree(base, run_dir)
    ws = workspace.Workspace(load_config(run_dir / "config.yaml"), run_dir)
    # Set up outside the timing: the trainer and the grading pool persist in a run.
    ws.trainer_at(0)
    ws.pool.start()
    seconds = []
    for k in (1, 2):
        pipeline.stage_prompts(ws, k)
        start = time.perf_counter()
        for stage in (pipeline.stage_rollout, pipeline.stage_verify, pipeline.stage_train):
            stage(ws, k)
        seconds.append(time.perf_counter() - start)
    ws.close()
    return {"seconds": seconds[-1], "samples": PROMPTS * GROUP}


def child_trl(base: Path, work: Path) -> dict:
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from spark_vl.config import load_config
    from spark_vl.models import load_model, load_processor, vision_token_ids
    from spark_vl.verify import task_reward

    cfg = load_config(base / "config.yaml")
    prompts = iteration_prompts(base, 1) + iteration_prompts(base, 2)
    rows = {"prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p.text}]}]
                       for p in prompts],
            "image": [Image.open(p.images[0]).convert("RGB") for p in prompts],
            "answer": [p.label for p in prompts]}

    def boxed_answer_reward(completions, answer, **_):
        return [task_reward(c[0]["content"], a) for c, a in zip(completions, answer)]

    processor = load_processor(base / "model" / "policy-0000", cfg.model.min_pixels, cfg.model.max_pixels)
    args = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, bf16=False, max_steps=2, num_generations=GROUP,
        per_device_train_batch_size=32, gradient_accumulation_steps=PROMPTS * GROUP // 32,
        max_completion_length=NEW_TOKENS, temperature=1.0, top_k=0, top_p=1.0, beta=cfg.train.kl_coef,
        epsilon=cfg.train.clip_eps, learning_rate=cfg.train.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=cfg.train.max_grad_norm, loss_type="dapo", shuffle_dataset=False,
        save_strategy="no", report_to="none", logging_steps=1, disable_tqdm=True, seed=0, gradient_checkpointing=False,
        generation_kwargs={"suppress_tokens": vision_token_ids(processor.tokenizer)},
    )
    trainer = GRPOTrainer(model=load_model(base / "model" / "policy-0000", "float32"),
                          reward_funcs=boxed_answer_reward, args=args, train_dataset=Dataset.from_dict(rows),
                          processing_class=processor)
    steps: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            steps.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            steps[-1] = time.perf_counter() - steps[-1]

    trainer.add_callback(StepTimer())
    trainer.train()
    return {"seconds": steps[-1], "samples": PROMPTS * GROUP}


def run_child(framework: str, base: Path) -> dict:
    from spark_vl.train.launch import environment_without_launcher

    env = environment_without_launcher() | {"OMP_NUM_THREADS": "1"}  # the warm-up's engine holds its port
    out = subprocess.run([sys.executable, __file__, "--child", framework, "--base", str(base)], env=env,
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} measurement failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=["spark-vl", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.child:
        work = Path(tempfile.mkdtemp(prefix=f"bench-{args.child}-"))
        result = (child_spark if args.child == "spark-vl" else child_trl)(args.base, work)
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb()}))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    base = prepare(work)
    results: dict[str, list[dict]] = {"spark-vl": [], "trl": []}
    for rep in range(args.repeats):
        for framework in ("spark-vl", "trl") if rep % 2 == 0 else ("trl", "spark-vl"):
            results[framework].append(run_child(framework, base))
            print(framework, results[framework][-1], flush=True)
    rate = {f: statistics.median(m["samples"] / m["seconds"] for m in ms) for f, ms in results.items()}
    memory = {f: max(m["peak_rss_mb"] for m in ms) for f, ms in results.items()}
    import trl

    lines = [f"# One GRPO iteration: spark-vl against TRL {trl.__version__} ({date.today()}, {platform.machine()}, "
             "1 torch thread per process)", "",
             f"{PROMPTS} prompts x n={GROUP}, up to {NEW_TOKENS} new tokens, one optimizer step; "
             f"median of {args.repeats} alternated repetitions, each in a fresh process.", "",
             "| framework | samples/s (median) | all repetitions (s per iteration) | peak RSS (MB) |", "|---|---|---|---|"]
    for framework, measurements in results.items():
        times = ", ".join(f"{m['seconds']:.2f}" for m in measurements)
        lines.append(f"| {framework} | {rate[framework]:.1f} | {times} | {memory[framework]:.0f} |")
    lines += ["", f"spark-vl / TRL throughput: **{rate['spark-vl'] / rate['trl']:.2f}x**.", "",
              "Command: `.venv/bin/python bench/throughput.py" + (f" --repeats {args.repeats}" if args.repeats != 5
                                                                 else "") + "`"]
    publish("throughput", "\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
