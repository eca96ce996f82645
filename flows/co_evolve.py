"""SPARK co-evolution as a Prefect flow: prepare once, then per iteration
prompts -> rollout -> verify -> recycle -> train -> evaluate -> log (and register now and then);
under `rollout.overlap` the next iteration's prompts and rollout run beside train.

Tasks pass the run directory and the iteration, never big objects: each stage reads its inputs
from the run directory and writes its output there atomically, and skips itself when the
output exists. Rerunning with the same run name therefore resumes, in a new flow run too.
"""

from __future__ import annotations

import errno
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import deployment, flow_run

from spark_vl import layout, pipeline, plots, tracking
from spark_vl.config import ConfigError, RunConfig, check_paths, check_triggered, held_out_changes, load_config
from spark_vl.data import DatasetError
from spark_vl.faults import fault_point
from spark_vl.runio import DamagedOutput, read_jsonl
from spark_vl.workspace import Workspace

_workspaces: dict[Path, Workspace] = {}


def _ws(cfg: RunConfig, run_dir: str) -> Workspace:
    """The process's workspace for a run directory: keeps the policy loaded between tasks."""
    key = Path(run_dir)
    if key not in _workspaces or _workspaces[key].config != cfg:
        if key in _workspaces:
            _workspaces[key].close()
        _workspaces[key] = Workspace(cfg, key)
    return _workspaces[key]


def _close_workspace(run_dir: str) -> None:
    """Stop the run's vLLM server and grading pool, also when the run failed."""
    if Path(run_dir) in _workspaces:
        _workspaces.pop(Path(run_dir)).close()


def transient(task, task_run, state) -> bool:
    """Retry a failed task unless its error is one a retry cannot mend: bad input, a damaged
    file, a full disk (the error says what to fix)."""
    error = state.result(raise_on_failure=False)
    permanent = (ConfigError, DatasetError, DamagedOutput, FileNotFoundError, NotADirectoryError)
    return not isinstance(error, permanent) and getattr(error, "errno", None) != errno.ENOSPC


def stage_task(stage):
    """`stage(workspace, k)` of `spark_vl.pipeline` as a task named after it (`rollout-k3`)."""
    name = stage.__name__.removeprefix("stage_")

    @task(name=name, task_run_name=f"{name}-k{{k}}", cache_policy=NO_CACHE)
    def run_stage(cfg: RunConfig, run_dir: str, k: int) -> None:
        stage(_ws(cfg, run_dir), k)

    return run_stage


prompts = stage_task(pipeline.stage_prompts)
rollout = stage_task(pipeline.stage_rollout)
verify = stage_task(pipeline.stage_verify)
recycle = stage_task(pipeline.stage_recycle)
train = stage_task(pipeline.stage_train)
evaluate = stage_task(pipeline.stage_evaluate)


@task(name="prepare", cache_policy=NO_CACHE)
def prepare(cfg: RunConfig, run_dir: str) -> None:
    pipeline.prepare_run(cfg, Path(run_dir), fetch_model=tracking.resolve_model)


@task(name="log", task_run_name="log-k{k}", cache_policy=NO_CACHE)
def log(cfg: RunConfig, run_dir: str, k: int, mlflow_run_id: str) -> dict[str, float]:
    row = pipeline.stage_log(_ws(cfg, run_dir), k)
    rows = layout.metric_rows(Path(run_dir))
    create_markdown_artifact(key="spark-metrics", markdown=pipeline.metrics_markdown(row),
                             description=f"SPARK metrics, iteration {k}")
    plot = plots.plot_coevolution(rows, Path(run_dir) / "coevolution.png") if "eval/task_acc" in row else None
    audit = layout.iter_dir(Path(run_dir), k) / layout.VERIFIER_DISAGREEMENTS
    # Also what MLflow missed before; then this evaluation's audit, when MLflow answers.
    if tracking.log_step(mlflow_run_id, rows, plot) and audit.exists() and (cases := list(read_jsonl(audit))):
        tracking.log_table(mlflow_run_id, cases, f"audit/verifier_disagreements-k{k:04d}.json")
    return row


@task(name="register", task_run_name="register-k{k}", cache_policy=NO_CACHE)
def register(cfg: RunConfig, run_dir: str, k: int, mlflow_run_id: str, held_out_changed: list[str]) -> int:
    """Register the policy of iteration k; move `champion` to it when it beats the champion, unless
    the run changed the held-out set its deployment measures the champion on (`held_out_changed`)."""
    marker = layout.iter_dir(Path(run_dir), k) / "registered.json"
    if marker.exists():  # registered by an earlier flow run of this run directory
        return layout.read_json(marker)["version"]
    task_acc, eval_set = layout.latest_task_accuracy(Path(run_dir), k), pipeline.held_out_set(cfg, Path(run_dir))
    fault_point("register", k, "before")
    model = cfg.tracking.registered_model
    version = tracking.register_version(mlflow_run_id, layout.policy_dir(Path(run_dir), k), model, task_acc, eval_set)
    fault_point("register", k, "after")
    if held_out_changed:
        get_run_logger().warning(
            "%s version %s is registered but cannot become champion: the trigger changed %s, which decide the "
            "held-out set the deployment compares champions on", model, version, ", ".join(held_out_changed))
    else:
        with _champion_lock(model):  # two runs finishing together compare-and-move one at a time
            tracking.promote_if_better(model, version, task_acc, k, eval_set)
    tracking.log_artifact(mlflow_run_id, Path(run_dir) / "config.yaml")
    samples = layout.iter_dir(Path(run_dir), k) / "eval_samples.jsonl"
    if samples.exists() and (plot := plots.plot_reliability(read_jsonl(samples), Path(run_dir) / "reliability.png")):
        tracking.log_artifact(mlflow_run_id, plot)
    for name, rows in pipeline.sample_rows(Path(run_dir), k).items():
        tracking.log_table(mlflow_run_id, rows, f"samples/{name}-k{k:04d}.json")
    layout.write_json(marker, {"version": version, "model": model})
    return version


