"""The plots a run leaves beside its metrics (PNG): co-evolution curves, the judge's reliability."""

from __future__ import annotations

import math
from pathlib import Path

from spark_vl.evaluate.judge import calibration, reliability_bins


def plot_coevolution(rows: list[dict[str, float]], out: Path) -> Path:
    """Per evaluation: task accuracy (greedy, with self-reflection), what self-reflection did
    (answers fixed and broken, how often its judge gate opened on right and on wrong answers, and
    what the reflection alone did to every answer) and judge accuracy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [r for r in rows if "eval/task_acc" in r]
    steps = [r["iteration"] for r in evals]
    panels = [
        ("policy: held-out task accuracy",
         [("eval/task_acc", "task", "-"), ("eval/task_acc_reflect", "task + self-reflection", "-"),
          ("eval/task_acc_best_of_n", "task, best of n by the own judge", "-"),
          ("eval/well_formed", "well-formed answers", "-")]),
        ("self-reflection: share of held-out answers",
         [("eval/reflect_fixed", "fixed (wrong -> right)", "-"), ("eval/reflect_broke", "broken (right -> wrong)", "-"),
          ("eval/reflect_gate_wrong", "gate opened on wrong answers", ":"),
          ("eval/reflect_gate_right", "gate opened on right answers", ":"),
          ("eval/reflect_ungated_fixed", "fixed, every answer reflected on (no gate)", "--"),
          ("eval/reflect_ungated_broke", "broken, every answer reflected on (no gate)", "--")]),
        ("judge: held-out accuracy",
         [("eval/judge_pointwise_acc", "pointwise", "-"), ("eval/judge_same_form_acc", "pointwise, look-alikes", "-"),
          ("eval/judge_pairwise_acc", "pairwise (both orders)", "-"),
          ("eval/judge_own_wrong_acc", "own wrong answers", "-"),
          ("eval/judge_pairwise_first_rate", "pairwise: share of (A) picks", ":")]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for ax, (title, lines) in zip(axes, panels):
        shown = [(key, label, style) for key, label, style in lines if any(key in r for r in evals)]
        for key, label, style in shown:
            ax.plot(steps, [r.get(key, math.nan) for r in evals], style, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if shown:
            ax.legend(fontsize="small")
        else:  # e.g. eval.reflect_rounds=0: say so rather than leave a blank panel
            ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, out)


def plot_reliability(records: list[dict], out: Path) -> Path | None:
    """Reliability diagram of the judge's probability of Yes on held-out pointwise prompts (the
    `p_positive` of evaluation records): per bin, the share that was right against the mean
    probability; a calibrated judge lies on the diagonal. None when no record has a probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [(r["p_positive"], r["label"] == "Yes") for r in records
              if r["kind"] == "judge_pointwise" and r.get("p_positive") is not None]
    if not scored:
        return None
    bins = reliability_bins([p for p, _ in scored], [y for _, y in scored])
    ece, brier = calibration([p for p, _ in scored], [y for _, y in scored])
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    ax.scatter([c for c, _, _ in bins], [r for _, r, _ in bins], s=[20 + 200 * n / len(scored) for _, _, n in bins],
               label="bins (size: share of prompts)")
    ax.set_xlabel("judge's probability of Yes")
    ax.set_ylabel("share of answers that were right")
    ax.set_title(f"judge reliability: ECE {ece:.3f}, Brier {brier:.3f}, {len(scored)} prompts")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    """Write the figure as a PNG at `out` and release it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
