"""Classification metrics computed once over a whole evaluation set.

Inputs are logits or probabilities (N×C, torch tensor or numpy array) and integer labels (N). All
metrics are dataset-level: ECE in particular must be computed on the concatenated predictions,
since averaging per-batch ECEs weighs bins by batch and biases the result upward for small batches.
Everything runs in float64 numpy, so results do not depend on the evaluation precision.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

ECE_BINS = 15


def _to_numpy(x: Any, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if dtype is np.float64:
            x = x.double()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _labels(labels: Any) -> np.ndarray:
    return _to_numpy(labels, dtype=np.int64).reshape(-1)


def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax in float64, shifted by the row maximum for stability."""
    z = _to_numpy(logits)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_softmax(logits: Any) -> np.ndarray:
    """Row-wise log-softmax in float64 (log-sum-exp with the maximum shifted out)."""
    z = _to_numpy(logits)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def accuracy(logits: Any, labels: Any) -> float:
    """Top-1 accuracy: share of rows whose argmax equals the label."""
    return float(np.mean(_to_numpy(logits).argmax(axis=1) == _labels(labels)))


def topk_accuracy(logits: Any, labels: Any, k: int = 5) -> float:
    """Share of rows whose label is among the ``k`` highest scores (k is capped at C)."""
    scores = _to_numpy(logits)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.mean((top == _labels(labels)[:, None]).any(axis=1)))


class ReliabilityBin(NamedTuple):
    """One confidence bin: mean confidence, accuracy and count (nan/nan/0 when empty)."""

    conf: float
    acc: float
    count: int
    lower: float
    upper: float


def reliability_bins(probs: Any, labels: Any, bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """Equal-width bins on the top-1 confidence; bin b holds confidences in (lower, upper]."""
    p = _to_numpy(probs)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == _labels(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins as in Guo et al. (2017); a confidence of exactly 0 cannot be a top-1 value.
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        mask = index == b
        n = int(mask.sum())
        c = float(conf[mask].mean()) if n else float("nan")
        a = float(correct[mask].mean()) if n else float("nan")
        out.append(ReliabilityBin(c, a, n, float(edges[b]), float(edges[b + 1])))
    return out


def ece(probs: Any, labels: Any, bins: int = ECE_BINS) -> float:
    """Expected calibration error: Σ_b |acc_b − conf_b| · n_b / N over the whole dataset."""
    table = reliability_bins(probs, labels, bins)
    total = sum(b.count for b in table)
    return float(sum(abs(b.acc - b.conf) * b.count for b in table if b.count) / total)


def nll(logits: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the labels (cross-entropy), from logits."""
    logp = log_softmax(logits)
    y = _labels(labels)
    return float(-logp[np.arange(len(y)), y].mean())


def brier(probs: Any, labels: Any) -> float:
    """Mean over samples of Σ_c (p_c − y_c)² with y the one-hot label (range 0..2)."""
    p = _to_numpy(probs)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), _labels(labels)] = 1.0
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def macro_f1(logits: Any, labels: Any) -> float:
    """Unweighted mean of per-class F1 = 2TP/(2TP + FP + FN).

    Averaged over the classes that occur in the labels or the predictions (as scikit-learn does),
    so classes absent from a test split (common on iWildCam) do not count as zeros.
    """
    pred = _to_numpy(logits).argmax(axis=1)
    y = _labels(labels)
    size = int(max(y.max(), pred.max())) + 1
    tp = np.bincount(y[pred == y], minlength=size).astype(np.float64)
    predicted = np.bincount(pred, minlength=size)  # TP + FP per class
    actual = np.bincount(y, minlength=size)  # TP + FN per class
    present = (predicted + actual) > 0
    return float(np.mean(2 * tp[present] / (predicted + actual)[present]))


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` samples: √(acc(1 − acc)/n)."""
    return float(np.sqrt(acc * (1.0 - acc) / n))


def classification_metrics(logits: Any, labels: Any) -> dict[str, float | int]:
    """Every metric of the report for one dataset, from its full logits and labels.

    Keys: ``accuracy``, ``top5``, ``ece``, ``nll``, ``brier``, ``macro_f1``, ``n``,
    ``accuracy_se``.
    """
    z = _to_numpy(logits)
    y = _labels(labels)
    probs = softmax(z)
    acc = accuracy(z, y)
    return {
        "accuracy": acc,
        "top5": topk_accuracy(z, y, 5),
        "ece": ece(probs, y),
        "nll": nll(z, y),
        "brier": brier(probs, y),
        "macro_f1": macro_f1(z, y),
        "n": int(len(y)),
        "accuracy_se": standard_error(acc, len(y)),
    }
