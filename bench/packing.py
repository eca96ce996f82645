"""Packed training batches (`train.padding_free`) against padded ones, on a run's real batches.

    .venv/bin/python bench/packing.py RUN_DIR [--iterations 3 10 20] [--repeats 5]

For each of RUN_DIR's given iterations (a SPARK run: task prompts, then the longer judge and
reflection prompts recycled into them) the GRPO step on its verified rollouts is taken from the
same starting policy with padding and packed, alternately, on fresh trainers (one torch thread),
timed as the median of `--repeats`. Reports seconds per step, the share of padding in the token
slots each computes (`train/padding_frac`) and the largest loss difference between the two. The
table is printed and written to bench/results/packing.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from pathlib import Path

from report import publish


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--iterations", type=int, nargs="+", default=[3, 10, 20])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from spark_vl import layout, workspace
    from spark_vl.config import load_config
    from spark_vl.records import load_groups
    from spark_vl.train.trainer import PolicyTrainer

    cfg = load_config(args.run_dir / "config.yaml")
    ws = workspace.Workspace(cfg, args.run_dir)
    start_policy = layout.policy_dir(args.run_dir, 0)
    lines = [f"# Packed against padded training batches ({date.today()}, {platform.machine()}, 1 torch thread)", "",
             f"GRPO steps of `{args.run_dir.name}` from its starting policy, each iteration's verified rollouts; "
             f"median of {args.repeats} alternated repetitions on fresh trainers.", "",
             "| iteration | sequences | padded: s per step | packed: s per step | packed / padded | padding (padded) | "
             "padding (packed) | loss difference |", "|---|---|---|---|---|---|---|---|"]
    for k in args.iterations:
        groups = load_groups(layout.iter_dir(args.run_dir, k) / "verified.jsonl", args.run_dir)
        times: dict[bool, list[float]] = {False: [], True: []}
        stats: dict[bool, dict] = {}
        for rep in range(args.repeats):
            for packed in (False, True) if rep % 2 == 0 else (True, False):
                config = cfg.model_copy(update={"train": cfg.train.model_copy(update={"padding_free": packed})})
                trainer = PolicyTrainer(config, ws.processor, start_policy, start_policy)
                begin = time.perf_counter()
                stats[packed] = trainer.grpo_step(groups, seed=k)
                times[packed].append(time.perf_counter() - begin)
        padded, packed = (statistics.median(times[p]) for p in (False, True))
        lines.append(f"| {k} | {stats[False]['train/sequences']:.0f} | {padded:.2f} | {packed:.2f} | "
                     f"{packed / padded:.2f}x | {stats[False]['train/padding_frac']:.1%} | "
                     f"{stats[True]['train/padding_frac']:.1%} | "
                     f"{abs(stats[True]['train/loss'] - stats[False]['train/loss']):.1e} |")
        print(lines[-1], flush=True)
    lines += ["", f"Command: `.venv/bin/python bench/packing.py {args.run_dir} --iterations "
              f"{' '.join(map(str, args.iterations))}" + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
              + "`"]
    publish("packing", "\n".join(lines))
    ws.close()


if __name__ == "__main__":
    main()
