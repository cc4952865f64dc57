"""The statistics of a comparison: mean ± SE over runs, paired differences, the WiSE-FT frontier
gap, the logit-linear fit behind effective robustness, t intervals for few runs (our own t
quantile: scipy is not a dependency) and the SE of a mean over seeds on shared test images.

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
    return {"n": int(d.size), "mean": mean, "se": se, "ci95": ci95(mean, se, int(d.size)),
            "verdict": noise_verdict(mean, se)}


def curve_at(curve: Sequence[Sequence[float]], id_acc: float
             ) -> tuple[float, float] | None:
    """The highest point of a WiSE-FT curve at ID accuracy ``id_acc``: (OOD, its SE), or None
    when the curve never reaches that ID.

    ``curve`` holds (ID, OOD[, SE of OOD]) points in the order of the mixing coefficient α (the
    curve as WiSE-FT traces it, zero-shot to finetuned). ID accuracy need not rise with α: it
    often peaks at an interior α and falls a little towards α = 1 while OOD keeps falling, so
    one ID accuracy is met on two branches. Each segment between neighbouring α that spans
    ``id_acc`` is interpolated linearly (OOD and its SE), and the highest OOD is the curve's
    value there: the best the baseline reaches at that ID by choosing α. (Sorting the points by
    ID instead would interleave the branches and read the lower one.)
    """
    pts = [(float(p[0]), float(p[1]), float(p[2]) if len(p) > 2 else 0.0) for p in curve]
    found: list[tuple[float, float]] = []
    for (i0, o0, s0), (i1, o1, s1) in zip(pts, pts[1:] or pts):
        lo, hi = min(i0, i1), max(i0, i1)
        if not lo <= id_acc <= hi:
            continue
        if i1 == i0:  # a vertical segment: both ends are at this ID
            found += [(o0, s0), (o1, s1)]
        else:
            t = (id_acc - i0) / (i1 - i0)
            found.append((o0 + t * (o1 - o0), s0 + t * (s1 - s0)))
    return max(found, key=lambda f: f[0]) if found else None


def frontier_gap(curve: Sequence[Sequence[float]], id_acc: float, ood_acc: float,
                 ood_se: float) -> dict[str, Any]:
    """Where a (ID, OOD) point lies against a WiSE-FT curve of (ID, OOD) points in α order.

    The curve's value at ``id_acc`` is :func:`curve_at`'s (the highest branch, linearly
    interpolated); gap = ``ood_acc`` − curve. "above" / "below" when |gap| ≥ 2 ``ood_se``, else
    "within noise"; "outside the curve's ID range" when no part of the curve reaches ``id_acc``.
    """
    at = curve_at([p[:2] for p in curve], id_acc)
    if at is None:
        return {"curve_ood": None, "gap": None, "se": ood_se,
                "verdict": "outside the curve's ID range"}
    curve_ood = at[0]
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


# --------------------------------------------------------------------------- small-n intervals

def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        for num in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                    -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    # The fraction converges fast only left of the mean; beyond it, I_x(a, b) = 1 − I_{1−x}(b, a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float | None) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (``None``: the normal),
    by bisection on :func:`t_cdf` to 1e-10. scipy is not a dependency, hence our own."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must lie in (0, 1), got {p}")

    def cdf(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0)) if df is None else t_cdf(x, df)

    lo, hi = -1.0, 1.0
    while cdf(lo) > p:
        lo *= 2.0
    while cdf(hi) < p:
        hi *= 2.0
    while hi - lo > 1e-10:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return 0.5 * (lo + hi)


def ci95(mean: float | None, se: float | None, n: int) -> list[float] | None:
    """mean ± t(0.975, n − 1) · SE; with one run (no spread, a binomial SE only) the normal
    quantile. None without an SE."""
    if mean is None or se is None or not math.isfinite(se):
        return None
    half = t_quantile(0.975, n - 1 if n > 1 else None) * se
    return [mean - half, mean + half]


# --------------------------------------------------------------------------- shared test images

def shared_images_se(correct: Sequence[Sequence[Sequence[bool]]]) -> float:
    """SE of a mean accuracy over runs (seeds) that were all evaluated on the same images.

    ``correct[r][k]`` is run r's 0/1 correctness on set k (the same images, in the same order, for
    every run). The statistic is the mean over the R runs of the mean over the K sets of the
    accuracy; with seeds and images both drawn at random (a crossed design), its variance is

        s²_runs / R + Σ_k s²_k / (n_k K²)

    where s²_runs is the variance between the runs' accuracies (ddof 1; 0 for one run) and s²_k the
    variance over the n_k images of set k of their correctness averaged over the runs (ddof 1).
    Errors the runs share (the same hard images) stay in s²_k instead of averaging away, as the
    binomial term divided by R assumes. The seed × image interaction enters both terms, so the
    estimate errs on the safe side by σ²_interaction / (R n); one run gives the binomial SE.
    """
    c = [np.stack([np.asarray(run[k], dtype=np.float64) for run in correct])
         for k in range(len(correct[0]))]
    sets, runs = len(c), len(correct)
    per_run = np.mean([m.mean(axis=1) for m in c], axis=0)  # each run's average over the sets
    between = float(per_run.var(ddof=1)) / runs if runs > 1 else 0.0
    images = sum(float(m.mean(axis=0).var(ddof=1)) / m.shape[1] for m in c) / sets ** 2
    return math.sqrt(between + images)
