"""The statistics of a comparison: mean ± SE over runs, paired differences, the WiSE-FT frontier
gap and the logit-linear fit behind effective robustness.

Errors follow benchmarks/phenomenon.py: an accuracy measured on n examples has binomial variance
p(1 − p)/n; the mean over runs has SE sqrt(var_between_runs / n_runs + mean binomial var / n_runs),
and the mean of K accuracies on independent sets has binomial variance Σ p_k(1 − p_k)/n_k / K².
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

# Accuracies of exactly 0 or 1 have no finite logit; they are clipped this far inside (0, 1).
LOGIT_EPS = 1e-4


def binomial_var(p: float, n: int) -> float:
    """Variance of an accuracy ``p`` measured on ``n`` examples."""
    return p * (1.0 - p) / n


def mean_se(values: Sequence[float], binom_vars: Sequence[float] | None = None
            ) -> tuple[float, float]:
    """Mean over runs and its standard error sqrt(var_between / n + mean(binom_vars) / n).

    The spread term is 0 for a single run; without ``binom_vars`` (ECE, NLL, wall time) only the
    spread counts.
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    spread = float(v.var(ddof=1)) / v.size if v.size > 1 else 0.0
    has_binom = binom_vars is not None and len(binom_vars) > 0
    binom = float(np.mean(binom_vars)) / v.size if has_binom else 0.0
    return float(v.mean()), math.sqrt(spread + binom)


def average_binomial_var(accuracies: Sequence[float], ns: Sequence[int]) -> float:
    """Binomial variance of the mean of K accuracies measured on independent sets."""
    k = len(accuracies)
    return sum(binomial_var(p, n) for p, n in zip(accuracies, ns)) / k ** 2 if k else 0.0


def noise_verdict(diff: float, se: float | None) -> str:
    """"within noise" when |diff| < 2 SE (or no difference at all), else "beyond noise"."""
    if se is None or not math.isfinite(se):
        return "undetermined (one pair)"
    return "within noise" if diff == 0 or abs(diff) < 2 * se else "beyond noise"


def paired_difference(a: dict[Any, float], b: dict[Any, float]) -> dict[str, Any]:
    """a − b paired by key (a seed): mean ± SE of the differences and a verdict.

    The SE is the spread of the paired differences over pairs (std / sqrt(n)); the test sets are
    shared, so their sampling noise largely cancels in a paired difference and is not added.
    """
    keys = sorted(set(a) & set(b))
    if not keys:
        return {"n": 0, "mean": None, "se": None, "verdict": "no common runs"}
    d = np.array([a[k] - b[k] for k in keys], dtype=float)
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else None
    mean = float(d.mean())
    return {"n": int(d.size), "mean": mean, "se": se, "verdict": noise_verdict(mean, se)}


def frontier_gap(curve: Sequence[tuple[float, float]], id_acc: float, ood_acc: float,
                 ood_se: float) -> dict[str, Any]:
    """Where a (ID, OOD) point lies against a WiSE-FT curve of (ID, OOD) points.

    The curve is sorted by ID accuracy (points with equal ID are averaged) and interpolated
    linearly at ``id_acc``; gap = ``ood_acc`` − curve. "above" / "below" when |gap| ≥ 2 ``ood_se``,
    else "within noise"; "outside the curve's ID range" when ``id_acc`` is beyond its ends.
    """
    by_id: dict[float, list[float]] = {}
    for i, o in curve:
        by_id.setdefault(float(i), []).append(float(o))
    xs = sorted(by_id)
    ys = [float(np.mean(by_id[x])) for x in xs]
    if not xs or id_acc < xs[0] or id_acc > xs[-1]:
        return {"curve_ood": None, "gap": None, "se": ood_se,
                "verdict": "outside the curve's ID range"}
    curve_ood = float(np.interp(id_acc, xs, ys))
    gap = ood_acc - curve_ood
    if abs(gap) < 2 * ood_se or gap == 0:
        verdict = "within noise"
    else:
        verdict = "above" if gap > 0 else "below"
    return {"curve_ood": curve_ood, "gap": gap, "se": ood_se, "verdict": verdict}


def logit(p: float) -> float:
    """log(p / (1 − p)), with p clipped to [LOGIT_EPS, 1 − LOGIT_EPS]."""
    p = min(max(float(p), LOGIT_EPS), 1.0 - LOGIT_EPS)
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logit_fit(points: Sequence[tuple[float, float]]) -> dict[str, Any] | None:
    """Least-squares line logit(OOD) = intercept + slope · logit(ID) through (ID, OOD) points.

    None with fewer than two distinct ID accuracies (no line is determined).
    """
    pts = [(logit(i), logit(o)) for i, o in points]
    if len({round(x, 12) for x, _ in pts}) < 2:
        return None
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    slope, intercept = np.polyfit(xs, ys, 1)
    return {"slope": float(slope), "intercept": float(intercept), "n_points": len(pts)}


def effective_robustness(fit: dict[str, Any] | None, id_acc: float, ood_acc: float
                         ) -> float | None:
    """Taori et al. (2020): OOD accuracy minus the fit's OOD accuracy at the same ID accuracy."""
    if fit is None:
        return None
    return float(ood_acc - sigmoid(fit["intercept"] + fit["slope"] * logit(id_acc)))