def _champion_lock(model: str):
    """A global concurrency limit of one slot per registered model, made on first use."""
    name = f"spark-vl-champion-{model}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:  # another run made it since we looked
                pass
    return concurrency(name, occupy=1, strict=True)


def _check_deployment_allows(cfg: RunConfig, allow_keys: list[str] | None) -> list[str]:
    """A run triggered through a deployment changes no program, host or environment key and
    registers under no other model name than its deployment's own parameters set or allow
    (`allow_keys`, read from the deployment, not from the trigger). Returns the keys by which its
    held-out set differs from the deployment's when it registers under the deployment's model: it
    may add versions there but not decide the champion."""
    if deployment.id is None:
        return []  # started in this process: the caller chose the config
    with get_client(sync_client=True) as client:  # the deployment's parameters, not the trigger's
        deployed = client.read_deployment(UUID(deployment.id)).parameters or {}
    if (allow_keys or []) != (deployed.get("allow_keys") or []):
        raise ConfigError("allow_keys can only be set in the deployment (prefect.yaml), not by a trigger")
    if deployed.get("config"):
        baseline = RunConfig.model_validate(deployed["config"])
    else:
        baseline = load_config(deployed.get("config_path") or "configs/tiny.yaml", deployed.get("overrides") or [])
    check_triggered(cfg, baseline, allow_keys or [])
    if cfg.tracking.registered_model != baseline.tracking.registered_model:
        return []  # another model, allowed: its champion moves only on its own held-out set (eval_set)
    return held_out_changes(cfg, baseline)


def _one_name() -> str:
    """The flow run's name: the `run_name` parameter when given, so one run has one name in Prefect,
    its run folder and MLflow; else the name Prefect gave it."""
    return flow_run.parameters.get("run_name") or flow_run.get_name()


@flow(name="co-evolve", log_prints=True, flow_run_name=_one_name)
def co_evolve(config: RunConfig | None = None, config_path: str | None = None,
              overrides: list[str] | None = None, run_name: str | None = None,
              allow_keys: list[str] | None = None) -> str:
    """Run SPARK as a chain of stage tasks over one run folder.

    Args:
        config: a whole run config (every section as a form); leave empty to use config_path.
        config_path: a YAML run config in the worker's checkout, e.g. configs/tiny.yaml.
        overrides: section.key=value changes to it, e.g. train.iterations=20.
        run_name: the run's one name: its folder under orchestration.runs_dir, its MLflow run and
            this flow run's name (Prefect's own run name is replaced by it); the same name resumes.
            Empty: the name Prefect gives the flow run.
        allow_keys: set by the deployment in prefect.yaml only, never by a trigger (a run that sets
            it fails): the privileged keys the deployment's triggers may change.
    """
    cfg = config or load_config(config_path or "configs/tiny.yaml", overrides or [])
    held_out_changed = _check_deployment_allows(cfg, allow_keys)
    name = run_name or flow_run.get_name() or "spark"
    run_dir = str(Path(cfg.orchestration.runs_dir) / name)
    retry = {"retries": cfg.orchestration.retries, "retry_delay_seconds": cfg.orchestration.retry_delay_s,
             "retry_condition_fn": transient}

    check_paths(cfg)  # a missing file fails the flow now, not a task after minutes of work
    prepare.with_options(**retry)(cfg, run_dir)
    mlflow_run_id = tracking.open_run(cfg, Path(run_dir), name, {"prefect.flow_run_id": str(flow_run.get_id())})
    tracking.log_datasets(mlflow_run_id, pipeline.dataset_tables(cfg, Path(run_dir)))
    status = "FAILED"
    try:
        evaluate.with_options(**retry)(cfg, run_dir, 0)
        log.with_options(**retry)(cfg, run_dir, 0, mlflow_run_id)
        for k in range(1, cfg.train.iterations + 1):
            for stage in (prompts, rollout, verify, recycle):
                stage.with_options(**retry)(cfg, run_dir, k)
            ahead = None
            if pipeline.rolls_ahead(cfg, k):  # rollout.overlap: iteration k+1 samples while k trains
                prompts.with_options(**retry)(cfg, run_dir, k + 1)
                ahead = rollout.with_options(**retry).submit(cfg, run_dir, k + 1)
            try:
                train.with_options(**retry)(cfg, run_dir, k)
            finally:
                if ahead is not None:
                    ahead.wait()
            if ahead is not None:
                ahead.result()  # raises what the rollouts raised
            if pipeline.evaluation_due(cfg, k):
                evaluate.with_options(**retry)(cfg, run_dir, k)
            log.with_options(**retry)(cfg, run_dir, k, mlflow_run_id)
            every = cfg.tracking.register_every
            if k == cfg.train.iterations or (every and k % every == 0):
                register.with_options(**retry)(cfg, run_dir, k, mlflow_run_id, held_out_changed)
        status = "FINISHED"
    finally:
        _close_workspace(run_dir)  # stops the vLLM server the rollouts started
        tracking.end_run(mlflow_run_id, status)
    return mlflow_run_id
