"""Before/after of one speed change: a training step reads and encodes each distinct prompt once.

    .venv/bin/python bench/train_speed.py RUN_DIR [--iterations 3] [--repeats 5]

A GRPO batch holds n responses per prompt. As of commit b7d4c2e the training step built its
micro-batches row by row: every row's image read, resized and tokenised by the processor, and
encoded by the vision tower, 8 times per group. Now each distinct prompt goes through the
processor once and each distinct image through the vision tower once (its features shared by
the rows, `mm_encoder_outputs`). This runs the GRPO steps of RUN_DIR's first iterations (e.g.
runs/tiny) on one trainer with the batch preparation of b7d4c2e and with the current one,
alternately, and prints seconds per step and the ratio. It first checks that both give the
same log-probs on the same weights.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from before_after import import_as_of

BEFORE = "b7d4c2e"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from spark_vl import layout, workspace
    from spark_vl.config import load_config
    from spark_vl.records import load_groups
    from spark_vl.models import forward
    from spark_vl.train import trainer as trainer_module

    before = import_as_of(BEFORE, {"spark_vl/rollout/inputs.py": "inputs_before",
                                   "spark_vl/train/forward.py": "forward_before"})
    ws = workspace.Workspace(load_config(args.run_dir / "config.yaml"), args.run_dir)
    trainer = ws.trainer_at(0)
    batches = [load_groups(layout.iter_dir(args.run_dir, k) / "verified.jsonl", args.run_dir)
               for k in range(1, args.iterations + 1)]

    sequences, _ = trainer_module.sequences_with_signal(batches[0], ws.config)
    chunk = sequences[:ws.config.train.micro_batch_size]
    logps = {}
    for name, module in (("before", before), ("after", forward)):
        batch = module.completion_batch(ws.processor, [s.conversation for s in chunk], [s.completion for s in chunk],
                                        trainer.device)
        with torch.no_grad():
            logps[name] = module.completion_logps(trainer.model, batch)[0] * batch["completion_mask"]
    difference = float((logps["before"] - logps["after"]).abs().max())
    if difference > 1e-4:
        raise SystemExit(f"the two batch preparations disagree: log-probs differ by {difference:.2e}")

    seconds: dict[str, list[float]] = {"before": [], "after": []}
    for rep in range(args.repeats):
        for name, module in (("before", before), ("after", forward)) if rep % 2 == 0 else (("after", forward),
                                                                                          ("before", before)):
            trainer_module.completion_batch, trainer_module.completion_logps = (module.completion_batch,
                                                                                module.completion_logps)
            start = time.perf_counter()
            for groups in batches:
                trainer.grpo_step(groups)
            seconds[name].append((time.perf_counter() - start) / len(batches))
    ws.close()
    b, a = statistics.median(seconds["before"]), statistics.median(seconds["after"])
    print(f"GRPO steps of {args.run_dir} iterations 1-{args.iterations}, {len(sequences)} sequences in the first; "
          f"seconds per step (median of {args.repeats}, alternated): before ({BEFORE}) {b:.2f}, after {a:.2f}: "
          f"{b / a:.2f}x faster; log-probs of both within {difference:.1e}")


if __name__ == "__main__":
    main()
