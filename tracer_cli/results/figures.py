"""Evaluation plots as PNG files: reliability diagrams, the WiSE-FT ID-vs-OOD curve and the
evaluations during training.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so nothing here touches global
backend state or needs a display, and each file is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from tracer_cli.io import atomic_path
from tracer_cli.results.metrics import ReliabilityBin


def save_figure(figure: Any, path: Path) -> Path:
    """Write a matplotlib ``Figure`` as a PNG at ``path``, atomically, on the Agg canvas (no
    pyplot, no display): the one figure writer of tracer's plots, ``tracer compare``'s and the
    benchmarks' included."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        # The temporary name ends in ".tmp": the format must be given, not guessed from it.
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def reliability_diagram(bins: Sequence[ReliabilityBin], path: Path, title: str) -> Path:
    """Accuracy per confidence bin against the diagonal, with the gap shaded and a count
    histogram underneath; empty bins are left blank."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2, 5.0))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = [b.upper - b.lower for b in bins]
    left = [b.lower for b in bins]
    filled = [b for b in bins if b.count]
    top.bar([b.lower for b in filled], [b.acc for b in filled],
            width=[b.upper - b.lower for b in filled], align="edge", color="#4c72b0",
            edgecolor="white", label="accuracy")
    top.bar([b.lower for b in filled], [b.conf - b.acc for b in filled],
            bottom=[b.acc for b in filled], width=[b.upper - b.lower for b in filled],
            align="edge", color="#dd8452", alpha=0.45, edgecolor="none", label="gap to confidence")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(left, [b.count for b in bins], width=width, align="edge", color="grey",
               edgecolor="white")
    bottom.set(xlim=(0, 1), xlabel="confidence (top-1)", ylabel="count")
    return save_figure(figure, path)


def wise_curve(alphas: Sequence[float], id_accuracy: Sequence[float],
               ood_accuracy: Sequence[float], path: Path, title: str = "WiSE-FT",
               metric: str = "accuracy") -> Path:
    """Average OOD ``metric`` (accuracy, or a task's primary metric such as mean recall) against
    its ID value, one point per mixing coefficient α."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.8, 4.2))
    axes = figure.subplots()
    xs = [100 * v for v in id_accuracy]
    ys = [100 * v for v in ood_accuracy]
    axes.plot(xs, ys, marker="o", color="#4c72b0")
    for i, (alpha, x, y) in enumerate(zip(alphas, xs, ys)):
        # Alternate above/below: neighbouring α often land almost on the same point.
        axes.annotate(f"α={alpha:g}", (x, y), textcoords="offset points",
                      xytext=(5, 4 if i % 2 == 0 else -11), fontsize="small")
    axes.set(xlabel=f"ID {metric} (%)", ylabel=f"average OOD {metric} (%)", title=title)
    axes.grid(alpha=0.3)
    return save_figure(figure, path)


def eval_curves(curves: dict[str, Sequence[tuple[int, float]]], path: Path, metric: str,
                title: str = "evaluations during training") -> Path:
    """One line per curve (``"student synth-photo"``: its ``(step, value)`` points) of ``metric``
    against the training step."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.subplots()
    for label, points in curves.items():
        steps, values = zip(*points)
        axes.plot(steps, [100 * v for v in values], marker=".", label=label,
                  linestyle="--" if label.startswith("teacher") else "-")
    axes.set(xlabel="step", ylabel=f"{metric.replace('_', ' ')} (%)", title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="best")
    return save_figure(figure, path)
