"""One RL iteration of the same work in spark-vl and in TRL's GRPOTrainer, side by side.

    .venv/bin/pip install -e '.[bench]'    # TRL
    .venv/bin/python bench/throughput.py [--repeats 5]

The work: the warm-started tiny model of configs/tiny.yaml, the same 16 prompts with their
images, n = 8 samples each, up to 24 new tokens, temperature 1, one optimizer step (AdamW, same
learning rate, KL coefficient 1e-3 to the same reference, clip 0.2), plain GRPO (SPARK's
recycling off, which TRL does not have; the SPARK arm, spark-vl alone, adds the judge and
reflection prompts recycled from the iteration before, and counts their samples too). Each
measurement runs in a fresh child process, alternating the arms; it times iterations 2 to 4 of
the process (steady state: models built, grading pool up; the mean of the three), the stage
timers of its training steps and rollouts (overlapped: the rollouts sampled beside them), and its
own peak resident memory. spark-vl's iteration is its rollout, verify and train stages (train
includes saving the policy and the DeepSpeed state, which TRL does not do per step). The
overlapped arm (`rollout.overlap`) times whole iterations (`pipeline.run_iteration`: verify,
then the next rollouts in the run's second process beside train); it keeps two processes of one
thread busy, so it is compared with both frameworks on two threads too. The table is printed
and written to bench/results/throughput.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
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
TIMED = (2, 3, 4)  # the iterations timed, after one that sets up
ARMS = [("spark-vl", 1), ("spark-vl-overlap", 1), ("trl", 1), ("spark-vl", 2), ("trl", 2),  # (framework, threads)
        ("spark-vl-spark", 1)]
TITLES = {"spark-vl": "spark-vl", "spark-vl-overlap": "spark-vl, overlapped (2 processes)", "trl": "TRL",
          "spark-vl-spark": "spark-vl, SPARK (recycled judge and reflection prompts on top)"}
OVERRIDES = ["spark.enabled=false", f"rollout.prompts_per_batch={PROMPTS}", f"rollout.group_size={GROUP}",
             f"rollout.max_new_tokens={NEW_TOKENS}", "rollout.temperature=1.0", "train.micro_batch_size=32"]


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


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


def stage_seconds(run_dir: Path, train: tuple[int, ...], rollout: tuple[int, ...]) -> dict:
    """The mean stage timers of the timed iterations: their training steps, and the rollouts sampled
    meanwhile (the same iterations', or the next ones' when they overlap), with the responses and
    tokens those rollouts sampled."""
    from spark_vl import layout
    from spark_vl.records import load_groups

    def mean(name: str, ks: tuple[int, ...]) -> float:
        return statistics.mean(layout.read_json(layout.iter_dir(run_dir, k) / f"{name}.json")[f"time/{name}_s"]
                               for k in ks)

    sampled = [[ids for g in load_groups(layout.iter_dir(run_dir, k) / "rollouts.jsonl", run_dir)
                 for ids in g.response_ids] for k in rollout]
    return {"train_s": mean("train", train), "rollout_s": mean("rollout", rollout),
            "samples": statistics.mean(len(responses) for responses in sampled),
            "tokens": statistics.mean(sum(map(len, responses)) for responses in sampled)}


def open_run(base: Path, work: Path, overrides: list[str], prompts_made: bool = True):
    """A copy of the prepared run with `overrides`, its trainer and grading pool up (set-up outside
    the timing: both persist in a run). `prompts_made=False` leaves out the iterations' task prompts
    made for TRL, so that recycled prompts join them."""
    from spark_vl import workspace
    from spark_vl.config import load_config, save_config

    run_dir = work / "spark"
    shutil.copytree(base, run_dir, ignore=None if prompts_made else shutil.ignore_patterns("iter-*"))
    cfg = load_config(run_dir / "config.yaml", overrides)
    save_config(cfg, run_dir / "config.yaml")
    ws = workspace.Workspace(cfg, run_dir)
    ws.trainer_at(0)
    ws.pool.start()
    return cfg, run_dir, ws


def child_spark(base: Path, work: Path, overrides: tuple[str, ...] = ()) -> dict:
    from spark_vl import pipeline

    _, run_dir, ws = open_run(base, work, list(overrides), prompts_made=False)
    seconds = []
    for k in (1, *TIMED):
        pipeline.stage_prompts(ws, k)
        start = time.perf_counter()
        for stage in (pipeline.stage_rollout, pipeline.stage_verify, pipeline.stage_recycle, pipeline.stage_train):
            stage(ws, k)
        seconds.append(time.perf_counter() - start)
    ws.close()
    return {"seconds": statistics.mean(seconds[1:]), **stage_seconds(run_dir, TIMED, TIMED)}


def child_spark_overlap(base: Path, work: Path) -> dict:
    """Iteration 1 sets up (its rollouts sample before training, the next ones beside it)."""
    from spark_vl import pipeline

    cfg, run_dir, ws = open_run(base, work, ["rollout.overlap=true", f"train.iterations={TIMED[-1] + 1}",
                                             "eval.every=100"])
    pipeline.run_iteration(cfg, run_dir, 1, ws)
    start = time.perf_counter()
    for k in TIMED:
        pipeline.run_iteration(cfg, run_dir, k, ws)
    seconds = (time.perf_counter() - start) / len(TIMED)
    ws.close()
    return {"seconds": seconds, **stage_seconds(run_dir, TIMED, tuple(k + 1 for k in TIMED))}


def child_trl(base: Path, work: Path) -> dict:
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from spark_vl.config import load_config
    from spark_vl.models import load_model, load_processor, vision_token_ids
    from spark_vl.verify import task_reward

    cfg = load_config(base / "config.yaml")
    prompts = [p for k in (1, *TIMED) for p in iteration_prompts(base, k)]
    rows = {"prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p.text}]}]
                       for p in prompts],
            "image": [Image.open(p.images[0]).convert("RGB") for p in prompts],
            "answer": [p.label for p in prompts]}

    def boxed_answer_reward(completions, answer, **_):
        return [task_reward(c[0]["content"], a) for c, a in zip(completions, answer)]

    processor = load_processor(base / "model" / "policy-0000", cfg.model.min_pixels, cfg.model.max_pixels)
    args = GRPOConfig(
        output_dir=str(work / "trl"), use_cpu=True, bf16=False, max_steps=1 + len(TIMED), num_generations=GROUP,
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
    lengths = [entry["completions/mean_length"] for entry in trainer.state.log_history
               if "completions/mean_length" in entry]
    return {"seconds": statistics.mean(steps[1:]), "samples": PROMPTS * GROUP,
            "tokens": statistics.mean(lengths[1:]) * PROMPTS * GROUP}


CHILDREN = {"spark-vl": child_spark, "spark-vl-overlap": child_spark_overlap, "trl": child_trl,
            "spark-vl-spark": functools.partial(child_spark, overrides=("spark.enabled=true",))}


def run_child(framework: str, threads: int, base: Path) -> dict:
    from spark_vl.train.launch import environment_without_launcher

    env = environment_without_launcher() | {"OMP_NUM_THREADS": str(threads)}  # the warm-up's engine holds its port
    out = subprocess.run([sys.executable, __file__, "--child", framework, "--threads", str(threads), "--base",
                          str(base)], env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{framework} measurement failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        work = Path(tempfile.mkdtemp(prefix=f"bench-{args.child}-"))
        result = CHILDREN[args.child](args.base, work)
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps({**result, "peak_rss_mb": peak_rss_mb(),
                          "child_peak_rss_mb": peak_rss_mb(resource.RUSAGE_CHILDREN)}))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    base = prepare(work)
    results: dict[tuple[str, int], list[dict]] = {arm: [] for arm in ARMS}
    for rep in range(args.repeats):
        for arm in ARMS if rep % 2 == 0 else ARMS[::-1]:
            results[arm].append(run_child(*arm, base))
            print(arm, results[arm][-1], flush=True)
    rate = {arm: statistics.median(m["samples"] / m["seconds"] for m in ms) for arm, ms in results.items()}
    token_rate = {arm: statistics.median(m["tokens"] / m["seconds"] for m in ms) for arm, ms in results.items()}
    memory = {arm: max(m["peak_rss_mb"] for m in ms) for arm, ms in results.items()}
    child_memory = {arm: max(m["child_peak_rss_mb"] for m in ms) for arm, ms in results.items()}
    import trl

    lines = [f"# One GRPO iteration: spark-vl against TRL {trl.__version__} ({date.today()}, {platform.machine()}, "
             f"{os.cpu_count()} cores)", "",
             f"{PROMPTS} prompts x n={GROUP}, up to {NEW_TOKENS} new tokens, one optimizer step per iteration; "
             f"seconds per iteration: the mean of iterations {TIMED[0]}-{TIMED[-1]} of a process; median of "
             f"{args.repeats} alternated repetitions, each in a fresh process.", "",
             "| framework | torch threads per process | samples/s (median) | sampled tokens/s (median) | all "
             "repetitions (s per iteration) | train step (s, median) | rollout (s, median) | peak RSS (MB) | largest "
             "child process's peak RSS (MB) |", "|---|---|---|---|---|---|---|---|---|"]
    for (framework, threads), measurements in results.items():
        times = ", ".join(f"{m['seconds']:.2f}" for m in measurements)
        stages = [f"{statistics.median(m[key] for m in measurements):.2f}" if key in measurements[0] else "n/a"
                  for key in ("train_s", "rollout_s")]
        lines.append(f"| {TITLES[framework]} | {threads} | {rate[framework, threads]:.1f} | "
                     f"{token_rate[framework, threads]:.0f} | {times} | "
                     f"{' | '.join(stages)} | {memory[framework, threads]:.0f} | "
                     f"{child_memory[framework, threads]:.0f} |")
    trl1, trl2 = rate["trl", 1], rate["trl", 2]
    lines += ["", f"spark-vl / TRL throughput, one thread each: **{rate['spark-vl', 1] / trl1:.2f}x**; "
              f"overlapped spark-vl (two processes of one thread) / TRL on one thread: "
              f"**{rate['spark-vl-overlap', 1] / trl1:.2f}x**, / TRL on two threads (the same two cores): "
              f"**{rate['spark-vl-overlap', 1] / trl2:.2f}x**; spark-vl / TRL, two threads each: "
              f"{rate['spark-vl', 2] / trl2:.2f}x. SPARK's iteration samples "
              f"{statistics.median(m['samples'] for m in results['spark-vl-spark', 1]):.0f} responses (task prompts "
              f"and recycled ones), {rate['spark-vl-spark', 1]:.1f} per second.",
              "", f"Issue #28 asks for 2.5x on one thread each: short by {2.5 - rate['spark-vl', 1] / trl1:.2f}x. Of a "
              f"synchronous iteration's {statistics.median(m['seconds'] for m in results['spark-vl', 1]):.2f} s, the "
              f"training step is {statistics.median(m['train_s'] for m in results['spark-vl', 1]):.2f} s and the "
              f"rollout {statistics.median(m['rollout_s'] for m in results['spark-vl', 1]):.2f} s; the rest is "
              "verification and bookkeeping.", "",
              "Command: `.venv/bin/python bench/throughput.py" + (f" --repeats {args.repeats}" if args.repeats != 5
                                                                 else "") + "`"]
    publish("throughput", "\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
