"""The `spark-vl` Typer app and what its commands share: config options, loading, the eval table."""

from __future__ import annotations

import logging
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


def load_config_or_exit(config: Path | None, overrides: list[str] | None):
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




EVAL_COLUMNS = [("eval/task_acc", "task"), ("eval/task_acc_reflect", "reflect"),
                ("eval/reflect_fixed", "fixed"), ("eval/reflect_broke", "broke"),
                ("eval/task_acc_reflect_ungated", "no gate"),
                ("eval/task_acc_best_of_n", "best of n"), ("eval/task_acc_sampled", "sampled"),
                ("eval/task_acc_majority", "majority"),
                ("eval/well_formed", "formed"),
                ("eval/judge_pointwise_acc", "judge pt"), ("eval/judge_same_form_acc", "same form"),
                ("eval/judge_pairwise_acc", "judge pw"), ("eval/judge_own_wrong_acc", "own wrong")]


def print_evals(rows: list[dict]) -> None:
    """The evaluations as a table: task accuracy (greedy, with self-reflection, the shares of answers
    reflection fixed and broke, and every answer reflected on once with no judge asked), the share
    of well-formed answers, and the judge (pointwise, on look-alike wrong answers, pairwise, on the
    policy's own mistakes); a column no evaluation has (best of n when off) is left out."""
    columns = [(key, title) for key, title in EVAL_COLUMNS if any(key in r for r in rows)]
    typer.echo(f"{'iteration':>9}" + "".join(f" {title:>9}" for _, title in columns))
    for r in rows:
        typer.echo(f"{r.get('iteration', '-'):>9}" + "".join(f" {r.get(key, float('nan')):>9.3f}"
                                                            for key, _ in columns))


def model_or_given_config(model_dir: Path, config: Path | None, overrides: list[str] | None):
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
    return load_config_or_exit(config, overrides)
