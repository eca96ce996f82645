"""LoRA with PEFT: adapters on the language model, the base weights untouched.

A saved policy is the merged model (base + scaled adapter product), a plain Hugging Face
checkpoint that rollouts, vLLM and the registry load like any other, with the adapter itself
beside it in `adapter/`. The merge is computed from a state dict, so the training module keeps
its base weights bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import peft
import torch
from safetensors.torch import load_file

from spark_vl.config import LoraConfig

ADAPTER_DIR = "adapter"
PEFT_PREFIX = "base_model.model."


def add_adapters(model: torch.nn.Module, lora: LoraConfig) -> peft.PeftModel:
    """`model` with fresh adapters (B = 0, so the adapted model starts equal to the base)."""
    config = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, exclude_modules=lora.exclude_modules)
    return peft.get_peft_model(model, config)


def load_adapter_weights(model: peft.PeftModel, adapter_dir: Path) -> None:
    """The adapter a policy was saved with, into `model`'s adapters."""
    peft.set_peft_model_state_dict(model, load_file(str(adapter_dir / "adapter_model.safetensors")))


def merged_state_dict(state: dict[str, torch.Tensor], lora: LoraConfig) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter folded into its layer, W + (B @ A) * alpha / rank,
    from the PEFT model's state dict (keys with or without PEFT's `base_model.model.` prefix)."""
    state = {key.removeprefix(PEFT_PREFIX): value for key, value in state.items()}
    scaling = lora.alpha / lora.rank
    merged = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            layer = key.split(".base_layer.")[0]
            if key.endswith(".weight"):
                a, b = state[f"{layer}.lora_A.default.weight"], state[f"{layer}.lora_B.default.weight"]
                value = value + ((b.float() @ a.float()) * scaling).to(value.dtype)
            key = key.replace(".base_layer.", ".")
        merged[key] = value
    return merged
