"""Training across processes: the train stage of one iteration, run by every DeepSpeed worker.

With `train.processes_per_node` above 1 (or a `train.hostfile`), the train task starts
`spark_vl.pipeline.worker` under `torchrun` or the `deepspeed` launcher as a subprocess. Each
worker builds the same trainer from the run directory, takes its share of the sequences, and rank 0 writes the
outputs. A failing worker ends the launcher (which stops the others), and the task raises with
the workers' own error instead of hanging.

With a hostfile the DeepSpeed runner starts each node's launcher over ssh (pdsh). Where nodes
cannot ssh to each other, each node starts its own launcher with its node rank
(`launch_training(..., node_rank=R)`, `spark-vl train-node`): DeepSpeed's `--no_ssh`, the same
per-node launcher pdsh would run there.

    python -m spark_vl.pipeline.worker RUN_DIR ITERATION
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from spark_vl.config import TrainConfig
from spark_vl.runio import free_port, logger

WORKER_MODULE = "spark_vl.pipeline.worker"  # what each launched worker runs: the pipeline's train stage
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


def launch_command(train: TrainConfig, run_dir: Path, k: int, port: int, node_rank: int | None = None) -> list[str]:
    """The launcher for iteration k's workers: of every node (over ssh), or of node `node_rank` only."""
    module = [WORKER_MODULE, str(run_dir), str(k)]
    if train.hostfile is not None or train.launcher == "deepspeed":
        hosts = ["--hostfile", train.hostfile] if train.hostfile else ["--num_gpus", str(train.processes_per_node)]
        if node_rank is not None:
            hosts += ["--no_ssh", "--node_rank", str(node_rank),
                      "--master_addr", train.master_addr or first_host(train)]
        elif train.master_addr:
            hosts += ["--master_addr", train.master_addr]
        beside = Path(sys.executable).with_name("deepspeed")  # the launcher of this environment
        return [str(beside) if beside.exists() else "deepspeed", *hosts, "--master_port", str(port),
                "--no_local_rank", "--module", *module]  # workers read LOCAL_RANK from the environment
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(train.processes_per_node),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", *module]


def first_host(train: TrainConfig) -> str:
    """Node 0 of the hostfile: rank 0 and the rendezvous run there."""
    from deepspeed.launcher.runner import fetch_hostfile

    return next(iter(fetch_hostfile(train.hostfile)))


def launch_training(train: TrainConfig, run_dir: Path, k: int, node_rank: int | None = None) -> None:
    """Run iteration k's train stage on all workers (or on node `node_rank`'s, the other nodes
    starting theirs); raise with the end of their log if one fails."""
    name = "train-workers.log" if node_rank is None else f"train-workers-node{node_rank}.log"
    log_path = run_dir / f"iter-{k:04d}" / name
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = train.master_port if train.hostfile is not None else free_port("127.0.0.1")
    command = launch_command(train, run_dir, k, port, node_rank)
    env = environment_without_launcher()
    env.setdefault("OMP_NUM_THREADS", "1")
    where = "every node" if node_rank is None else f"node {node_rank}"
    logger.info("training iteration %d on %s: %s", k, where, " ".join(command))
    with open(log_path, "w") as log:
        result = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"training workers of iteration {k} failed on {where} (exit code {result.returncode}); "
                           f"the end of {log_path}:\n{tail}")
