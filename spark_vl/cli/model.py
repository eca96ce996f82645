"""Commands on a trained model: judge rows, evaluate it, check the services a run would use."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from spark_vl.cli.app import ConfigArg, SetOpt, app, load_config_or_exit, model_or_given_config, print_evals


def _judge_prompts(path: Path, cfg) -> list:
    """Judge prompts from JSONL rows {image, question, answer} (pointwise) or {image, question,
    answer_a, answer_b} (pairwise), `images` for several, `video` for a clip; files relative to
    the JSONL file. Stops at the first bad row, naming it and what it needs."""
    from spark_vl.evaluate.requests import ROW_HELP, request_kind, request_prompt, row_images, row_video
    from spark_vl.prompts import Templates

    templates = Templates.load(cfg.spark.templates)
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if request_kind(row) == "solve":
                raise ValueError(f"nothing to judge ({ROW_HELP})")
            images = [path.parent / image for image in row_images(row)]
            for image in images:
                if not image.is_file():
                    raise ValueError(f"image {image} does not exist")
            video = row_video(row)
            video = video and path.parent / video
            if video and not video.exists():
                raise ValueError(f"video {video} does not exist")
            prompts.append(request_prompt(row, f"row{number}", [str(image) for image in images], cfg, templates,
                                          video and str(video)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            typer.echo(f"error: {path} line {number}: {exc} ({ROW_HELP})", err=True)
            raise typer.Exit(2) from None
    return prompts


@app.command("judge")
def judge(
    model: Annotated[str, typer.Option("--model", "-m", help="checkpoint folder or models:/NAME@alias")],
    path: Annotated[Path, typer.Argument(help="JSONL rows {image, question, answer} or {image, question, "
                                                "answer_a, answer_b}")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output JSONL: input rows plus verdict, p_positive, "
                                                          "reply")],
    config: ConfigArg = None,
    set_: SetOpt = None,
) -> None:
    """The model as a judge: its verdict on each row, the probability of the positive verdict
    (Yes, or A) from its own log-probabilities, and its reply."""
    import tempfile

    from spark_vl.evaluate.requests import respond
    from spark_vl.runio import write_jsonl_atomic
    from spark_vl.tracking import resolve_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = resolve_model(model, Path(tmp) / "model")
        cfg = model_or_given_config(model_dir, config, set_)
        prompts = _judge_prompts(path, cfg)
        with open_engine(model_dir, cfg, Path(tmp)) as (engine, _):
            answers = respond(engine, prompts, cfg)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    write_jsonl_atomic(out, [{**row, "verdict": a["verdict"], "p_positive": a["p_positive"], "reply": a["reply"]}
                             for row, a in zip(rows, answers)])
    unreadable = sum(a["p_positive"] is None for a in answers)
    typer.echo(f"{len(rows)} rows judged, {unreadable} replies without a verdict -> {out}", err=True)


@app.command("doctor")
def doctor(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """What a run would use (Prefect API, MLflow store and registry, vLLM, devices), whether each
    answers and accepts its credentials, and what to set when one does not; exits 1 on a problem."""
    from prefect.settings import get_current_settings

    from spark_vl import doctor as checks
    from spark_vl import tracking

    cfg = load_config_or_exit(config, set_)
    prefect = get_current_settings().api
    auth = prefect.auth_string.get_secret_value() if prefect.auth_string else None
    results = [checks.prefect_check(prefect.url, auth),
               checks.mlflow_check(tracking.tracking_uri(), os.environ.get("MLFLOW_TRACKING_USERNAME"),
                                   os.environ.get("MLFLOW_TRACKING_PASSWORD"))]
    if results[-1].ok:
        results.append(checks.Check("model registry", True, tracking.registry_summary(cfg.tracking.registered_model)))
    vllm = cfg.rollout.vllm
    results += [checks.vllm_check(cfg.rollout.engine, vllm.python, vllm.url), checks.device_check()]
    for check in results:
        typer.echo(f"{'ok' if check.ok else 'PROBLEM':>7}  {check.name}: {check.detail}"
                   + (f"\n{'':>9}-> {check.fix}" if check.fix else ""))
    if not all(check.ok for check in results):
        raise typer.Exit(1)


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option("--model", "-m", help="checkpoint folder or models:/NAME@alias")],
    data: Annotated[Optional[Path], typer.Option(help="held-out dataset (default: data.eval_path, else the "
                                                      "built-in held-out split)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as one JSON line")] = False,
    best_of_n: Annotated[int, typer.Option("--best-of-n", help="also: sample N answers, keep the one the model's "
                                                               "own judge rates best")] = 0,
    judge_bench: Annotated[Optional[Path], typer.Option(
        "--judge-bench", help="instead: the judge on pairwise preference rows (VL-RewardBench schema)")] = None,
    config: ConfigArg = None,
    set_: SetOpt = None,
) -> None:
    """Evaluate a model on held-out prompts, with and without test-time self-reflection."""
    import tempfile

    from spark_vl.data import load_dataset
    from spark_vl.data.tasks import make_dataset
    from spark_vl.evaluate import evaluate
    from spark_vl.prompts import Templates
    from spark_vl.tracking import resolve_model
    from spark_vl.verify import GradingPool

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = resolve_model(model, Path(tmp) / "model")
        cfg = model_or_given_config(model_dir, config, [*(set_ or []), *([f"eval.best_of_n={best_of_n}"]
                                                                            if best_of_n else [])])
        if judge_bench is not None:
            _print_metrics(_judge_bench(model_dir, cfg, judge_bench, Path(tmp)), as_json)
            return
        data_path = data or (Path(cfg.data.eval_path) if cfg.data.eval_path else None)
        if data_path is None:
            data_path = make_dataset(Path(tmp) / "data", cfg.data.builtin)["eval"]
        samples = load_dataset(data_path, cfg.data.max_image_pixels).samples
        with (open_engine(model_dir, cfg, Path(tmp)) as (engine, processor),
              GradingPool(cfg.rollout.verify_workers, cfg.rollout.verify_timeout_s, cfg.reward.function,
                          cfg.reward.answer_format) as pool):
            metrics, _ = evaluate(engine, samples, cfg, Templates.load(cfg.spark.templates), pool, processor.tokenizer)
    _print_metrics(metrics, as_json)


@app.command("register-again")
def register_again_cmd(
    uri: Annotated[str, typer.Argument(help="the version to register again, as models:/NAME/VERSION")],
    experiment: Annotated[str, typer.Option(help="MLflow experiment of the run that logs it")] = "spark-vl",
) -> None:
    """Register a version made before versions were MLflow Models (a plain folder of weights) again,
    as an MLflow Model that `mlflow.pyfunc.load_model` and `mlflow models serve` read: a new version
    with the old one's tags, and its aliases moved to it."""
    from spark_vl.tracking import register_again

    name, _, version = uri.removeprefix("models:/").partition("/")
    if not uri.startswith("models:/") or not version.isdigit():
        typer.echo(f"error: {uri} is not models:/NAME/VERSION (e.g. models:/spark-vl-tiny/3)", err=True)
        raise typer.Exit(2)
    try:
        new = register_again(name, int(version), experiment)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"models:/{name}/{new} (an MLflow Model) now holds what models:/{name}/{version} held")


