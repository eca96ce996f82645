"""What every benchmark does with its table: print it and keep it under bench/results/."""

from __future__ import annotations

import math
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def publish(name: str, text: str) -> Path:
    """Print `text` and write it to bench/results/<name>.md; returns the file."""
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.md"
    out.write_text(text + "\n")
    return out


def plot_curves(panels: list[tuple[str, str]], series: list[tuple[str | None, str, str, list[dict]]], title: str,
                out: Path) -> Path:
    """One panel per (metric key, panel title); in each, every series (legend label or None,
    colour, line style, evaluation rows) as a curve over iterations, on the [0, 1] scale of an
    accuracy. Writes the PNG to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4))
    for ax, (key, panel) in zip(axes, panels):
        for label, colour, style, rows in series:
            ax.plot([r["iteration"] for r in rows], [r.get(key, math.nan) for r in rows], color=colour, alpha=0.8,
                    marker="o", markersize=3, linestyle=style, label=label)
        ax.set_title(panel)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
