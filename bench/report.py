"""What every benchmark does with its table: print it and keep it under bench/results/."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def publish(name: str, text: str) -> Path:
    """Print `text` and write it to bench/results/<name>.md; returns the file."""
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.md"
    out.write_text(text + "\n")
    return out
