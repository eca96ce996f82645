"""MLflow: one run per flow run, per-iteration metrics, artifacts, the co-evolution plot, registry.

The only package of the library that knows MLflow (policy_model.py: a registered policy as an
MLflow Model). Every call takes the MLflow run id
explicitly (Prefect may run a task in a thread where `mlflow.active_run()` is None).
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from spark_vl.config import RunConfig, dotted, load_model_config
from spark_vl.faults import fault_point
from spark_vl.runio import logger
from spark_vl.tracking.policy_model import policy_folder, save_policy_model

DEFAULT_DB = Path("runs") / "mlflow.db"


# MLflow 3 shows an experiment without this tag as a GenAI one ("Evaluation runs").
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def _default_uri() -> str:
    return f"sqlite:///{DEFAULT_DB.resolve()}"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else SQLite at runs/mlflow.db under the working directory
    (artifacts beside it in runs/mlruns)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
    return _default_uri()


def _artifact_location() -> str | None:
    """runs/mlruns for the default store; a configured store or server decides for itself. (The
    URI is compared, not the variable: `mlflow.set_tracking_uri` sets MLFLOW_TRACKING_URI too.)"""
    if tracking_uri() != _default_uri():
        return None
    return (DEFAULT_DB.parent / "mlruns").resolve().as_uri()


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    """The experiment `name`, created (artifacts under runs/mlruns by default) when missing and
    tagged as model training."""
    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        try:
            return mlflow_client.create_experiment(name, _artifact_location(), tags=EXPERIMENT_TAGS)
        except mlflow.exceptions.MlflowException as error:  # another run made it since we looked
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = mlflow_client.get_experiment_by_name(name)
    if found.tags.get("mlflow.experimentKind") != EXPERIMENT_TAGS["mlflow.experimentKind"]:
        for key, value in EXPERIMENT_TAGS.items():
            mlflow_client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def client() -> MlflowClient:
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def open_run(config: RunConfig, run_dir: Path, run_name: str, tags: dict[str, str] | None = None) -> str:
    """The MLflow run of this run directory: found by its tag when resuming (and RUNNING again),
    else created with the config as params and tags for the commit and config hash."""
    mlflow_client = client()
    experiment = experiment_id(mlflow_client, config.tracking.experiment)
    run_dir_tag = str(run_dir.resolve())
    found = mlflow_client.search_runs([experiment], filter_string=f"tags.`spark_vl.run_dir` = '{run_dir_tag}'",
                                      max_results=1)
    if found:
        mlflow_client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    all_tags = {"spark_vl.run_dir": run_dir_tag, "git_commit": git_commit(), "config_hash": config.digest(),
                **(tags or {})}
    run = mlflow_client.create_run(experiment, run_name=run_name, tags=all_tags)
    params = [Param(k, str(v)[:6000]) for k, v in dotted(config.model_dump(mode="json")).items()]
    for start in range(0, len(params), 100):
        mlflow_client.log_batch(run.info.run_id, params=params[start:start + 100])
    return run.info.run_id


# How PostgreSQL, SQLite and MySQL word a duplicate key, as the SQL store passes them on.
DUPLICATE_KEY = ("duplicate key value", "UNIQUE constraint failed", "Duplicate entry")


def log_datasets(run_id: str, tables: dict[str, tuple[Path, list[dict[str, str]]]]) -> None:
    """The run's datasets as MLflow dataset inputs (name, source file, digest, context train or
    eval), so the run and the versions it registers show what the policy learned from."""
    inputs = []
    for split, (path, rows) in tables.items():
        dataset = mlflow.data.from_pandas(pd.DataFrame(rows), source=LocalArtifactDatasetSource(str(path)),
                                          name=f"{path.stem}-{split}")
        # What mlflow.log_input sends, for a run given by id (the fluent call needs an active run).
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", split)]))
    mlflow_client = client()
    for attempt in range(3):
        try:
            mlflow_client.log_inputs(run_id, datasets=inputs)
            return
        except mlflow.exceptions.MlflowException as error:
            # MLflow's SQL store looks for the experiment's dataset, then inserts it: runs starting
            # together on one data set race to insert it, and all but one fail on its key. The
            # losers' transactions rolled back, so a second try finds the dataset and links it.
            if attempt == 2 or not any(sign in error.message for sign in DUPLICATE_KEY):
                raise


def end_run(run_id: str, status: str) -> None:
    """FINISHED or FAILED, with an end time (a killed run stays RUNNING until it is resumed)."""
    client().set_terminated(run_id, status)


def logged_steps(run_id: str, key: str = "iteration") -> set[int]:
    """Iterations whose metrics are already in MLflow, so a resumed run logs none twice."""
    return {m.step for m in client().get_metric_history(run_id, key)}


def log_missing_iterations(run_id: str, rows: list[dict[str, float]]) -> list[int]:
    """Every row of metrics.jsonl (the source of truth) that MLflow lacks, one batch per
    iteration with step = iteration; an iteration MLflow already has is never logged twice.
    Returns the iterations logged."""
    logged = logged_steps(run_id)
    added = []
    for row in rows:
        k = int(row["iteration"])
        if k in logged:
            continue
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, k) for key, value in row.items()
                 if key != "iteration" and isinstance(value, (int, float)) and not math.isnan(float(value))]
        batch.append(Metric("iteration", float(k), now, k))  # last: it marks the iteration as logged
        client().log_batch(run_id, metrics=batch)
        added.append(k)
    return added


def log_step(run_id: str, rows: list[dict[str, float]], plot: Path | None = None) -> bool:
    """After an iteration: MLflow gets every row of metrics.jsonl it lacks, and the plot. When the
    tracking server does not answer (after MLflow's own retries with backoff), warn and go on:
    metrics.jsonl keeps the rows and the next step, or a resume, sends them. Returns whether
    MLflow answered."""
    try:
        log_missing_iterations(run_id, rows)
        if plot is not None:
            log_artifact(run_id, plot)
        return True
    except mlflow.exceptions.MlflowException as exc:
        logger.warning("MLflow did not answer (%s); iterations up to %d stay in metrics.jsonl and are sent "
                       "with the next one", str(exc).splitlines()[0][:200], rows[-1]["iteration"])
        return False


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    client().log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def log_artifact(run_id: str, path: Path, folder: str | None = None) -> None:
    client().log_artifact(run_id, str(path), folder)


def log_table(run_id: str, rows: list[dict[str, Any]], name: str) -> None:
    """Rows as an MLflow table artifact (shown in the UI's artifact view)."""
    if not rows:
        return
    columns = sorted({key for row in rows for key in row})
    data = {c: [str(row.get(c, "")) for row in rows] for c in columns}
    client().log_table(run_id, data=data, artifact_file=name)


def version_tags(policy_dir: Path) -> dict[str, str]:
    """What the registry shows of a policy at a glance: where it started and how it was trained."""
    trained = load_model_config(policy_dir)
    if trained is None:
        return {}
    return {"base_model": trained.model.path or "tiny (built offline)", "spark.enabled": str(trained.spark.enabled),
            "spark.judge_credit": str(trained.spark.judge_credit), "train.iterations": str(trained.train.iterations)}


def register_version(run_id: str, policy_dir: Path, name: str, task_acc: float, eval_set: str = "") -> int:
    """Log the policy as an MLflow Model (policy_model.py) in the run's artifacts (the server's
    artifact store when there is one) and register it as a new version of `name`, alias `candidate`;
    `eval_set`: the digest of the held-out set `task_acc` was measured on."""
    mlflow_client = client()
    folder = f"policy/{policy_dir.name}"
    try:
        mlflow_client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        try:
            mlflow_client.create_registered_model(name)
        except mlflow.exceptions.MlflowException as error:  # another run made it since we looked
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    # A run killed after the registry call and before its marker registered this policy already.
    earlier = [v for v in mlflow_client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
               if v.tags.get("spark_vl.policy") == policy_dir.name]
    version = earlier[0] if earlier else _log_model_version(run_id, policy_dir, folder, name, {
        **version_tags(policy_dir), "task_acc": repr(task_acc),  # exact: compared below
        "eval_set": eval_set, "spark_vl.policy": policy_dir.name})
    mlflow_client.set_registered_model_alias(name, "candidate", version.version)
    return int(version.version)


def _log_model_version(run_id: str, policy_dir: Path, folder: str, name: str, tags: dict[str, str]):
    """`policy_dir` as an MLflow Model in the run's artifact `folder`, registered as a new version of `name`."""
    mlflow_client = client()
    with tempfile.TemporaryDirectory() as tmp:
        mlflow_client.log_artifacts(run_id, str(save_policy_model(policy_dir, Path(tmp) / "model")), folder)
    source = f"{mlflow_client.get_run(run_id).info.artifact_uri}/{folder}"
    return mlflow_client.create_model_version(name, source=source, run_id=run_id, tags=tags)


def register_again(name: str, version: int, experiment: str = "spark-vl") -> int:
    """Register a version that is a plain folder of weights (registered before versions were MLflow
    Models) again, as an MLflow Model: a new version with its tags, in an MLflow run of its own, and
    its aliases moved to it. Returns the new version; the old one is kept."""
    mlflow_client = client()
    old = mlflow_client.get_model_version(name, str(version))
    with tempfile.TemporaryDirectory() as tmp:
        downloaded = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
        if (downloaded / "MLmodel").is_file():
            raise ValueError(f"{name} version {version} is an MLflow Model already: nothing to register again")
        run = mlflow_client.create_run(experiment_id(mlflow_client, experiment), run_name=f"{name}-v{version}-again",
                                       tags={"spark_vl.registered_again": f"{name}/{version}"})
        new = _log_model_version(run.info.run_id, downloaded, "policy/" + old.tags.get("spark_vl.policy", "policy"),
                                 name, {**old.tags, "spark_vl.registered_again_from": str(version)})
        mlflow_client.set_terminated(run.info.run_id)
    for alias in old.aliases:
        mlflow_client.set_registered_model_alias(name, alias, new.version)
    return int(new.version)


def promote_if_better(name: str, version: int, task_acc: float, k: int = 0, eval_set: str = "") -> bool:
    """Move `champion` to `version` when its held-out task accuracy beats the champion's, measured
    on the same held-out set (`eval_set`, a digest: a run with its own, easier set cannot take the
    champion). A compare-and-move that two runs must not interleave (fault point
    `promote:K:before` sits between the two)."""
    mlflow_client = client()
    try:
        champion = mlflow_client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        champion = None
    best = float(champion.tags.get("task_acc", "-inf")) if champion else -math.inf
    theirs = champion.tags.get("eval_set", "") if champion else ""
    fault_point("promote", k, "before")
    if theirs and eval_set and theirs != eval_set:
        logger.warning("%s version %s (task accuracy %.3f) was measured on another held-out set than the champion, "
                       "version %s (digest %s, the champion's %s): not compared. To compare them, evaluate both on "
                       "one set (spark-vl eval -m models:/%s/N --data ...) and move the alias by hand.",
                       name, version, task_acc, champion.version, eval_set, theirs, name)
        return False
    if task_acc <= best:
        return False
    mlflow_client.set_registered_model_alias(name, "champion", str(version))
    logger.info("%s version %s is the new champion (task accuracy %.3f > %.3f)", name, version, task_acc, best)
    return True


def registry_summary(name: str) -> str:
    """What the registry holds for `name`: how many versions and where its aliases point."""
    mlflow_client = client()
    try:
        model = mlflow_client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        return f"{name}: not registered yet (a run's first registration creates it)"
    aliases = ", ".join(f"{alias} -> version {version}" for alias, version in sorted(model.aliases.items()))
    versions = len(mlflow_client.search_model_versions(f"name='{name}'"))
    return f"{name}: {versions} version(s); {aliases or 'no aliases'}"


def resolve_model(uri: str, dest: Path | None = None) -> Path:
    """A local checkpoint directory for a path or a `models:/NAME@alias` URI (the policy folder
    inside the registered MLflow Model)."""
    if not uri.startswith("models:/"):
        return Path(uri)
    client()
    return policy_folder(Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dest) if dest else None)))


def log_summary(experiment: str, run_name: str, metrics: dict[str, float], artifacts: list[Path],
                tags: dict[str, str] | None = None) -> str:
    """One MLflow run holding a summary (e.g. a benchmark table): metrics, files, commit tag."""
    mlflow_client = client()
    run = mlflow_client.create_run(experiment_id(mlflow_client, experiment), run_name=run_name,
                                   tags={"git_commit": git_commit(), **(tags or {})})
    now = int(time.time() * 1000)
    mlflow_client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()
                                                      if not math.isnan(float(v))])
    for path in artifacts:
        mlflow_client.log_artifact(run.info.run_id, str(path))
    mlflow_client.set_terminated(run.info.run_id)
    return run.info.run_id
