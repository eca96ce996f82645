"""Can this model learn the judge at all? A supervised upper bound with TRUE verdicts.

    .venv/bin/python bench/judge_probe.py [--config configs/tiny-judge.yaml] [--steps 300] [--set KEY=VALUE ...]
    .venv/bin/python bench/judge_probe.py --samples runs/NAME/iter-0200/eval_samples.jsonl

Builds the config's tiny model and trains it supervised, like the warm-up, but with the right
verdict in every judge reply (half of each batch task prompts answered in a box, half pointwise
judge prompts in the restate-then-verdict reply of the config's templates, proposed answers
correct or wrong with equal odds). Then it evaluates held-out pointwise judge accuracy, broken
down by how the two restated answers are tokenised: if the model cannot reach a judge accuracy
here, with the answer given, reinforcement learning from its own rollouts will not either.
With --samples it trains nothing and breaks down the judge replies of a run's evaluation.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "tiny-judge.yaml")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--samples", type=Path, help="a run's iter-K/eval_samples.jsonl: break it down, train nothing")
    args = parser.parse_args()
    if args.samples:
        break_down_run(args.samples)
        return
    import torch

    torch.set_num_threads(1)
    from tqdm import tqdm

    from spark_vl import workspace
    from spark_vl.config import load_config
    from spark_vl.data.tasks import make_dataset
    from spark_vl.evaluate import evaluate
    from spark_vl.models import build_tiny_model, load_processor
    from spark_vl.models.inputs import conversation
    from spark_vl.prompts import pointwise_judge_sample, solve_prompt, wrong_answers
    from spark_vl.rollout.hf import HFRolloutEngine
    from spark_vl.train.trainer import PolicyTrainer

    config = load_config(args.config, args.overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="judge-probe-"))
    make_dataset(run_dir / "data", config.data.builtin)
    build_tiny_model(config.model, run_dir / "model" / "init")
    ws = workspace.Workspace(config, run_dir)
    processor = load_processor(run_dir / "model" / "init", config.model.min_pixels, config.model.max_pixels)
    trainer = PolicyTrainer(config, processor, run_dir / "model" / "init", None, lr=config.train.warmup.lr,
                            adapters=False)
    samples, templates, tokenizer = ws.samples("train"), ws.templates, processor.tokenizer
    pool = wrong_answers(samples)
    end = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    rng = random.Random(config.train.seed)

    def example():
        sample = rng.choice(samples)
        source = solve_prompt(sample, config.data.instruction)
        if rng.random() < 0.5:
            return conversation(source, config.model), f"\\boxed{{{sample.answer}}}"
        proposed = sample.answer if rng.random() < 0.5 else rng.choice(
            [a for a in pool[sample.question] if a != sample.answer])
        prompt = pointwise_judge_sample(source, proposed, True, templates.pointwise[0], "probe")
        positive, negative = templates.pointwise[0]["labels"]
        return conversation(prompt, config.model), templates.judge_reply.format(
            seen=sample.answer, answer=proposed, verdict=positive if proposed == sample.answer else negative)

    for _ in tqdm(range(args.steps), desc="supervised, true verdicts", unit="step"):
        batch = [example() for _ in range(config.train.warmup.batch_size)]
        trainer.sft_step([conv for conv, _ in batch],
                         [tokenizer.encode(text, add_special_tokens=False) + end for _, text in batch])
    engine = HFRolloutEngine(trainer.model, processor, config.rollout, config.model, show_progress=False)
    metrics, records = evaluate(engine, ws.samples("eval"), config, templates, ws.pool, tokenizer)
    ws.close()

    print(f"{args.steps} supervised steps with true verdicts ({args.config.name} {' '.join(args.overrides)}): "
          f"held-out task {metrics['eval/task_acc']:.3f}, judge pointwise {metrics['eval/judge_pointwise_acc']:.3f}")
    print_breakdown(records, templates, tokenizer)


def break_down_run(samples: Path) -> None:
    import json

    from spark_vl.config import load_config
    from spark_vl.models import load_processor
    from spark_vl.prompts import Templates

    run_dir = samples.parent.parent
    config = load_config(run_dir / "config.yaml", [])
    tokenizer = load_processor(run_dir / "model" / "init", config.model.min_pixels, config.model.max_pixels).tokenizer
    records = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    print(f"{samples}: judge pointwise replies")
    print_breakdown(records, Templates.load(config.spark.templates), tokenizer)


def print_breakdown(records: list[dict], templates, tokenizer) -> None:
    """Pointwise judge accuracy by label and by how the word the reply restates as seen and the
    prompt's proposed answer are tokenised (one token, or a space token and then the word)."""
    from spark_vl.prompts import template_pattern
    from spark_vl.verify import extract_verdict

    def shape(answer: str) -> str:
        return "one token" if len(tokenizer.encode(f" {answer.strip()}", add_special_tokens=False)) == 1 else "split"

    reply = templates.reply_pattern(False)
    prompts = [re.compile(template_pattern(t["text"], ("answer",), ("question",))) for t in templates.pointwise]
    yes = extract_verdict(f"\\box{{{templates.pointwise[0]['labels'][0]}}}")  # normalised as replies are
    counts: collections.Counter = collections.Counter()
    by_answer: collections.Counter = collections.Counter()
    for record in records:
        if record["kind"] != "judge_pointwise":
            continue
        match = reply.match(record["response"])
        proposed = next(m.group(1) for m in (p.fullmatch(record["prompt"]) for p in prompts) if m)
        form = (f"seen {shape(match.group(1))} / proposed {shape(proposed)}"
                f" ({'same word' if match.group(1).strip() == proposed.strip() else 'other words'})"
                if match else "reply not in format")
        counts[(record["label"], form, "n")] += 1
        counts[(record["label"], form, "right")] += record["reward"]
        by_answer[(proposed.strip(), record["label"], "n")] += 1
        by_answer[(proposed.strip(), record["label"], "yes")] += extract_verdict(record["response"]) == yes
    for label, form in sorted({key[:2] for key in counts}):
        print(f"  label {label}, {form}: {counts[(label, form, 'right')]:.0f} / {counts[(label, form, 'n')]} right")
    print("  verdict Yes by proposed answer, when it is right / when it is wrong (a verdict read off the"
          " proposed answer alone says Yes as often in both):")
    for answer in sorted({key[0] for key in by_answer}):
        right, wrong = ((by_answer[(answer, label, "yes")], by_answer[(answer, label, "n")])
                        for label in templates.pointwise[0]["labels"])
        print(f"  {answer}: {right[0]} / {right[1]}, {wrong[0]} / {wrong[1]}")


if __name__ == "__main__":
    main()
