"""Reading a run config: YAML in, dotted `--set` overrides, errors that name the key and the fix;
and the config a saved policy carries beside its weights."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from spark_vl.config.schema import PACKAGED_TEMPLATES, RunConfig
from spark_vl.runio import write_text_atomic


class ConfigError(ValueError):
    """A config file or override that cannot describe a run; the message says what to fix."""


def _describe(error: dict[str, Any], source: str) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        parent = _section_at(error["loc"][:-1])
        allowed = ", ".join(sorted(parent.model_fields)) if parent else "see configs/tiny.yaml"
        return f"{source}: unknown key '{key}'. Allowed here: {allowed}"
    allowed = ""
    if kind == "literal_error":
        allowed = f" Allowed: {error['ctx']['expected']}."
    return f"{source}: '{key}' {error['msg'].lower()} (got {error.get('input')!r}).{allowed}"


def _section_at(loc: tuple) -> type[BaseModel] | None:
    cls: type[BaseModel] = RunConfig
    for part in loc:
        field = cls.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        cls = ann
    return cls


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-5` -> (["train", "lr"], 1e-05); values are read as YAML scalars."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def validate_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, source) for err in exc.errors()]
        raise ConfigError("invalid run config:\n  " + "\n  ".join(lines)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config (None: the built-in defaults) and apply `key=value` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections, not {type(loaded).__name__}")
        data = loaded or {}
    if overrides:
        data = apply_overrides(data, overrides)
        source += " (with --set overrides)"
    return validate_config(data, source)


def save_config(config: RunConfig, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


MODEL_CONFIG = "spark_vl_config.yaml"
MODEL_TEMPLATES = "spark_vl_templates.json"


def save_model_config(config: RunConfig, model_dir: Path) -> None:
    """The run's resolved config inside a saved policy, so that evaluating or judging with it
    later uses the prompts it learned (templates, instruction, pixel bounds); a template file
    travels with it."""
    if config.spark.templates not in PACKAGED_TEMPLATES:
        shutil.copyfile(config.spark.templates, model_dir / MODEL_TEMPLATES)
        config = config.model_copy(update={"spark": config.spark.model_copy(update={"templates": MODEL_TEMPLATES})})
    save_config(config, model_dir / MODEL_CONFIG)


def load_model_config(model_dir: Path, overrides: list[str] | None = None) -> RunConfig | None:
    """The config a saved policy was trained with (None for a checkpoint spark-vl did not train)."""
    if not (Path(model_dir) / MODEL_CONFIG).exists():
        return None
    config = load_config(Path(model_dir) / MODEL_CONFIG, overrides)
    if config.spark.templates == MODEL_TEMPLATES:
        config.spark.templates = str(Path(model_dir) / MODEL_TEMPLATES)
    return config
