"""Commands that grade and recycle rollouts as a training run does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from spark_vl.cli.app import ConfigArg, SetOpt, app, load_config_or_exit


@app.command("verify")
def verify(
    path: Annotated[Path, typer.Argument(help='JSONL rows {"response", "answer", "kind": "task"|"judge"}')],
    out: Annotated[Path, typer.Option("--out", "-o", help="output JSONL: input rows plus reward and status")],
    timeout: Annotated[float, typer.Option(help="hard deadline per sample, seconds")] = 5.0,
    workers: Annotated[int, typer.Option(help="grading processes")] = 2,
    reward_function: Annotated[Optional[str], typer.Option(
        help="your task reward, path/to/file.py:fn or module:fn (as reward.function); rows may add 'prompt'")] = None,
    answer_format: Annotated[str, typer.Option(
        help="strict (one distinct boxed answer) or last_box (as reward.answer_format; docs/grading.md)")] = "strict",
) -> None:
    """Grade responses like a training run does; a summary goes to stderr."""
    from spark_vl.runio import write_jsonl_atomic
    from spark_vl.verify import GradeItem, GradingPool

    if answer_format not in ("strict", "last_box"):
        typer.echo(f"error: --answer-format {answer_format!r}: use strict or last_box", err=True)
        raise typer.Exit(2)
    rows, items, bad = [], [], {}
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        row = None
        try:
            row = json.loads(line)
            kind = row.get("kind", "task")
            if kind not in ("task", "judge") or not isinstance(row.get("response"), str) or "answer" not in row:
                raise ValueError("needs a string 'response', an 'answer' and kind 'task' or 'judge'")
            items.append((len(rows), GradeItem(row["response"], str(row["answer"]), kind, row.get("prompt"))))
        except (ValueError, AttributeError) as exc:
            row = row if isinstance(row, dict) else {"raw": line}
            bad[len(rows)] = f"line {i}: {exc}"
        rows.append(row)
    try:
        pool = GradingPool(workers, timeout, reward_function, answer_format)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    with pool:
        grades = pool.grade([item for _, item in items])
    for (index, _), grade in zip(items, grades):
        rows[index] = {**rows[index], "reward": grade.reward, "status": grade.status}
    for index, reason in bad.items():
        rows[index] = {**rows[index], "reward": 0.0, "status": "error"}
        typer.echo(f"error: {reason}", err=True)
    write_jsonl_atomic(out, rows)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("ok", "timeout", "error")}
    mean = sum(r["reward"] for r in rows) / max(1, len(rows))
    typer.echo(f"{len(rows)} rows: reward mean {mean:.3f}, ok {counts['ok']}, timeout {counts['timeout']}, "
               f"error {counts['error']} -> {out}", err=True)


@app.command("recycle")
def recycle_cmd(
    path: Annotated[Path, typer.Argument(help="rollout groups as JSONL (e.g. iter-0001/verified.jsonl of a run)")],
    batch_size: Annotated[Optional[int], typer.Option(help="caps are shares of this (default: groups in file)")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    config: ConfigArg = None,
    set_: SetOpt = None,
) -> None:
    """Print, as JSONL, the judge and reflection prompts SPARK builds from verified rollouts."""
    import random
    from dataclasses import asdict

    from spark_vl.pipeline import grade_groups
    from spark_vl.records import load_groups
    from spark_vl.recycle import recycle
    from spark_vl.prompts import Templates
    from spark_vl.verify import GradingPool

    cfg = load_config_or_exit(config, set_)
    in_run = path.resolve().parent.name.startswith("iter-")  # a run's images are relative to its folder
    groups = load_groups(path, path.resolve().parent.parent if in_run else None)
    templates = Templates.load(cfg.spark.templates)
    unverified = [g for g in groups if not g.rewards]
    if unverified:
        with GradingPool(cfg.rollout.verify_workers, cfg.rollout.verify_timeout_s, cfg.reward.function,
                         cfg.reward.answer_format) as pool:
            grade_groups(unverified, templates, pool, cfg.spark.judge_reply_check)
    solve = [g for g in groups if g.prompt.kind == "solve"]
    result = recycle(groups, cfg.spark, batch_size or len(solve), random.Random(seed), templates, "recycled")
    for prompt in result.prompts:
        typer.echo(json.dumps(asdict(prompt), ensure_ascii=False))
    typer.echo(f"{len(solve)} solve groups -> {json.dumps(result.counts)}", err=True)


@app.command("audit")
def audit(
    run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. runs/tiny")],
    top: Annotated[int, typer.Option(help="cases of the latest evaluation to print")] = 10,
) -> None:
    """Where the run's own judge, confident (P(right) >= 0.9 or <= 0.1), grades a held-out answer
    otherwise than the verifier: per evaluation how many, then the latest's most confident cases.
    Once the judge is good these are the verifier's likely mistakes (or wrong reference answers)."""
    from spark_vl.layout import VERIFIER_DISAGREEMENTS, metric_rows
    from spark_vl.runio import read_jsonl

    files = sorted(run_dir.glob(f"iter-*/{VERIFIER_DISAGREEMENTS}"))
    if not files:
        typer.echo(f"error: {run_dir} holds no {VERIFIER_DISAGREEMENTS}: not a run folder, or no evaluation "
                   "has finished yet", err=True)
        raise typer.Exit(2)
    rates = {int(r["iteration"]): r.get("verify/judge_disagreement_rate") for r in metric_rows(run_dir)}
    typer.echo("iteration  disagreements  share of judged answers")
    for path in files:
        k = int(path.parent.name.removeprefix("iter-"))
        rate = rates.get(k)
        typer.echo(f"{k:9d}  {len(list(read_jsonl(path))):13d}  {'' if rate is None else f'{rate:.3f}':>23}")
    latest = list(read_jsonl(files[-1]))
    typer.echo(f"\nmost confident of {files[-1].parent.name} ({min(top, len(latest))} of {len(latest)}):")
    for case in latest[:top]:
        typer.echo(f"- judge P(right) {case['p_positive']:.3f}, verifier reward {case['verifier_reward']:g}; "
                   f"truth {case['label']!r}, answer {case['answer']!r}\n  question: {case['prompt']}\n"
                   f"  reply: {case['policy_reply']}")
