"""One typed config for a run: YAML in, dotted CLI overrides, errors that name the key.

Every number a run depends on (batch and group sizes, lengths, seeds, rates) lives here;
library code receives a section of this object and hard-codes none of them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from spark_vl.records import Kind
from spark_vl.runio import write_text_atomic


class ConfigError(ValueError):
    """A config file or override that cannot describe a run; the message says what to fix."""


PACKAGED_TEMPLATES = ("default", "tiny")  # template pools shipped in spark_vl/recycle; anything else is a file


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(Section):
    """Dimensions of the tiny model built offline (head size 32 so vLLM can serve it)."""

    family: Literal["qwen2_5_vl", "qwen2_vl", "qwen3_vl"] = "qwen2_5_vl"
    vocab_size: int = Field(512, ge=300, le=65536)
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(256, ge=16)
    vision_hidden_size: int = Field(64, ge=16)
    vision_depth: int = Field(2, ge=1)
    vision_heads: int = Field(2, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> "TinyModelConfig":
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if (self.hidden_size // self.num_heads) % 8:
            raise ValueError("head size (hidden_size / num_heads) must be a multiple of 8 for mRoPE")
        if self.vision_hidden_size % self.vision_heads:
            raise ValueError("vision_hidden_size must be a multiple of vision_heads")
        return self


class ModelConfig(Section):
    """Which checkpoint to train: a local Hugging Face directory, or the tiny one built offline."""

    path: str | None = Field(None, description="checkpoint directory; null builds the tiny model")
    tiny: TinyModelConfig = TinyModelConfig()
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    min_pixels: int = Field(112 * 112, ge=28 * 28)
    max_pixels: int = Field(112 * 112, ge=28 * 28)

    @model_validator(mode="after")
    def _pixel_bounds(self) -> "ModelConfig":
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


class BuiltinDataConfig(Section):
    """The built-in synthetic visual tasks rendered with PIL."""

    families: list[Literal["colour", "count", "position", "size", "arithmetic"]] = ["colour", "count"]
    difficulty: int = Field(1, ge=1, le=3)
    image_size: int = Field(112, ge=56, le=1024)
    n_train: int = Field(2000, ge=1)
    n_eval: int = Field(256, ge=1)
    seed: int = 0


class DataConfig(Section):
    """Where prompts come from: dataset files, or the built-in tasks when no path is given."""

    train_path: str | None = None
    eval_path: str | None = None
    builtin: BuiltinDataConfig = BuiltinDataConfig()
    instruction: str = Field(
        "Answer with \\boxed{}.",
        description="appended to every task question (the reference uses a reason-then-box instruction)",
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1, description="images larger than this are refused as decompression bombs"
    )


class VLLMConfig(Section):
    """The vLLM OpenAI-compatible server behind `rollout.engine: vllm`: started by the run (in its
    own environment, see docs/scaling.md), or already running at `url`."""

    url: str | None = Field(None, description="a server someone else runs; null: the run starts one")
    served_model_name: str = "policy"
    python: str = Field(".venv-vllm/bin/python", description="interpreter of the vLLM environment")
    host: str = Field("127.0.0.1", description="listen address; nothing beyond loopback unless set here")
    port: int = Field(0, ge=0, le=65535, description="0: a free port")
    args: list[str] = Field(
        ["--dtype", "float32", "--enforce-eager", "--distributed-executor-backend", "uni",
         "--max-model-len", "1024", "--limit-mm-per-prompt", '{"image": 1, "video": 0}'],
        description="extra server arguments (these defaults suit the tiny model on a CPU)")
    env: dict[str, str] = Field(
        {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"},
        description="extra environment of the server process")
    startup_timeout_s: float = Field(600.0, gt=0)
    request_timeout_s: float = Field(600.0, gt=0)
    max_concurrent_requests: int = Field(32, ge=1)
    sleep_during_train: bool = Field(False, description="release GPU memory while the policy trains")


class FilterGroupsConfig(Section):
    """DAPO's dynamic sampling (verl's `algorithm.filter_groups`): when task groups whose rewards
    all agree leave the batch short, sample more task prompts until `prompts_per_batch` groups
    differ. Agreeing groups stay in the rollouts: they carry no gradient, but recycling turns them
    into judge and reflection prompts."""

    enable: bool = False
    max_num_gen_batches: int = Field(3, ge=1, description="task batches sampled per iteration at most, "
                                     "the first included")


class RolloutConfig(Section):
    engine: Literal["hf", "vllm"] = "hf"
    prompts_per_batch: int = Field(16, ge=1)
    group_size: int = Field(8, ge=2, description="sampled responses per prompt (n)")
    kind_group_size: dict[Kind, Annotated[int, Field(ge=2)]] = Field(
        {}, description="responses per prompt for each prompt kind (as `kind_temperature`); kinds not named "
        "use `group_size`. More judge samples per prompt give the verdict more signal per step")
    temperature: float = Field(1.0, gt=0)
    kind_temperature: dict[Kind, Annotated[float, Field(gt=0)]] = Field(
        {}, description="sampling temperature per prompt kind (solve, judge_pointwise, judge_pairwise, "
        "reflect_cot, reflect_answer); kinds not named use `temperature`. Training scores each "
        "response under the temperature it was sampled with")
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(24, ge=1)
    verify_timeout_s: float = Field(5.0, gt=0, description="hard deadline to grade one response")
    verify_workers: int = Field(2, ge=1, description="grading processes")
    seed: int = 0
    filter_groups: FilterGroupsConfig = FilterGroupsConfig()
    vllm: VLLMConfig = VLLMConfig()

    def temperature_for(self, kind: str) -> float:
        return self.kind_temperature.get(kind, self.temperature)

    def group_size_for(self, kind: str) -> int:
        return self.kind_group_size.get(kind, self.group_size)


class RewardConfig(Section):
    """Your own task reward beside the built-in graders (EasyR1's `reward_function`, verl's
    `custom_reward_function`)."""

    function: str | None = Field(
        None, description="`path/to/file.py:fn` or `module:fn`, called as fn(response, answer, prompt) -> "
        "float in [0, 1] for task and reflection responses, in the grading workers under "
        "`rollout.verify_timeout_s` (a hang or an error scores 0); null: the built-in grader")


class SparkConfig(Section):
    """Recycling of verified rollouts into judge and self-reflection prompts."""

    enabled: bool = True
    pointwise_prob: float = Field(0.3, ge=0, le=1, description="pointwise share for mixed groups")
    judge_cap: float = Field(0.5, ge=0, le=1, description="judge samples kept, as a share of a batch")
    reflect_cap: float = Field(0.5, ge=0, le=1, description="reflection samples kept, as a share")
    reflect_cot_share: float = Field(0.5, ge=0, le=1)
    templates: str = Field("default", description="prompt template pools: default, tiny, or a JSON file")
    balance_judge_labels: bool = Field(True, description="equal correct and wrong pointwise judge samples")
    pair_judge_answers: bool = Field(
        False, description="with balance_judge_labels: each pointwise sample is kept beside its counterpart, "
        "the same proposed answer for another image of the same question with the other label, so the "
        "proposed answer alone predicts no verdict")
    balance_judge_advantages: bool = Field(
        False, description="scale judge advantages so each label (Yes/No, A/B) pushes with equal total weight "
        "per batch: the verdict's marginal holds instead of drifting to one answer for all")
    judge_credit: Literal["reply", "verdict", "claims"] = Field(
        "reply", description="which tokens of a judge reply carry its advantage: the whole reply; only the "
        "verdict in its box when the reply passes `judge_reply_check` (a malformed reply: all of it); or "
        "`claims`: the verdict so, and what the reply says the image shows with the advantage of its own "
        "check against the ground truth (judging then trains the policy's reading of the image too)")
    judge_reply_check: Literal["verdict", "format", "restate", "grounded"] = Field(
        "format", description="judge reward 1 needs: the right verdict only; also the reply format; "
        "also the proposed answer restated exactly; also the image described as the ground truth")


class WarmupConfig(Section):
    """Supervised format warm-up for the tiny model (real checkpoints skip it)."""

    enabled: bool = True
    steps: int = Field(200, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    verdict_accuracy: float = Field(0.5, ge=0, le=1, description="share of warm-up judge verdicts that are "
                                    "right: 0.5 says nothing (judging comes from SPARK alone); above it, a weak "
                                    "prior like a pretrained model's")
    above_chance: float | None = Field(
        None, ge=0, le=1, description="after `steps`, keep warming up until greedy accuracy on a probe of "
        "held-back train samples beats chance (1 / the question's number of answers) by this margin for "
        "every question, checked every `check_every` steps up to `max_steps`; null: stop after `steps`")
    check_every: int = Field(25, ge=1)
    max_steps: int = Field(1000, ge=0, description="with `above_chance`: stop here even below the margin")
    probe_size: int = Field(128, ge=1, description="with `above_chance`: train samples (the last ones) held "
                            "back from the warm-up to check it on")

    @model_validator(mode="after")
    def _steps_fit(self) -> "WarmupConfig":
        if self.above_chance is not None and self.max_steps < self.steps:
            raise ValueError("max_steps must be at least steps when above_chance is set")
        return self


class LoraConfig(Section):
    """LoRA adapters (PEFT) on the language model: only they train; the base keeps its weights and,
    with the adapters disabled, is the KL reference (no second copy in memory). The vision tower is
    left out, as EasyR1 does: vLLM cannot serve adapters on it. Names as in verl (`lora_rank`,
    `lora_alpha`, `target_modules`) and PEFT."""

    rank: int = Field(0, ge=0, description="adapter rank (verl `lora_rank`); 0: full fine-tuning")
    alpha: float = Field(16.0, gt=0, description="`lora_alpha`: an adapter's update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="`lora_dropout`")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names adapted: the language model's attention and MLP projections")
    exclude_modules: str = Field(r".*visual.*", description="regex of modules never adapted: the vision tower")


class TrainConfig(Section):
    iterations: int = Field(20, ge=1)
    processes_per_node: int = Field(1, ge=1, description="above 1: the train task launches DeepSpeed workers")
    hostfile: str | None = Field(None, description="DeepSpeed hostfile: train across these nodes")
    launcher: Literal["torchrun", "deepspeed"] = Field(
        "torchrun", description="how workers start on one node (a hostfile always uses `deepspeed`)")
    master_addr: str | None = Field(None, description="with a hostfile: the address of node 0, where the workers "
                                    "meet; null: the first host (asked over ssh for its address)")
    master_port: int = Field(29500, ge=1, le=65535, description="with a hostfile: the port the workers meet at "
                             "on node 0 (one node picks a free port itself)")
    gradient_checkpointing: bool = False
    lr: float = Field(5e-4, gt=0)
    micro_batch_size: int = Field(32, ge=1)
    updates_per_batch: int = Field(1, ge=1, description="optimizer steps on each rollout batch (GRPO's mu); "
                                   "above 1 the clipped ratio keeps later steps near the sampling policy")
    ppo_mini_batch_size: int | None = Field(
        None, ge=1, description="prompt groups per optimizer step (verl's ppo_mini_batch_size): a batch's groups "
        "with signal, shuffled, make several steps; null: one step on all of them")
    clip_eps: float = Field(0.2, gt=0, description="PPO ratio clip: [1 - clip_eps, 1 + clip_eps_high]")
    clip_eps_high: float | None = Field(None, gt=0, description="upper clip (DAPO's clip-higher; verl "
                                        "clip_ratio_high, TRL epsilon_high); null: clip_eps")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus per token (verl entropy_coeff)")
    loss_agg_mode: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = Field(
        "token-mean", description="verl's loss_agg_mode: token-mean (DAPO), seq-mean-token-mean (GRPO paper), "
        "seq-mean-token-sum-norm (Dr. GRPO: token sums over sequences x rollout.max_new_tokens)")
    norm_adv_by_std: bool = Field(True, description="divide group advantages by the group's reward std (verl "
                                  "norm_adv_by_std_in_grpo); false: Dr. GRPO's unbiased r - mean")
    kl_coef: float = Field(1e-3, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    deepspeed_config: str = "configs/deepspeed/zero0.json"
    keep_policies: int | None = Field(
        2, ge=1, description="newest policies kept in the run directory (as verl's max_actor_ckpt_to_keep, "
        "Hugging Face's save_total_limit); the starting and registered ones are kept too; null keeps all")
    keep_every: int = Field(0, ge=0, description="also keep every N-th policy (0: none)")
    warmup: WarmupConfig = WarmupConfig()
    lora: LoraConfig = LoraConfig()
    seed: int = 0


class EvalConfig(Section):
    every: int = Field(5, ge=1, description="evaluate every N iterations (and after the last)")
    n_task: int = Field(256, ge=1)
    n_judge: int = Field(256, ge=2)
    reflect_rounds: int = Field(2, ge=0)
    best_of_n: int = Field(0, ge=0, description="sample N answers per held-out task and keep the one the model's "
                           "own judge rates most likely right (eval/task_acc_best_of_n); 0: off")


class TrackingConfig(Section):
    experiment: str = "spark-vl"
    registered_model: str = "spark-vl-tiny"
    register_every: int = Field(0, ge=0, description="0: register only at the end of a run")


class OrchestrationConfig(Section):
    runs_dir: str = "runs"
    retries: int = Field(2, ge=0)
    retry_delay_s: float = Field(5.0, ge=0)


class RunConfig(Section):
    """A whole run. `configs/tiny.yaml` is the embedded default."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    spark: SparkConfig = SparkConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    tracking: TrackingConfig = TrackingConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    def digest(self) -> str:
        """Short stable hash of the resolved config, for tags and resume checks."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


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


# Keys that name a program to execute, its arguments or environment, or a host to reach: a run
# triggered through a deployment (the UI, the API) may not change them; the deployment may.
PRIVILEGED_KEYS = ("rollout.vllm.python", "rollout.vllm.args", "rollout.vllm.env", "rollout.vllm.url",
                   "rollout.vllm.host", "train.hostfile", "train.launcher", "train.master_addr", "reward.function")


def _value(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_triggered(config: RunConfig, deployed: RunConfig, allowed: list[str]) -> None:
    """Raise ConfigError when a triggered run sets a privileged key to other than its deployment's
    config does, unless the deployment allows that key (or a section above it)."""
    refused = [key for key in PRIVILEGED_KEYS
               if _value(config, key) != _value(deployed, key)
               and not any(key == a or key.startswith(a + ".") for a in allowed)]
    if refused:
        raise ConfigError(
            "a run triggered through a deployment may not set " + ", ".join(refused) + " (programs, their "
            "arguments and environment, hosts): the worker would run or reach what the trigger names. Set it in "
            "the deployment's config, or list the key in the deployment's `allow_keys` parameter in "
            "prefect.yaml and deploy again")


def _type_name(kind: Any) -> str:
    """A config type as a reader says it: `int`, `"a" / "b"`, `str or null`, `list of str`."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " / ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    return getattr(kind, "__name__", str(kind))


