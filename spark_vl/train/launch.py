"""Training across processes: the train stage of one iteration, run by every DeepSpeed worker.

With `train.processes_per_node` above 1 (or a `train.hostfile`), the train task starts this
module under `torchrun` or the `deepspeed` launcher as a subprocess. Each worker builds the
same trainer from the run directory, takes its share of the sequences, and rank 0 writes the
outputs. A failing worker ends the launcher (which stops the others), and the task raises with
the workers' own error instead of hanging.

    python -m spark_vl.train.launch RUN_DIR ITERATION
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import record

from spark_vl.config import TrainConfig
from spark_vl.runio import free_port, logger

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


def environment_without_launcher() -> dict[str, str]:
    """This environment without launcher variables: a launcher sets them for each worker, and
    those an in-process DeepSpeed engine left (its MASTER_PORT is taken) would clash."""
    return {key: value for key, value in os.environ.items() if key not in LAUNCHER_VARIABLES}


def is_worker() -> bool:
    """Whether this process is one of several launched training workers."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def distributed(train: TrainConfig) -> bool:
    return train.processes_per_node > 1 or train.hostfile is not None


def launch_command(train: TrainConfig, run_dir: Path, k: int, port: int) -> list[str]:
    module = ["spark_vl.train.launch", str(run_dir), str(k)]
    if train.hostfile is not None or train.launcher == "deepspeed":
        hosts = ["--hostfile", train.hostfile] if train.hostfile else ["--num_gpus", str(train.processes_per_node)]
        beside = Path(sys.executable).with_name("deepspeed")  # the launcher of this environment
        return [str(beside) if beside.exists() else "deepspeed", *hosts, "--master_port", str(port), "--module",
                *module]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(train.processes_per_node),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", *module]


def launch_training(train: TrainConfig, run_dir: Path, k: int) -> None:
    """Run iteration k's train stage on all workers; raise with their error if one fails."""
    log_path = run_dir / f"iter-{k:04d}" / "train-workers.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = launch_command(train, run_dir, k, free_port("127.0.0.1"))
    env = environment_without_launcher()
    env.setdefault("OMP_NUM_THREADS", "1")
    logger.info("training iteration %d on %s workers: %s", k, train.processes_per_node, " ".join(command))
    with open(log_path, "w") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"training workers of iteration {k} failed (exit code {result.returncode}); "
                           f"the end of {log_path}:\n{tail}")


@record
def main(argv: list[str]) -> None:
    from spark_vl import pipeline, workspace
    from spark_vl.config import load_config

    run_dir, k = Path(argv[0]), int(argv[1])
    config = load_config(run_dir / "config.yaml")
    ws = workspace.Workspace(config, run_dir)
    try:
        pipeline.stage_train(ws, k)
    finally:
        ws.close()


if __name__ == "__main__":
    main(sys.argv[1:])
