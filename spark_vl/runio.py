"""Run-directory I/O: atomic writes and JSONL records, so a killed run never leaves half a file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger("spark_vl")


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


class DamagedOutput(RuntimeError):
    """A run-directory file that cannot be read back (cut short by a crash or a full disk, edited by
    hand). Deleting it makes the stage that wrote it run again."""

    def __init__(self, path: Path, problem: str):
        self.path = Path(path)
        super().__init__(f"{path} is damaged: {problem}. Delete it and rerun the same command: the stage "
                         f"that wrote it runs again (see docs/reliability.md).")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise DamagedOutput(path, f"line {number} is not valid JSON ({exc.msg})") from None


def file_digest(path: str | Path) -> str:
    """A file's content as a short hex digest (sha256): what names an image in a dataset digest."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for a launched server or DeepSpeed's rendezvous)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
