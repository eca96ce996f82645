"""One typed config for a run: the schema (`schema.py`), reading it with overrides and clear
errors (`loading.py`), checks before a run starts (`checks.py`), its reference (`reference.py`)."""

from spark_vl.config.checks import (PRIVILEGED_KEYS, changes, check_paths, check_triggered, dotted,
                                    held_out_changes)
from spark_vl.config.loading import (MODEL_CONFIG, MODEL_TEMPLATES, ConfigError, apply_overrides, load_config,
                                     load_model_config, parse_override, save_config, save_model_config,
                                     validate_config)
from spark_vl.config.reference import reference_markdown
from spark_vl.config.schema import (PACKAGED_TEMPLATES, BuiltinDataConfig, DataConfig, EvalConfig, FilterGroupsConfig,
                                    LoraConfig, ModelConfig, OrchestrationConfig, RewardConfig, RolloutConfig,
                                    RunConfig, Section, SparkConfig, TinyModelConfig, TrackingConfig, TrainConfig,
                                    VideoConfig, VLLMConfig, WarmupConfig)

__all__ = ["MODEL_CONFIG", "MODEL_TEMPLATES", "PACKAGED_TEMPLATES", "PRIVILEGED_KEYS", "BuiltinDataConfig",
           "ConfigError", "DataConfig", "EvalConfig", "FilterGroupsConfig", "LoraConfig", "ModelConfig",
           "OrchestrationConfig", "RewardConfig", "RolloutConfig", "RunConfig", "Section", "SparkConfig",
           "TinyModelConfig", "TrackingConfig", "TrainConfig", "VideoConfig", "VLLMConfig", "WarmupConfig",
           "apply_overrides", "changes", "check_paths", "check_triggered", "dotted", "held_out_changes",
           "load_config", "load_model_config", "parse_override", "reference_markdown", "save_config",
           "save_model_config", "validate_config"]
