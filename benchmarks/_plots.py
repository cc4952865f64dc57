"""The robustness benchmark's own figures: the β / λ_sd validation sweeps and the teacher-student
KL curves (EMA vs WMA), as PNG files.

Benchmark code, not part of tracer: used by ``robustness.py`` and ``fair.py`` (run as scripts, so
this folder is on ``sys.path``). Drawn and written as ``tracer compare``'s figures are
(:mod:`tracer_cli.analysis.plots`: matplotlib's Agg canvas, no pyplot, each file atomic).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from tracer_cli.analysis.plots import _pct
from tracer_cli.results.figures import save_figure as save


def plot_sweep(rows: Sequence[dict[str, Any]], axis: str, chosen: float, own: float,
               path: Path) -> Path:
    """Validation, ID and avg OOD accuracy against the swept value; chosen value marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.5))
    ax = figure.subplots()
    xs = [r["value"] for r in rows]
    for key, label in (("val_accuracy", "validation (chooses)"), ("id_accuracy", "ID"),
                       ("avg_ood_accuracy", "avg OOD (test)")):
        pts = [(v, *_pct(r[key])) for v, r in zip(xs, rows) if r[key]]
        if pts:
            px, py, pe = zip(*pts)
            ax.errorbar(px, py, yerr=pe, marker="o", capsize=3, label=label)
    ax.axvline(chosen, ls="--", color="k", lw=1, label=f"chosen {chosen:g}")
    if not math.isclose(chosen, own):
        ax.axvline(own, ls=":", color="grey", lw=1, label=f"recipe {own:g}")
    symbol = "β (WMA)" if axis == "beta" else "λ_sd"
    if axis == "lambda_sd" and min(xs) > 0:
        ax.set_xscale("log")
    ax.set_xlabel(symbol)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"TRACER {symbol} sweep (mean ± SE over sweep seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(figure, path)


def plot_kl(curves: dict[str, Any], path: Path) -> Path:
    """Teacher-student KL (image to text) and ‖θ−φ‖/‖θ−θ₀‖ against step."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4))
    left, right = figure.subplots(1, 2)
    for label, curve in curves.items():
        kl = [(p["step"], p["kl_i2t"]) for p in curve["points"] if p["kl_i2t"] is not None]
        ratio = [(p["step"], p["param_ratio"]) for p in curve["points"]
                 if p["param_ratio"] is not None]
        marker = "." if len(kl) < 30 else None  # short runs: a few points, still visible
        if kl:
            left.plot(*zip(*kl), marker=marker, label=label)
        if ratio:
            right.plot(*zip(*ratio), marker=marker, label=label)
    if all(p > 0 for c in curves.values() for p in
           (q["kl_i2t"] for q in c["points"] if q["kl_i2t"] is not None)):
        left.set_yscale("log")
    left.set(xlabel="step", ylabel="KL(teacher ‖ student), image→text",
             title="teacher-student KL")
    right.set(xlabel="step", ylabel="‖θ − φ‖ / ‖θ − θ₀‖", title="teacher lag")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save(figure, path)
