"""What a video prompt costs beside an image prompt: the same iteration on each, side by side.

    .venv/bin/python bench/video_cost.py [--repeats 3]

The work: the tiny model of configs/tiny.yaml (no warm-up: speed, not skill, is measured), 8
prompts x n = 4 samples, up to 16 new tokens, one optimizer step of plain GRPO (recycling off, so
both arms train on the same number of sequences; a reward that pays responses of odd length gives
every group a signal, so every sequence trains, as the untrained model answers nothing right). The image arm asks `position` questions (one
112x112 image), the video arm `motion` questions (a clip of four 112x112 frames, the default frame
budget `model.video`). Each measurement runs in a fresh child process (one torch thread),
alternating the arms, and times the rollout and train stages of its second iteration; it also
reports the vision tokens of one prompt and the process's peak resident memory. The table is
printed and written to bench/results/video_cost.md.
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
PROMPTS, GROUP, NEW_TOKENS = 8, 4, 16
ARMS = {"image": "position", "video": "motion"}
OVERRIDES = ["spark.enabled=false", "train.warmup.enabled=false", f"rollout.prompts_per_batch={PROMPTS}",
             f"rollout.group_size={GROUP}", f"rollout.max_new_tokens={NEW_TOKENS}", "train.micro_batch_size=16",
             "data.builtin.n_train=64", "data.builtin.n_eval=8"]


def prepare(work: Path, arm: str) -> Path:
    from spark_vl import pipeline
    from spark_vl.config import load_config

    (work / "parity.py").write_text("def parity(response, answer, prompt):\n    return float(len(response) % 2)\n")
    base = work / arm
    pipeline.prepare_run(load_config(ROOT / "configs" / "tiny.yaml", OVERRIDES + [
        f"data.builtin.families=[{ARMS[arm]}]", f"reward.function={work / 'parity.py'}:parity"]), base)
    return base


def child(base: Path, work: Path) -> dict:
    from spark_vl import layout, pipeline, workspace
    from spark_vl.config import load_config
    from spark_vl.models.inputs import conversation, encode_prompts
    from spark_vl.records import load_prompts

    run_dir = work / "run"
    shutil.copytree(base, run_dir)
    ws = workspace.Workspace(load_config(run_dir / "config.yaml"), run_dir)
    ws.trainer_at(0)  # set up outside the timing: the trainer and the grading pool persist in a run
    ws.pool.start()
    timings = {}
    for k in (1, 2):
        pipeline.stage_prompts(ws, k)
        timings = {}
        for name, stage in (("rollout", pipeline.stage_rollout), ("verify", pipeline.stage_verify),
                            ("train", pipeline.stage_train)):
            start = time.perf_counter()
            stage(ws, k)
            timings[name] = time.perf_counter() - start
    trained = json.loads((layout.iter_dir(run_dir, 2) / "train.json").read_text())["train/sequences"]
    prompt = load_prompts(layout.iter_dir(run_dir, 2) / "prompts.jsonl", run_dir)[0]
    processor = ws.processor
    ids = encode_prompts(processor, [conversation(prompt, ws.config.model)])["input_ids"][0].tolist()
    pads = {processor.tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>")}
    ws.close()
    return {**timings, "trained": trained, "vision_tokens": sum(i in pads for i in ids), "prompt_tokens": len(ids)}


def run_child(base: Path) -> dict:
    from spark_vl.train.launch import environment_without_launcher

    env = environment_without_launcher() | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", str(base)], env=env, capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"measurement of {base.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.child:
        work = Path(tempfile.mkdtemp(prefix="bench-video-child-"))
        result = child(args.child, work)
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps({**result, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-video-"))
    bases = {arm: prepare(work, arm) for arm in ARMS}
    results: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for rep in range(args.repeats):
        for arm in list(ARMS) if rep % 2 == 0 else list(ARMS)[::-1]:
            results[arm].append(run_child(bases[arm]))
            print(arm, results[arm][-1], flush=True)
    median = {arm: {key: statistics.median(m[key] for m in ms) for key in ("rollout", "train")}
              for arm, ms in results.items()}
    samples = PROMPTS * GROUP
    lines = [f"# A video prompt beside an image prompt ({date.today()}, {platform.machine()}, 1 torch thread per "
             "process)", "",
             f"The tiny model, {PROMPTS} prompts x n={GROUP}, up to {NEW_TOKENS} new tokens, one optimizer step of "
             f"plain GRPO; image: `position` (one 112x112 image), video: `motion` (four 112x112 frames, "
             f"`model.video` defaults). Median of {args.repeats} alternated repetitions, each in a fresh process.", "",
             "| prompt | vision tokens | prompt tokens | sequences trained | rollout s (samples/s) | "
             "train s (samples/s) | peak RSS (MB) | all repetitions: rollout / train s |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, ms in results.items():
        runs = ", ".join(f"{m['rollout']:.2f} / {m['train']:.2f}" for m in ms)
        lines.append(f"| {arm} | {ms[0]['vision_tokens']} | {ms[0]['prompt_tokens']} | {ms[0]['trained']:.0f} | "
                     f"{median[arm]['rollout']:.2f} ({samples / median[arm]['rollout']:.1f}) | "
                     f"{median[arm]['train']:.2f} ({samples / median[arm]['train']:.1f}) | "
                     f"{max(m['peak_rss_mb'] for m in ms):.0f} | {runs} |")
    ratio = {key: median["video"][key] / median["image"][key] for key in ("rollout", "train")}
    lines += ["", f"Video / image time: rollout **{ratio['rollout']:.2f}x**, train **{ratio['train']:.2f}x**.", "",
              f"Command: `.venv/bin/python bench/video_cost.py --repeats {args.repeats}`"]
    publish("video_cost", "\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
