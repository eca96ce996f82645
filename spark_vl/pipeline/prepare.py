"""Prepare a run directory: the config, the built-in data, the starting policy (the tiny model
after its warm-up, a registry model, or `model.path` itself). Finished parts are skipped."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from spark_vl.config import RunConfig, save_config
from spark_vl.data import verifiable, warn_bad_rows
from spark_vl.data.tasks import make_dataset
from spark_vl.faults import fault_point
from spark_vl.layout import check_same_run, remove_partials, start_policy, warmup_dir, write_json
from spark_vl.models import build_tiny_model, load_processor
from spark_vl.runio import logger
from spark_vl.train.trainer import PolicyTrainer
from spark_vl.train.warmup import run_warmup
from spark_vl.workspace import Workspace

# Copies a registry model (models:/NAME@ALIAS) into a folder and returns where it put it: the
# flow passes MLflow's (`tracking.resolve_model`), the library knows no registry.
FetchModel = Callable[[str, Path], Path]


def prepare_run(config: RunConfig, run_dir: Path, fetch_model: FetchModel | None = None) -> dict[str, Path]:
    """Write the config; build the tiny model, the built-in data and the warm-started starting
    policy when the config asks for them; copy a registry model in with `fetch_model`. Finished
    parts are skipped."""
    run_dir.mkdir(parents=True, exist_ok=True)
    check_same_run(config, run_dir)
    remove_partials(run_dir)
    save_config(config, run_dir / "config.yaml")
    ws = Workspace(config, run_dir)
    if config.data.train_path is None and not (run_dir / "data" / "eval.jsonl").exists():
        logger.info("rendering built-in tasks %s in %s", config.data.builtin.families, run_dir / "data")
        make_dataset(run_dir / "data", config.data.builtin)
    if config.data.train_path and not config.data.eval_path:
        logger.warning("data.eval_path is not set: held-out metrics are computed on the training set")
    for split in ("train", "eval"):
        warn_bad_rows(ws.dataset(split))
        samples = ws.samples(split)
        open_ended = len(samples) - len(verifiable(samples))
        logger.info("%s prompts: %d usable from %s%s", split, len(samples), ws.paths[split],
                    f", {open_ended} of them open-ended (rewarded by the judge)" if open_ended else "")
        if open_ended and split == "train" and not config.spark.judge_reward.enabled:
            logger.warning("%d open-ended train prompts are left out of training: set spark.judge_reward.enabled="
                           "true to reward them with the judge", open_ended)
    start = start_policy(config, run_dir)
    if not (start / "config.json").exists():
        if config.model.path is None:
            init = run_dir / "model" / "init"
            if not (init / "config.json").exists():
                logger.info("building tiny %s model in %s", config.model.tiny.family, init)
                build_tiny_model(config.model, init)
            warm_start(config, run_dir, init, start)
        elif config.model.path.startswith("models:/"):
            if fetch_model is None:
                raise ValueError(f"model.path {config.model.path} is a registry model: run it through the flow "
                                 "(spark-vl run), which fetches it from MLflow")
            staging = start.with_name(".from-registry.partial")
            shutil.rmtree(staging, ignore_errors=True)
            logger.info("downloading %s into %s", config.model.path, start)
            shutil.move(fetch_model(config.model.path, staging), start)
            shutil.rmtree(staging, ignore_errors=True)
        else:
            raise FileNotFoundError(f"model.path {start} is not a Hugging Face checkpoint directory (no config.json)")
    ws.close()
    fault_point("prepare", 0, "after")
    return {"run_dir": run_dir, "policy": start, **ws.paths}


def warm_start(config: RunConfig, run_dir: Path, init: Path, start: Path) -> None:
    m = config.model
    processor = load_processor(init, m.min_pixels, m.max_pixels)
    if not config.train.warmup.enabled or config.train.warmup.steps == 0:
        fault_point("prepare", 0, "before")
        staging = start.with_name(f".{start.name}.partial")
        shutil.copytree(init, staging)
        staging.rename(start)
        return
    ws = Workspace(config, run_dir)
    trainer = PolicyTrainer(config, processor, init, None, lr=config.train.warmup.lr, adapters=False)
    try:
        losses, checks = run_warmup(trainer, verifiable(ws.samples("train")), config, ws.templates, ws.pool,
                                    checkpoints=warmup_dir(run_dir))
    finally:
        ws.close()
    if checks:
        probe = ", ".join(f"{q} {a:.2f}" for q, a in checks[-1]["accuracy"].items())
        logger.info("warm-up: %d steps; held-back train samples answered right: %s", len(losses), probe)
        if "verdict" in checks[-1]:
            logger.info("warm-up: the verdict follows the judge's words in %s",
                        ", ".join(f"{key} {rate:.2f}" for key, rate in checks[-1]["verdict"].items()))
        if not checks[-1]["passed"]:
            aim = ("the verdict followed the judge's words train.warmup.verdict_follows of the time: raise max_steps "
                   "or lower verdict_follows" if any(c["sees"] for c in checks) else "every question beat chance by "
                   "train.warmup.above_chance: raise max_steps or lower above_chance")
            logger.warning("warm-up reached train.warmup.max_steps (%d) before %s", len(losses), aim)
    write_json(run_dir / "warmup.json", {"loss_first": losses[0], "loss_last": losses[-1], "steps": len(losses),
                                         "probe": checks})
    fault_point("prepare", 0, "before")
    trainer.save(start)
    shutil.rmtree(warmup_dir(run_dir), ignore_errors=True)  # the starting policy is saved: no longer needed
