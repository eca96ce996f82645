"""What a person reads of an iteration: its metrics as markdown, a sample of its rollouts and
recycled prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spark_vl.config import RunConfig
from spark_vl.layout import iter_dir
from spark_vl.records import load_groups, load_prompts, media_files
from spark_vl.runio import file_digest
from spark_vl.workspace import Workspace


def metrics_markdown(row: dict[str, float]) -> str:
    """One iteration's metrics as a markdown table."""
    lines = [f"# Iteration {row['iteration']}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4g} |" for key, value in sorted(row.items()) if key != "iteration"]
    return "\n".join(lines)


def sample_rows(run_dir: Path, k: int, limit: int = 64) -> dict[str, list[dict[str, Any]]]:
    """A readable sample of iteration k's verified rollouts and recycled prompts."""
    rollouts = []
    verified = iter_dir(run_dir, k) / "verified.jsonl"
    for group in (load_groups(verified, run_dir) if verified.exists() else [])[:limit]:
        for response, reward in zip(group.responses[:2], group.rewards[:2]):
            rollouts.append({"kind": group.prompt.kind, "prompt": group.prompt.text, "label": group.prompt.label,
                             "response": response, "reward": reward})
    queue = iter_dir(run_dir, k) / "recycled.jsonl"
    recycled = [{"kind": p.kind, "prompt": p.text, "label": p.label, "source": p.source_id}
                for p in (load_prompts(queue, run_dir) if queue.exists() else [])[:limit]]
    return {"rollouts": rollouts, "recycled": recycled}


def dataset_tables(config: RunConfig, run_dir: Path) -> dict[str, tuple[Path, list[dict[str, str]]]]:
    """Per split (train, eval): its file and its rows as a tracker records them: id, question,
    answer and the content hashes of its images and video (a table's digest changes with any of them)."""
    workspace = Workspace(config, run_dir)
    tables = {}
    for split, path in workspace.paths.items():
        rows = [{"id": sample.id, "question": sample.question, "answer": sample.answer,
                 "images_sha256": " ".join(file_digest(f) for f in media_files(sample.images, sample.video))}
                for sample in workspace.samples(split)]
        tables[split] = (path, rows)
    return tables
