"""Load a model and its processor from a checkpoint directory: one path for tiny and real models."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA and fp32 elsewhere (the CPU path the tests take)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def default_device() -> torch.device:
    """This process's GPU under a launcher (LOCAL_RANK), else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_processor(path: str | Path, min_pixels: int, max_pixels: int):
    """The checkpoint's own processor with the run's pixel bounds, left padding for generation."""
    processor = AutoProcessor.from_pretrained(str(path))
    processor.image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    processor.tokenizer.padding_side = "left"
    return processor


def load_model(path: str | Path, dtype: str = "auto", device: torch.device | None = None):
    device = device or default_device()
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=resolve_dtype(dtype, device))
    return model.to(device)


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of the vision placeholders, suppressed in generation (a weak model samples them)."""
    vocab = tokenizer.get_vocab()
    return [vocab[token] for token in VISION_TOKENS if token in vocab]
