"""One launched training worker: the train stage of iteration K, run by every DeepSpeed worker
that `spark_vl.train.launch` starts (`python -m spark_vl.pipeline.worker RUN_DIR K`)."""

from __future__ import annotations

import os
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
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
    # The stage's outputs are written and renamed into place. Left to interpreter teardown, a
    # native thread of the communication libraries can abort a finished worker ("terminate called
    # without an active exception": ZeRO-3 with rollout correction and several mini-batches, on
    # every run here), failing the task after its work is done; so a finished worker ends here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
