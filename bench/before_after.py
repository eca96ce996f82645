"""Code as of an earlier commit, importable beside the current code, for before/after benchmarks."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def import_as_of(commit: str, files: dict[str, str]) -> ModuleType:
    """Import `files` (repository path -> module name) as they were at `commit`; imports between
    them are redirected to the old copies. Returns the module of the last file. The folder goes
    on sys.path, so spawned processes import the old code by name too."""
    folder = Path(tempfile.mkdtemp(prefix="before-"))
    dotted = {path.removesuffix(".py").replace("/", "."): name for path, name in files.items()}
    for path, name in files.items():
        text = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout
        for module, old_copy in dotted.items():
            text = text.replace(f"from {module} import", f"from {old_copy} import")
        (folder / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module(list(files.values())[-1])
