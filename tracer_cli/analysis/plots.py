"""Figures of a comparison as PNG files: ID vs OOD (one panel per pretrained model). The
robustness benchmark's hyperparameter sweeps and teacher-student KL curves are drawn by
``benchmarks/_plots.py`` with the same file writer,
:func:`tracer_cli.results.figures.save_figure`.

Drawn on matplotlib's Agg canvas directly (no pyplot: no global backend state, no display), each
file written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tracer_cli.analysis.stats import logit, sigmoid
from tracer_cli.results.figures import save_figure


def _pct(pair: Sequence[float | None] | None) -> tuple[float, float]:
    """(mean, SE) in %; no SE draws no error bar."""
    if not pair:
        return math.nan, math.nan
    return 100 * pair[0], 100 * (pair[1] or 0.0)


def _fit_line(ax: Any, panel: dict[str, Any], x: str) -> None:
    """The effective-robustness line over the panel's ID range, dashed."""
    fit, xs = panel["fit"], [r[x][0] for r in panel["rows"] if r.get(x)]
    if fit is None or not xs:
        return
    grid = np.linspace(min(xs), max(xs), 50)
    line = [sigmoid(fit["intercept"] + fit["slope"] * logit(v)) for v in grid]
    ax.plot(100 * grid, 100 * np.asarray(line), "--", color="grey", lw=1,
            label="logit fit (effective robustness 0)")


def _panel(ax: Any, panel: dict[str, Any], x: str, y: str, colors: dict[str, str]) -> None:
    """One pretrained model: its WiSE-FT curves (α marked at 0, 0.5, 1), the logit fit, and
    every row's mean point with SE bars (a star for the pretrained model, open squares for
    teachers), each named in the legend; a group has the same colour in every panel."""
    _fit_line(ax, panel, x)
    for group, points in panel["wise"].items():
        pts = [p for p in points if p.get(x) and p.get(y)]
        xs, ys = [100 * p[x][0] for p in pts], [100 * p[y][0] for p in pts]
        ax.plot(xs, ys, "-", marker=".", alpha=0.7, color=colors.get(group),
                label=f"WiSE-FT of {group}")
        for p, px, py in zip(pts, xs, ys):
            if p["alpha"] in (0.0, 0.5, 1.0):
                ax.annotate(f"α={p['alpha']:g}", (px, py), xytext=(3, -10),
                            textcoords="offset points", fontsize=7, alpha=0.7)
    for row in panel["rows"]:
        if not row.get(x) or not row.get(y):
            continue
        (px, xe), (py, ye) = _pct(row[x]), _pct(row[y])
        teacher = row["model"] == "teacher"
        marker = "*" if row["method"] == "zeroshot" else "s" if teacher else "o"
        # Named in the legend, not next to the point: nearby labels overprinted each other.
        ax.errorbar(px, py, xerr=xe, yerr=ye, fmt=marker, capsize=3, color=colors[row["label"]],
                    markersize=11 if marker == "*" else 6, mfc="none" if teacher else None,
                    label=row["label"])
    ax.set_title(panel["pretrained"], fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_id_vs_ood(panels: Sequence[dict[str, Any]], path: Path, x: str = "id_accuracy",
                   y: str = "avg_ood_accuracy") -> Path:
    """ID against average OOD (in %), mean ± SE over runs, one panel per pretrained model."""
    from matplotlib.figure import Figure

    n = max(1, len(panels))
    figure = Figure(figsize=(7.5 * n, 5.5))
    axes = figure.subplots(1, n, squeeze=False)[0]
    labels = dict.fromkeys(r["label"] for p in panels for r in p["rows"])
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    for ax, panel in zip(axes, panels):
        _panel(ax, panel, x, y, colors)
        ax.set_xlabel(f"{x.removeprefix('id_')} on ID (%)")
    axes[0].set_ylabel(f"average OOD {y.removeprefix('avg_ood_')} (%)")
    figure.suptitle("ID vs OOD (mean ± SE over runs), one panel per pretrained model")
    return save_figure(figure, path)