def reference_markdown() -> str:
    """Every config key with its type, default and what it does, as markdown (docs/config.md is
    this, regenerated by `python -m spark_vl.config`; a test keeps the two equal)."""
    lines = ["# Config reference", "",
             "Every key of a run config (`configs/*.yaml`, `--set section.key=value`), its type, its built-in "
             "default and what it does. Generated from `spark_vl/config.py` by `python -m spark_vl.config > "
             "docs/config.md`.", ""]

    def section(model: type[BaseModel], prefix: str) -> None:
        lines.extend([f"## `{prefix.rstrip('.')}`" if prefix else "## (top level)", ""])
        if model.__doc__ and model.__doc__ is not BaseModel.__doc__:
            lines.extend([" ".join(model.__doc__.split()), ""])
        lines.extend(["| key | type | default | what it does |", "|---|---|---|---|"])
        nested = []
        for name, field in model.model_fields.items():
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                nested.append((kind, f"{prefix}{name}."))
                continue
            shown = _type_name(kind)
            default = json.dumps(field.default, default=str)
            text = (field.description or "").replace("|", "\\|")
            lines.append(f"| `{prefix}{name}` | `{shown}` | `{default}` | {text} |")
        lines.append("")
        for kind, nested_prefix in nested:
            section(kind, nested_prefix)

    for name, field in RunConfig.model_fields.items():
        section(field.annotation, f"{name}.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
