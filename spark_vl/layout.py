"""The run directory: where each stage's output lives, how it is read back, what is kept.

Run directory (the source of truth; every file is written atomically, and a stage whose
output exists is skipped, so a rerun continues where the last one stopped):

    config.yaml                  the resolved config
    data/                        built-in task data (when the config names no dataset)
    model/init/                  the tiny model as built (tiny runs only)
    model/warmup/                the warm-up's newest checkpoint while it runs (latest.json names it)
    model/policy-0000/           the starting policy: the tiny model after its warm-up
                                 (runs from a checkpoint start from `model.path` itself)
    model/policy-KKKK/           the policy after iteration K (Hugging Face directory); older
                                 ones are pruned as `train.keep_policies` says
    deepspeed/iter-KKKK/         DeepSpeed state after iteration K (only the newest is kept)
    iter-KKKK/prompts.jsonl      task prompts + the judge/reflection queue recycled in K-1
    iter-KKKK/rollouts.jsonl     n responses per prompt with the sampling log-probs
    iter-KKKK/verified.jsonl     the same with rewards, statuses and extracted answers
    iter-KKKK/recycled.jsonl     the queue: judge and reflection prompts for iteration K+1
    iter-KKKK/eval_samples.jsonl the graded held-out responses of an evaluation
    iter-KKKK/verifier_disagreements.jsonl  held-out answers the judge confidently grades
                                 otherwise than the verifier (`spark-vl audit`)
    iter-KKKK/<stage>.json       each stage's metrics
    iter-KKKK/registered.json    the registry version of policy K, once registered
    metrics.jsonl                one row per iteration (iteration 0: the starting policy)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from spark_vl.config import ConfigError, RunConfig, changes, load_config
from spark_vl.runio import DamagedOutput, logger, read_jsonl, write_text_atomic


VERIFIER_DISAGREEMENTS = "verifier_disagreements.jsonl"


def iter_dir(run_dir: Path, k: int) -> Path:
    return run_dir / f"iter-{k:04d}"


def policy_dir(run_dir: Path, k: int) -> Path:
    return run_dir / "model" / f"policy-{k:04d}"


def deepspeed_dir(run_dir: Path) -> Path:
    return run_dir / "deepspeed"


def warmup_dir(run_dir: Path) -> Path:
    """Checkpoints of the tiny model's warm-up (`train.warmup.checkpoint_every`), until it is done."""
    return run_dir / "model" / "warmup"


def deepspeed_tag(k: int) -> str:
    return f"iter-{k:04d}"


def start_policy(config: RunConfig, run_dir: Path) -> Path:
    """The policy of iteration 0, which is also the reference model of the KL term: the warm-
    started tiny model, a registry model downloaded into the run, or `model.path` itself."""
    if config.model.path is None:
        return policy_dir(run_dir, 0)
    if config.model.path.startswith("models:/"):
        return run_dir / "model" / "from-registry"
    return Path(config.model.path)


