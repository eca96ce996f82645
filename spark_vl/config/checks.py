"""Checks of a config before a run starts: every file it names is there, and a run triggered
through a deployment changes no privileged key and publishes where its deployment does; which keys
two configs differ in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spark_vl.config.loading import ConfigError
from spark_vl.config.schema import PACKAGED_TEMPLATES, RunConfig


def dotted(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted keys (`train.lr`), the names overrides and errors use."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changes(before: RunConfig, after: RunConfig) -> dict[str, tuple[Any, Any]]:
    """Each dotted key whose value differs between two configs, sorted: (its value before, after)."""
    old, new = dotted(before.model_dump(mode="json")), dotted(after.model_dump(mode="json"))
    return {key: (old.get(key), new.get(key)) for key in sorted(old.keys() | new.keys())
            if old.get(key) != new.get(key)}


def check_paths(config: RunConfig) -> None:
    """Raise ConfigError naming every file or folder the config points at that is not there, so a
    run stops before it starts instead of failing (and being retried) midway."""
    problems = []

    def need(key: str, value: str | None, what: str, is_dir: bool = False) -> None:
        path = Path(value) if value else None
        if path is not None and not (path.is_dir() if is_dir else path.exists()):
            problems.append(f"{key}: {value} does not exist ({what})")

    need("data.train_path", config.data.train_path, "a JSONL, JSON or Parquet file or a datasets folder; "
         "null uses the built-in tasks")
    need("data.eval_path", config.data.eval_path, "held-out prompts; null uses the built-in held-out split, "
         "or the training set when data.train_path is set")
    model_path = config.model.path
    if model_path and not model_path.startswith("models:/"):
        if not (Path(model_path) / "config.json").exists():
            problems.append(f"model.path: {model_path} is not a Hugging Face checkpoint folder (no config.json); "
                            "give a local checkpoint folder, a models:/NAME@ALIAS registry URI, or null for the "
                            "tiny model")
    need("train.deepspeed_config", config.train.deepspeed_config, "a DeepSpeed JSON, e.g. "
         "configs/deepspeed/zero0.json")
    need("train.hostfile", config.train.hostfile, "a DeepSpeed hostfile; see infra/deepspeed/hostfile.example")
    if config.reward.function and ".py:" in config.reward.function:
        need("reward.function", config.reward.function.rsplit(":", 1)[0], "a Python file, as path/to/file.py:fn")
    if config.spark.templates not in PACKAGED_TEMPLATES:
        need("spark.templates", config.spark.templates, "a template JSON file, or `default` / `tiny`")
    vllm = config.rollout.vllm
    if config.rollout.engine == "vllm" and vllm.url is None:
        need("rollout.vllm.python", vllm.python, "the vLLM environment's interpreter: run `make vllm-env`, or set "
             "rollout.vllm.url to a running server")
    if problems:
        raise ConfigError("the config names what is not there:\n  " + "\n  ".join(problems))


# Keys that name a program to execute, its arguments or environment, or a host to reach: a run
# triggered through a deployment (the UI, the API) may not change them; the deployment may.
PRIVILEGED_KEYS = ("rollout.vllm.python", "rollout.vllm.args", "rollout.vllm.env", "rollout.vllm.url",
                   "rollout.vllm.host", "train.hostfile", "train.launcher", "train.master_addr", "reward.function")

# Where a run publishes its policy: a triggered run registers under its deployment's model name
# unless the deployment allows this key.
PUBLISHING_KEYS = ("tracking.registered_model",)

# What decides the held-out set a run's task accuracy is measured on (and so the champion).
HELD_OUT_KEYS = ("data.train_path", "data.eval_path", "data.builtin", "data.instruction", "eval.n_task")


def _value(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _changed(config: RunConfig, deployed: RunConfig, keys: tuple[str, ...]) -> list[str]:
    return [key for key in keys if _value(config, key) != _value(deployed, key)]


def check_triggered(config: RunConfig, deployed: RunConfig, allowed: list[str]) -> None:
    """Raise ConfigError when a triggered run sets a privileged or publishing key to other than its
    deployment's config does, unless the deployment allows that key (or a section above it)."""
    def refused(keys: tuple[str, ...]) -> list[str]:
        return [key for key in _changed(config, deployed, keys)
                if not any(key == a or key.startswith(a + ".") for a in allowed)]

    fix = ("Set it in the deployment's config, or list the key in the deployment's `allow_keys` parameter in "
           "prefect.yaml and deploy again")
    if programs := refused(PRIVILEGED_KEYS):
        raise ConfigError(
            "a run triggered through a deployment may not set " + ", ".join(programs) + " (programs, their "
            "arguments and environment, hosts): the worker would run or reach what the trigger names. " + fix)
    if refused(PUBLISHING_KEYS):
        raise ConfigError(
            f"a run triggered through this deployment registers its policy as {deployed.tracking.registered_model!r}, "
            f"the deployment's model, and may not set tracking.registered_model to "
            f"{config.tracking.registered_model!r}. " + fix)


def held_out_changes(config: RunConfig, deployed: RunConfig) -> list[str]:
    """The keys by which a triggered run's held-out set differs from its deployment's: such a run
    may register a version of the deployment's model, but not decide its champion."""
    return _changed(config, deployed, HELD_OUT_KEYS)
