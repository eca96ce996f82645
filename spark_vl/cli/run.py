"""Commands that run SPARK: a whole run as the Prefect flow, one node's training workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from spark_vl.cli.app import SetOpt, app, load_config_or_exit, print_evals
from spark_vl.config import ConfigError


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

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from spark_vl.config import check_paths
    from spark_vl.data import DatasetError
    from spark_vl.layout import check_resumable, metric_rows
    from spark_vl.runio import DamagedOutput

    cfg = load_config_or_exit(config, set_)
    name = run_name or config.stem
    run_dir = Path(cfg.orchestration.runs_dir) / name
    try:
        check_paths(cfg)
        check_resumable(cfg, run_dir)
    except (ConfigError, DamagedOutput) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    from flows.co_evolve import co_evolve

    received: list[int] = []

    def interrupt(signum, frame) -> None:
        """SIGTERM (systemd, Kubernetes, a Prefect worker) ends the run as Ctrl-C does: the flow's
        cleanup runs (MLflow run FAILED, vLLM server and grading workers stopped) and so do the exit
        handlers that stop Prefect's temporary server."""
        received.append(signum)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        co_evolve(config=cfg, run_name=name)
    except (DamagedOutput, DatasetError, OSError) as exc:  # errors that say what to fix: no traceback
        if isinstance(exc, OSError) and exc.errno != errno.ENOSPC:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        signum = received[0] if received else signal.SIGINT
        typer.echo(f"stopped by {signal.Signals(signum).name}; the same command resumes run {name} where it "
                   "stopped", err=True)
        raise typer.Exit(128 + signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    typer.echo(f"run directory: {run_dir}  (metrics: {run_dir / 'metrics.jsonl'}, plot: {run_dir / 'coevolution.png'})")
    print_evals([r for r in metric_rows(run_dir) if "eval/task_acc" in r])


@app.command("train-node")
def train_node(
    run_dir: Annotated[Path, typer.Argument(help="the run's directory, on a filesystem every node shares")],
    iteration: Annotated[int, typer.Argument(help="the iteration to train (its rollouts are verified)")],
    node_rank: Annotated[int, typer.Option(help="this node's line in train.hostfile, from 0")],
) -> None:
    """Start this node's DeepSpeed workers for one iteration's train stage, for clusters whose nodes
    cannot ssh to each other (a scheduler starts this on every node of train.hostfile)."""
    from spark_vl.train.launch import launch_training

    cfg = load_config_or_exit(run_dir / "config.yaml", None)
    if cfg.train.hostfile is None:
        typer.echo(f"error: {run_dir / 'config.yaml'} sets no train.hostfile: train-node is for runs across "
                   "nodes; set train.hostfile to a DeepSpeed hostfile listing them", err=True)
        raise typer.Exit(2)
    try:
        launch_training(cfg.train, run_dir, iteration, node_rank)
    except RuntimeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
