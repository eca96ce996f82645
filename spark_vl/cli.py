"""`spark-vl` command line."""

from __future__ import annotations

import json
import os
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from spark_vl.config import MODEL_CONFIG, ConfigError, load_config, load_model_config

app = typer.Typer(
    help="Post-train vision-language models with SPARK: GRPO whose verified rollouts also train "
    "the model as its own judge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

ConfigArg = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML run config (default: built-in)")]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="override a config value, e.g. --set train.lr=1e-5 (repeatable)"),
]


def _config(config: Path | None, overrides: list[str] | None):
    try:
        return load_config(config, overrides or [])
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for chatty in ("httpx", "httpcore", "alembic", "mlflow.store.db.utils"):  # per-request / migration lines
        logging.getLogger(chatty).setLevel(logging.WARNING)


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
    cfg = _config(config, overrides)
    path = build_tiny_model(cfg.model, out_dir)
    typer.echo(f"tiny {cfg.model.tiny.family} checkpoint written to {path}")


@app.command("make-data")
def make_data(
    out_dir: Annotated[Path, typer.Argument(help="folder for PNGs and train/eval JSONL manifests")],
    families: Annotated[Optional[str], typer.Option(help="comma list: colour,count,position,size,arithmetic")] = None,
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
    cfg = _config(config, overrides)
    manifests = make_dataset(out_dir, cfg.data.builtin)
    for split, path in manifests.items():
        typer.echo(f"{split}: {path}")


@app.command("validate-data")
def validate_data(
    path: Annotated[Path, typer.Argument(help="JSONL, JSON or Parquet file, or a datasets.save_to_disk folder")],
    as_json: Annotated[bool, typer.Option("--json", help="end with one JSON line {good, bad}")] = False,
    split: Annotated[str, typer.Option(help="split of a DatasetDict folder")] = "train",
    max_image_pixels: Annotated[int, typer.Option(help="larger images count as decompression bombs")] = 50_000_000,
) -> None:
    """Check every row of a dataset: one line per bad row, then a summary. Exit 1 if no row is good."""
    from spark_vl.data import DatasetError, scan_dataset

    try:
        result = scan_dataset(path, max_image_pixels, split)
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    for bad in result.bad:
        typer.echo(f"row {bad.row}: {bad.reason}: {bad.detail}")
    typer.echo(f"{path}: {len(result.samples)} good row(s), {len(result.bad)} bad")
    if as_json:
        typer.echo(json.dumps({"good": len(result.samples), "bad": [b.as_dict() for b in result.bad]}))
    if not result.samples:
        raise typer.Exit(1)


@app.command("verify")
def verify(
    path: Annotated[Path, typer.Argument(help='JSONL rows {"response", "answer", "kind": "task"|"judge"}')],
    out: Annotated[Path, typer.Option("--out", "-o", help="output JSONL: input rows plus reward and status")],
    timeout: Annotated[float, typer.Option(help="hard deadline per sample, seconds")] = 5.0,
    workers: Annotated[int, typer.Option(help="grading processes")] = 2,
    reward_function: Annotated[Optional[str], typer.Option(
        help="your task reward, path/to/file.py:fn or module:fn (as reward.function); rows may add 'prompt'")] = None,
) -> None:
    """Grade responses like a training run does; a summary goes to stderr."""
    from spark_vl.runio import write_jsonl_atomic
    from spark_vl.verify import GradeItem, GradingPool

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
        pool = GradingPool(workers, timeout, reward_function)
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
    from spark_vl.recycle import Templates, recycle
    from spark_vl.verify import GradingPool

    cfg = _config(config, set_)
    groups = load_groups(path)
    templates = Templates.load(cfg.spark.templates)
    unverified = [g for g in groups if not g.rewards]
    if unverified:
        with GradingPool(cfg.rollout.verify_workers, cfg.rollout.verify_timeout_s, cfg.reward.function) as pool:
            grade_groups(unverified, templates, pool, cfg.spark.judge_reply_check)
    solve = [g for g in groups if g.prompt.kind == "solve"]
    result = recycle(groups, cfg.spark, batch_size or len(solve), random.Random(seed), templates, "recycled")
    for prompt in result.prompts:
        typer.echo(json.dumps(asdict(prompt), ensure_ascii=False))
    typer.echo(f"{len(solve)} solve groups -> {json.dumps(result.counts)}", err=True)


# A run reaches no telemetry host: without these, Prefect's temporary server and MLflow print
# ERROR lines for every report they fail to send (a user's own settings win).
QUIET_ENV = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             # Prefect's temporary local server needs more than its default 20 s on a busy 2-core machine.
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"}


@app.command("run")
def run(
    config: Annotated[Path, typer.Argument(help="YAML run config, e.g. configs/tiny.yaml")],
    set_: SetOpt = None,
    run_name: Annotated[Optional[str], typer.Option(help="run folder under orchestration.runs_dir")] = None,
) -> None:
    """Run SPARK as the Prefect flow `co-evolve`, tracked in MLflow; the same --run-name resumes."""
    import errno
    import os

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from spark_vl.config import check_paths
    from spark_vl.data import DatasetError
    from spark_vl.layout import check_resumable, metric_rows
    from spark_vl.runio import DamagedOutput

    cfg = _config(config, set_)
    name = run_name or config.stem
    run_dir = Path(cfg.orchestration.runs_dir) / name
    try:
        check_paths(cfg)
        check_resumable(cfg, run_dir)
    except (ConfigError, DamagedOutput) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from flows.co_evolve import co_evolve

    try:
        co_evolve(config=cfg, run_name=name)
    except (DamagedOutput, DatasetError, OSError) as exc:  # errors that say what to fix: no traceback
        if isinstance(exc, OSError) and exc.errno != errno.ENOSPC:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"run directory: {run_dir}  (metrics: {run_dir / 'metrics.jsonl'}, plot: {run_dir / 'coevolution.png'})")
    _print_evals([r for r in metric_rows(run_dir) if "eval/task_acc" in r])