@contextmanager
def open_engine(model_dir: Path, cfg, work_dir: Path):
    """(the configured rollout engine on the checkpoint at `model_dir`, its processor); a vLLM
    server started for it stops on exit."""
    from spark_vl.models import load_processor
    from spark_vl.rollout import Engines

    engines = Engines(cfg, load_processor(model_dir, cfg.model.min_pixels, cfg.model.max_pixels), work_dir,
                      show_progress=True)
    try:
        yield engines.open(model_dir), engines.processor
    finally:
        engines.close()


def _print_metrics(metrics: dict[str, float], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(metrics))
    elif "eval/task_acc" in metrics:
        print_evals([metrics])
    else:
        typer.echo("\n".join(f"{key}: {value:.3f}" for key, value in metrics.items()))


def _judge_bench(model_dir: Path, cfg, path: Path, tmp: Path) -> dict[str, float]:
    """The judge's accuracy on people's pairwise choices in `path`."""
    from spark_vl.data import DatasetError
    from spark_vl.data.preference import load_preference_pairs
    from spark_vl.evaluate.judge import preference_accuracy
    from spark_vl.prompts import Templates

    try:
        pairs = load_preference_pairs(path, tmp / "bench-images")
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    with open_engine(model_dir, cfg, tmp) as (engine, _):
        accuracy = preference_accuracy(engine, pairs, Templates.load(cfg.spark.templates))
    return {**accuracy, "eval/judge_bench_pairs": float(len(pairs))}
