"""A run as plain functions over its run directory (the Prefect flow wraps these as tasks).

Run directory layout:
    config.yaml            the resolved config
    data/                  built-in task data (when the config names no dataset)
    model/init/            the starting checkpoint (tiny model built offline, or a copy-free
                           reference to `model.path`)
"""

from __future__ import annotations

from pathlib import Path

from spark_vl.config import RunConfig, save_config
from spark_vl.data import load_dataset
from spark_vl.data.tasks import make_dataset
from spark_vl.models import build_tiny_model
from spark_vl.runio import logger


def prepare_run(config: RunConfig, run_dir: Path) -> dict[str, Path]:
    """Write the config, build the starting model and data when missing; skip what exists."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    if config.model.path is None:
        model_dir = run_dir / "model" / "init"
        if not (model_dir / "config.json").exists():
            logger.info("building tiny %s model in %s", config.model.tiny.family, model_dir)
            build_tiny_model(config.model, model_dir)
    else:
        model_dir = Path(config.model.path)
    if config.data.train_path is None:
        data_dir = run_dir / "data"
        if not (data_dir / "eval.jsonl").exists():
            logger.info("rendering built-in tasks %s in %s", config.data.builtin.families, data_dir)
            make_dataset(data_dir, config.data.builtin)
        train_path, eval_path = data_dir / "train.jsonl", data_dir / "eval.jsonl"
    else:
        train_path = Path(config.data.train_path)
        eval_path = Path(config.data.eval_path or config.data.train_path)
    for path in {train_path, eval_path}:
        loaded = load_dataset(path, config.data.max_image_pixels)
        logger.info("%s: %d usable prompts, %d dropped", path, len(loaded.samples), len(loaded.bad))
    return {"run_dir": run_dir, "model": model_dir, "train": train_path, "eval": eval_path}