@app.command("train-node")
def train_node(
    run_dir: Annotated[Path, typer.Argument(help="the run's directory, on a filesystem every node shares")],
    iteration: Annotated[int, typer.Argument(help="the iteration to train (its rollouts are verified)")],
    node_rank: Annotated[int, typer.Option(help="this node's line in train.hostfile, from 0")],
) -> None:
    """Start this node's DeepSpeed workers for one iteration's train stage, for clusters whose nodes
    cannot ssh to each other (a scheduler starts this on every node of train.hostfile)."""
    from spark_vl.train.launch import launch_training

    cfg = _config(run_dir / "config.yaml", None)
    if cfg.train.hostfile is None:
        typer.echo(f"error: {run_dir / 'config.yaml'} sets no train.hostfile: train-node is for runs across "
                   "nodes; set train.hostfile to a DeepSpeed hostfile listing them", err=True)
        raise typer.Exit(2)
    try:
        launch_training(cfg.train, run_dir, iteration, node_rank)
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


EVAL_COLUMNS = [("eval/task_acc", "task"), ("eval/task_acc_reflect", "reflect"),
                ("eval/reflect_fixed", "fixed"), ("eval/reflect_broke", "broke"),
                ("eval/task_acc_best_of_n", "best of n"), ("eval/task_acc_sampled", "sampled"),
                ("eval/task_acc_majority", "majority"),
                ("eval/well_formed", "formed"),
                ("eval/judge_pointwise_acc", "judge pt"), ("eval/judge_same_form_acc", "same form"),
                ("eval/judge_pairwise_acc", "judge pw"), ("eval/judge_own_wrong_acc", "own wrong")]


def _print_evals(rows: list[dict]) -> None:
    """The evaluations as a table: task accuracy (greedy, with self-reflection, and the shares of
    answers reflection fixed and broke), the share of well-formed answers, and the judge (pointwise, on look-alike wrong answers, pairwise, on the
    policy's own mistakes); a column no evaluation has (best of n when off) is left out."""
    columns = [(key, title) for key, title in EVAL_COLUMNS if any(key in r for r in rows)]
    typer.echo(f"{'iteration':>9}" + "".join(f" {title:>9}" for _, title in columns))
    for r in rows:
        typer.echo(f"{r.get('iteration', '-'):>9}" + "".join(f" {r.get(key, float('nan')):>9.3f}"
                                                            for key, _ in columns))


def _model_or_given_config(model_dir: Path, config: Path | None, overrides: list[str] | None):
    """The config a policy was trained with (its templates, instruction and pixel bounds), unless
    --config is given; says which one is used."""
    try:
        trained = load_model_config(model_dir, overrides)
    except ConfigError as exc:
        typer.echo(f"error: the model's {MODEL_CONFIG}: {exc}", err=True)
        raise typer.Exit(2) from None
    if trained is not None and config is None:
        typer.echo(f"using the config the model was trained with ({MODEL_CONFIG} in the model)", err=True)
        return trained
    if trained is not None:
        typer.echo(f"using --config {config}, not the config the model was trained with ({MODEL_CONFIG})", err=True)
    return _config(config, overrides)


