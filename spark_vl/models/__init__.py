"""Model loading (any Qwen2/2.5/3-VL directory) and the tiny offline default."""

from spark_vl.models.loading import load_model, load_processor, resolve_dtype, vision_token_ids
from spark_vl.models.tiny import build_tiny_model

__all__ = ["build_tiny_model", "load_model", "load_processor", "resolve_dtype", "vision_token_ids"]
