"""DeepSpeed engine setup: one process on the CPU (gloo) or CUDA devices under a launcher."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from spark_vl.runio import free_port, logger


def _ensure_single_process_env() -> None:
    """DeepSpeed wants launcher variables even for one process (else it looks for MPI)."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def deepspeed_config(path: str | Path, micro_batch_size: int, lr: float, max_grad_norm: float,
                     bf16: bool) -> dict:
    """The ZeRO config file with its "auto" entries filled from the run config."""
    config = json.loads(Path(path).read_text())
    filled = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,  # the trainer marks its own accumulation boundary
        "gradient_clipping": max_grad_norm,
    }
    for key, value in filled.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    config.pop("train_batch_size", None)
    if config.get("bf16", {}).get("enabled") == "auto":
        config["bf16"]["enabled"] = bf16
    params = config.get("optimizer", {}).get("params", {})
    if params.get("lr") == "auto":
        params["lr"] = lr
    config.setdefault("steps_per_print", 10**9)
    return config


def build_engine(model: torch.nn.Module, ds_config_path: str | Path, micro_batch_size: int, lr: float,
                 max_grad_norm: float):
    """A DeepSpeed engine around `model` with the optimizer named in the ZeRO config."""
    _ensure_single_process_env()
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   verbose=False)
    bf16 = next(model.parameters()).dtype == torch.bfloat16
    config = deepspeed_config(ds_config_path, micro_batch_size, lr, max_grad_norm, bf16)
    logger.debug("DeepSpeed config: %s", config)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config)
    return engine

