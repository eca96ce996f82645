"""Commands for data: build the tiny model, render the built-in tasks, check a dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from spark_vl.cli.app import ConfigArg, SetOpt, app, load_config_or_exit


@app.command("init-tiny")
def init_tiny(
    out_dir: Annotated[Path, typer.Argument(help="folder to write the checkpoint to")],
    family: Annotated[Optional[str], typer.Option(help="qwen2_5_vl (default), qwen2_vl or qwen3_vl")] = None,
    seed: Annotated[Optional[int], typer.Option(help="weight seed (default: model.tiny.seed)")] = None,
    config: ConfigArg = None,
    set_: SetOpt = None,
) -> None:
    """Build a tiny random Qwen-VL checkpoint offline (tokenizer trained locally)."""
    from spark_vl.models import build_tiny_model

    overrides = list(set_ or [])
    if family is not None:
        overrides.append(f"model.tiny.family={family}")
    if seed is not None:
        overrides.append(f"model.tiny.seed={seed}")
    cfg = load_config_or_exit(config, overrides)
    path = build_tiny_model(cfg.model, out_dir)
    typer.echo(f"tiny {cfg.model.tiny.family} checkpoint written to {path}")


@app.command("make-data")
def make_data(
    out_dir: Annotated[Path, typer.Argument(help="folder for PNGs and train/eval JSONL manifests")],
    families: Annotated[Optional[str], typer.Option(help="comma list: colour,count,position,size,arithmetic,compare")] = None,
    difficulty: Annotated[Optional[int], typer.Option(help="1 (easy) to 3 (hard)")] = None,
    n_train: Annotated[Optional[int], typer.Option(help="training prompts")] = None,
    n_eval: Annotated[Optional[int], typer.Option(help="held-out prompts")] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    config: ConfigArg = None,
    set_: SetOpt = None,
) -> None:
    """Render the built-in verifiable visual tasks (defaults from data.builtin in the config)."""
    from spark_vl.data.tasks import make_dataset

    overrides = list(set_ or [])
    if families is not None:
        overrides.append(f"data.builtin.families=[{families}]")
    for key, value in [("difficulty", difficulty), ("n_train", n_train), ("n_eval", n_eval), ("seed", seed)]:
        if value is not None:
            overrides.append(f"data.builtin.{key}={value}")
    cfg = load_config_or_exit(config, overrides)
    manifests = make_dataset(out_dir, cfg.data.builtin)
    for split, path in manifests.items():
        typer.echo(f"{split}: {path}")


@app.command("validate-data")
def validate_data(
    path: Annotated[Path, typer.Argument(help="JSONL, JSON or Parquet file, or a datasets.save_to_disk folder")],
    as_json: Annotated[bool, typer.Option("--json", help="end with one JSON line {good, open_ended, bad}")] = False,
    split: Annotated[str, typer.Option(help="split of a DatasetDict folder")] = "train",
    max_image_pixels: Annotated[int, typer.Option(help="larger images count as decompression bombs")] = 50_000_000,
) -> None:
    """Check every row of a dataset: one line per bad row, then a summary. Exit 1 if no row is good."""
    from spark_vl.data import DatasetError, scan_dataset, verifiable

    try:
        result = scan_dataset(path, max_image_pixels, split)
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for bad in result.bad:
        typer.echo(f"row {bad.row}: {bad.reason}: {bad.detail}")
    open_ended = len(result.samples) - len(verifiable(result.samples))
    typer.echo(f"{path}: {len(result.samples)} good row(s), {len(result.bad)} bad"
               + (f"; {open_ended} good row(s) open-ended (no answer: rewarded by the judge)" if open_ended else ""))
    if as_json:
        typer.echo(json.dumps({"good": len(result.samples), "open_ended": open_ended,
                               "bad": [b.as_dict() for b in result.bad]}))
    if not result.samples:
        raise typer.Exit(1)