def policy_at(config: RunConfig, run_dir: Path, k: int) -> Path:
    return start_policy(config, run_dir) if k == 0 else policy_dir(run_dir, k)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DamagedOutput(path, f"not valid JSON ({exc.msg})") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def metric_rows(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.jsonl"
    return list(read_jsonl(path)) if path.exists() else []


def latest_task_accuracy(run_dir: Path, k: int) -> float:
    """Held-out task accuracy of the newest evaluation at or before iteration k."""
    evals = [r for r in metric_rows(run_dir) if "eval/task_acc" in r and r["iteration"] <= k]
    if not evals:
        raise ValueError(f"{run_dir} has no evaluation up to iteration {k}")
    return evals[-1]["eval/task_acc"]


def remove_partials(run_dir: Path) -> list[Path]:
    """Delete what a killed process left half-written: `.NAME.*.tmp` files of atomic writes and
    `.NAME.partial` staging folders. Nothing trusts them; a rerun writes them anew."""
    found = [p for p in run_dir.rglob(".*") if p.name.endswith((".tmp", ".partial"))]
    for path in found:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if found:
        logger.info("removed %d partial file(s) left by an interrupted run", len(found))
    return found


def check_policy(path: Path) -> None:
    """Raise DamagedOutput when a saved policy's weights are incomplete (e.g. a truncated
    model.safetensors): safetensors' header says how long the data must be."""
    from safetensors import SafetensorError, safe_open

    for weights in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as exc:
            raise DamagedOutput(weights, f"cannot be read ({exc})") from None


# Keys a rerun may change without making another run of the same folder: how long it goes on,
# where it runs and what it keeps. Any other difference would mix two runs in one folder.
RESUMABLE_CHANGES = ("train.iterations", "train.keep_policies", "train.keep_every", "train.processes_per_node",
                     "train.hostfile", "train.launcher", "train.master_addr", "train.master_port", "rollout.vllm",
                     "rollout.verify_workers", "rollout.verify_timeout_s", "tracking.register_every", "orchestration")


def check_same_run(config: RunConfig, run_dir: Path) -> None:
    """Raise ConfigError when `run_dir` holds a run made with another config: a key that changes
    what is computed differs from its config.yaml (`RESUMABLE_CHANGES` may differ)."""
    saved = run_dir / "config.yaml"
    if not saved.exists():
        return
    changed = [(key, values) for key, values in changes(load_config(saved), config).items()
               if not any(key == a or key.startswith(a + ".") for a in RESUMABLE_CHANGES)]
    if changed:
        shown = ", ".join(f"{key} ({before!r} -> {now!r})" for key, (before, now) in changed[:5])
        raise ConfigError(f"{saved} was made with another config: {shown}{' ...' if len(changed) > 5 else ''}. "
                          f"Rerun with the same config to resume it, or give the new run another name "
                          f"(--run-name)")


def check_resumable(config: RunConfig, run_dir: Path) -> None:
    """Read back what a rerun of this run directory will rely on: its config (the same run's,
    `check_same_run`), metrics.jsonl, the JSON(L) outputs of the two newest iterations, the starting
    and the newest policy."""
    if not run_dir.exists():
        return
    check_same_run(config, run_dir)
    metric_rows(run_dir)
    for folder in sorted(run_dir.glob("iter-*"))[-2:]:
        for path in sorted(folder.glob("*.jsonl")):
            list(read_jsonl(path))
        for path in sorted(folder.glob("*.json")):
            read_json(path)
    policies = sorted((run_dir / "model").glob("policy-*"))
    for path in {start_policy(config, run_dir), *policies[-1:]}:
        if (path / "config.json").exists():
            check_policy(path)
    trained = sorted(run_dir.glob("iter-*/train.json"))
    if trained:  # the newest trained policy is never pruned: the next iteration starts from it
        k = int(trained[-1].parent.name.removeprefix("iter-"))
        if not (policy_dir(run_dir, k) / "config.json").exists():
            raise DamagedOutput(trained[-1], f"it says iteration {k} trained, but its policy {policy_dir(run_dir, k)} "
                                "is missing")


def prune_deepspeed_state(run_dir: Path, keep: int) -> None:
    """Delete all DeepSpeed state but iteration `keep`'s: the newest alone is needed to resume."""
    for tag in deepspeed_dir(run_dir).glob("iter-*"):
        if tag.name != deepspeed_tag(keep):
            shutil.rmtree(tag, ignore_errors=True)


def prune_policies(config: RunConfig, run_dir: Path, k: int, pinned: set[int] = frozenset()) -> list[Path]:
    """Once iteration k has landed, delete the policies no later stage needs: all but the newest
    `train.keep_policies` (2 at least under `rollout.overlap`), policy-0000 (the KL reference),
    registered ones, every `train.keep_every`-th and those `pinned`. Returns what was deleted."""
    keep = config.train.keep_policies
    if keep is None:
        return []
    if config.rollout.overlap:
        keep = max(keep, 2)  # the rollouts of k+1 sample from policy k-1
    deleted = []
    for j in range(1, k - keep + 1):
        path = policy_dir(run_dir, j)
        every = config.train.keep_every
        if (not path.exists() or (every and j % every == 0) or j in pinned
                or (iter_dir(run_dir, j) / "registered.json").exists()):
            continue
        shutil.rmtree(path)
        deleted.append(path)
    return deleted
