"""One launched training worker: the train stage of iteration K, run by every DeepSpeed worker
that `spark_vl.train.launch` starts (`python -m spark_vl.pipeline.worker RUN_DIR K`)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from spark_vl.config import load_config
from spark_vl.pipeline.stages import stage_train
from spark_vl.workspace import Workspace


@record
def main(argv: list[str]) -> None:
    run_dir, k = Path(argv[0]), int(argv[1])
    ws = Workspace(load_config(run_dir / "config.yaml"), run_dir)
    try:
        stage_train(ws, k)
    finally:
        ws.close()
        # Left to interpreter exit, the process group's threads can abort a finished worker
        # ("terminate called without an active exception", seen once in CI on ZeRO-3).
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