def _judge_prompts(path: Path, templates) -> list:
    """Judge prompts from JSONL rows {image, question, answer} (pointwise) or {image, question,
    answer_a, answer_b} (pairwise); images relative to the file. Stops at the first bad row,
    naming it and what it needs."""
    from spark_vl.evaluate.judge import question_source
    from spark_vl.recycle import pairwise_judge_sample, pointwise_judge_sample

    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image = path.parent / row["image"]
            if not image.is_file():
                raise ValueError(f"image {image} does not exist")
            source = question_source(f"row{number}", str(image), row["question"])
            if "answer_a" in row:
                prompt = pairwise_judge_sample(source, str(row["answer_a"]), str(row["answer_b"]),
                                               templates.pairwise[0], True, source.id)
            else:
                prompt = pointwise_judge_sample(source, str(row["answer"]), True, templates.pointwise[0], source.id)
        except (ValueError, KeyError, TypeError) as exc:
            typer.echo(f"error: {path} line {number}: {exc!r} (a row needs image, question, and answer or "
                       "answer_a and answer_b)", err=True)
            raise typer.Exit(2) from None
        prompts.append(prompt)
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

    from spark_vl.evaluate.judge import verdict_probabilities
    from spark_vl.recycle import Templates
    from spark_vl.runio import write_jsonl_atomic
    from spark_vl.tracking import resolve_model
    from spark_vl.verify import extract_verdict

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = resolve_model(model, Path(tmp) / "model")
        cfg = _model_or_given_config(model_dir, config, set_)
        prompts = _judge_prompts(path, Templates.load(cfg.spark.templates))
        server = None
        if cfg.rollout.engine == "vllm":  # a vLLM server started on the model (or the one at rollout.vllm.url)
            from spark_vl.models import load_processor, vision_token_ids
            from spark_vl.rollout.vllm import VLLMRolloutEngine
            from spark_vl.rollout.vllm_server import VLLMServer

            processor = load_processor(model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
            server = VLLMServer(cfg.rollout.vllm, model_dir, Path(tmp) / "vllm")
            server.ensure_running()
            engine = VLLMRolloutEngine(server, cfg.rollout, cfg.model, vision_token_ids(processor.tokenizer),
                                       getattr(processor.image_processor, "patch_size", 14), tokenizer=processor.tokenizer)
        else:
            engine = _local_engine(model_dir, cfg)
        try:
            replies = [g.responses[0] for g in engine.generate(prompts, 1, greedy=True)]
            probabilities = verdict_probabilities(engine, prompts, replies)
        finally:
            if server is not None:
                server.close()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    write_jsonl_atomic(out, [{**row, "verdict": extract_verdict(reply), "p_positive": p, "reply": reply}
                             for row, reply, p in zip(rows, replies, probabilities)])
    unreadable = sum(p is None for p in probabilities)
    typer.echo(f"{len(rows)} rows judged, {unreadable} replies without a verdict -> {out}", err=True)


@app.command("doctor")
def doctor(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """What a run would use (Prefect API, MLflow store and registry, vLLM, devices), whether each
    answers and accepts its credentials, and what to set when one does not; exits 1 on a problem."""
    from prefect.settings import get_current_settings

    from spark_vl import doctor as checks
    from spark_vl import tracking

    cfg = _config(config, set_)
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
    from spark_vl.recycle import Templates
    from spark_vl.tracking import resolve_model
    from spark_vl.verify import GradingPool

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = resolve_model(model, Path(tmp) / "model")
        cfg = _model_or_given_config(model_dir, config, [*(set_ or []), *([f"eval.best_of_n={best_of_n}"]
                                                                            if best_of_n else [])])
        if judge_bench is not None:
            _print_metrics(_judge_bench(model_dir, cfg, judge_bench, Path(tmp)), as_json)
            return
        data_path = data or (Path(cfg.data.eval_path) if cfg.data.eval_path else None)
        if data_path is None:
            data_path = make_dataset(Path(tmp) / "data", cfg.data.builtin)["eval"]
        samples = load_dataset(data_path, cfg.data.max_image_pixels).samples
        engine = _local_engine(model_dir, cfg)
        with GradingPool(cfg.rollout.verify_workers, cfg.rollout.verify_timeout_s, cfg.reward.function) as pool:
            metrics, _ = evaluate(engine, samples, cfg, Templates.load(cfg.spark.templates), pool,
                                  engine.processor.tokenizer)
    _print_metrics(metrics, as_json)


def _local_engine(model_dir: Path, cfg):
    """Transformers generation with the checkpoint at `model_dir`, in this process."""
    from spark_vl.models import load_model, load_processor
    from spark_vl.rollout.hf import HFRolloutEngine

    processor = load_processor(model_dir, cfg.model.min_pixels, cfg.model.max_pixels)
    return HFRolloutEngine(load_model(model_dir, cfg.model.dtype), processor, cfg.rollout, cfg.model)


def _print_metrics(metrics: dict[str, float], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(metrics))
    elif "eval/task_acc" in metrics:
        _print_evals([metrics])
    else:
        typer.echo("\n".join(f"{key}: {value:.3f}" for key, value in metrics.items()))


def _judge_bench(model_dir: Path, cfg, path: Path, tmp: Path) -> dict[str, float]:
    """The judge's accuracy on people's pairwise choices in `path`."""
    from spark_vl.data import DatasetError
    from spark_vl.data.preference import load_preference_pairs
    from spark_vl.evaluate.judge import preference_accuracy
    from spark_vl.recycle import Templates

    try:
        pairs = load_preference_pairs(path, tmp / "bench-images")
    except DatasetError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    return {**preference_accuracy(_local_engine(model_dir, cfg), pairs, Templates.load(cfg.spark.templates)),
            "eval/judge_bench_pairs": float(len(pairs))}


if __name__ == "__main__":
    sys.exit(app())
