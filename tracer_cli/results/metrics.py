"""Metrics computed once over a whole evaluation set: classification, retrieval and VQA.

Classification inputs are logits or probabilities (N×C, torch tensor or numpy array) and integer
labels (N). All metrics are dataset-level: ECE in particular must be computed on the concatenated
predictions, since averaging per-batch ECEs weighs bins by batch and biases the result upward for
small batches. Classification and VQA metrics run in float64 numpy, so results do not depend on
the evaluation precision; retrieval (:func:`retrieval_metrics`) scores on the features' own device
in blocks, because its similarity matrix is too large for float64 on the CPU.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

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


def _f1_per_class(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(F1 = 2TP/(2TP + FP + FN), whether the class is in the labels, whether it is predicted)
    for every class index up to the largest label or prediction."""
    pred = _to_numpy(logits).argmax(axis=1)
    y = _labels(labels)
    size = int(max(y.max(), pred.max())) + 1
    tp = np.bincount(y[pred == y], minlength=size).astype(np.float64)
    predicted = np.bincount(pred, minlength=size)  # TP + FP per class
    actual = np.bincount(y, minlength=size)  # TP + FN per class
    seen = (predicted + actual) > 0
    f1 = np.divide(2 * tp, predicted + actual, out=np.zeros(size), where=seen)
    return f1, actual > 0, predicted > 0


def macro_f1(logits: Any, labels: Any) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in the labels *or* the
    predictions (scikit-learn's ``f1_score(average="macro")`` default).

    The paper's reference code computes it so (torchmetrics' ``MulticlassF1Score(average=
    "macro")``, which leaves out classes with TP + FP + FN = 0): a class predicted but absent from
    the set counts as an F1 of 0. (torchmetrics there sizes its classes by the largest label; a
    prediction above it, which it cannot score, is counted here as such a class.) See
    :func:`macro_f1_wilds` for WILDS' definition.
    """
    f1, actual, predicted = _f1_per_class(logits, labels)
    return float(np.mean(f1[actual | predicted]))


def macro_f1_wilds(logits: Any, labels: Any) -> float:
    """Unweighted mean of per-class F1 over the classes in the labels only.

    As the WILDS evaluation computes it for iWildCam (scikit-learn's ``f1_score`` with
    ``average="macro"`` and ``labels`` = the distinct true labels): a class absent from the test
    set counts neither as a zero nor at all, even when it is predicted; predicting it still costs
    the true classes their recall. Most of iWildCam's 182 classes are absent from any one split,
    so this is usually higher than :func:`macro_f1`.
    """
    f1, actual, _ = _f1_per_class(logits, labels)
    return float(np.mean(f1[actual]))


def mean_per_class_recall(logits: Any, labels: Any) -> float:
    """Unweighted mean over the classes in the labels of each class's recall (its share of
    images predicted as it): CLIP_benchmark's ``mean_per_class_recall`` (scikit-learn's
    ``balanced_accuracy_score``), which VTAB-style benchmarks report for unbalanced test sets."""
    pred = _to_numpy(logits).argmax(axis=1)
    y = _labels(labels)
    actual = np.bincount(y)
    hits = np.bincount(y[pred == y], minlength=len(actual))
    present = actual > 0
    return float(np.mean(hits[present] / actual[present]))


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` samples: √(acc(1 − acc)/n)."""
    return float(np.sqrt(acc * (1.0 - acc) / n))


def classification_metrics(logits: Any, labels: Any) -> dict[str, float | int]:
    """Every metric of the report for one dataset, from its full logits and labels.

    Keys: ``accuracy``, ``top5``, ``ece``, ``nll``, ``brier``, ``macro_f1``,
    ``macro_f1_wilds``, ``mean_per_class_recall``, ``n``, ``accuracy_se``.
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
        "macro_f1_wilds": macro_f1_wilds(z, y),
        "mean_per_class_recall": mean_per_class_recall(z, y),
        "n": int(len(y)),
        "accuracy_se": standard_error(acc, len(y)),
    }


# --- image-text retrieval -----------------------------------------------------------------------

RETRIEVAL_KS = (1, 5, 10)
# Similarity rows per chunk: a 25k x 125k problem never holds more than this many scores at once.
_CHUNK_ELEMENTS = 1 << 24


def _features(x: Any) -> torch.Tensor:
    """``x`` as a 2-D torch tensor on its own device: float64 stays float64, everything else
    (float16, bfloat16, float32, integer) is scored in float32."""
    import torch

    t = torch.as_tensor(x) if not isinstance(x, torch.Tensor) else x.detach()
    if t.ndim != 2:
        raise ValueError(f"features must be a 2-D N×D array, got shape {tuple(t.shape)}")
    return t if t.dtype == torch.float64 else t.float()


def _ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0-based rank of column ``target[r]`` in each row of ``scores``, sorted by descending score
    with ties broken by column index (lower first): #higher + #equal-with-lower-index."""
    import torch

    chosen = scores.gather(1, target[:, None])
    columns = torch.arange(scores.shape[1], device=scores.device)[None, :]
    ahead = (scores > chosen) | ((scores == chosen) & (columns < target[:, None]))
    return ahead.sum(dim=1)


def _best_own(scores: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """Per row, the column of the highest score among the ``own`` columns (lowest index on a
    tie): the caption of an image that ranks best, since rank order is (score desc, index)."""
    import torch

    masked = torch.where(own, scores, torch.full_like(scores, -torch.inf))
    best = masked.max(dim=1, keepdim=True).values
    columns = torch.arange(scores.shape[1], device=scores.device)[None, :]
    return torch.where(own & (masked == best), columns, scores.shape[1]).min(dim=1).values


def retrieval_metrics(image_features: Any, text_features: Any, text_image: Any,
                      ks: tuple[int, ...] = RETRIEVAL_KS) -> dict[str, float | int]:
    """Recall@k for image-to-text and text-to-image retrieval (COCO / Flickr30k protocol).

    ``image_features`` (N×D) and ``text_features`` (M×D) are L2-normalized, so the dot product is
    the cosine similarity; ``text_image[j]`` is the index of the image caption ``j`` describes.
    Image-to-text: an image is retrieved at k when *any* of its captions is among its k most
    similar texts. Text-to-image: a caption is retrieved at k when its image is among its k most
    similar images. ``k`` larger than the candidate count counts every query as retrieved.

    Ties are broken by index: among equal scores the candidate listed first ranks first, so the
    result never depends on sort stability or the device. Scores are computed on the features'
    device (float32 unless the features are float64), a block of queries at a time, so memory
    stays bounded for any N, M. An image with no caption counts as never retrieved.

    Returns ``i2t_r{k}`` and ``t2i_r{k}`` for each k (fractions in [0, 1]), ``mean_recall`` (their
    mean), ``n_images`` and ``n_texts``.
    """
    import torch

    images, texts = _features(image_features), _features(text_features)
    texts = texts.to(device=images.device, dtype=images.dtype)
    if isinstance(text_image, torch.Tensor):
        owner = text_image.detach().reshape(-1).to(device=images.device, dtype=torch.long)
    else:
        owner = torch.as_tensor(np.asarray(text_image, dtype=np.int64).reshape(-1),
                                device=images.device)
    n, m = images.shape[0], texts.shape[0]
    if images.shape[1] != texts.shape[1] or len(owner) != m or n == 0 or m == 0:
        raise ValueError(f"need N×D image and M×D text features with one text_image entry per "
                         f"text, N, M > 0; got {tuple(images.shape)}, {tuple(texts.shape)} and "
                         f"{len(owner)} entries")
    if int(owner.min()) < 0 or int(owner.max()) >= n:
        raise ValueError(f"text_image holds image indices outside 0..{n - 1}")
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    never = torch.iinfo(torch.long).max  # the rank of an image that has no caption
    i2t = torch.empty(n, dtype=torch.long, device=images.device)
    rows = max(1, _CHUNK_ELEMENTS // m)
    for start in range(0, n, rows):
        scores = images[start:start + rows] @ texts.T
        ids = torch.arange(start, start + len(scores), device=images.device)
        own = owner[None, :] == ids[:, None]
        best = _best_own(scores, own).clamp(max=m - 1)
        i2t[start:start + len(scores)] = torch.where(own.any(dim=1), _ranks(scores, best), never)
    t2i = torch.empty(m, dtype=torch.long, device=images.device)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, m, rows):
        scores = texts[start:start + rows] @ images.T
        t2i[start:start + len(scores)] = _ranks(scores, owner[start:start + len(scores)])
    out: dict[str, float | int] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t < k).double().mean())
    for k in ks:
        out[f"t2i_r{k}"] = float((t2i < k).double().mean())
    out["mean_recall"] = float(np.mean([out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks]))
    out["n_images"], out["n_texts"] = n, m
    return out


# --- visual question answering ------------------------------------------------------------------


def vqa_metrics(logits: Any, answers: Any, vocab: Any) -> dict[str, float | int]:
    """Closed-vocabulary VQA scores from answer logits.

    ``logits`` is N×A over ``vocab`` (A answer strings); ``answers[i]`` lists the annotators'
    answers to question i (normalized strings; one element for synthetic data). The prediction is
    the argmax (lowest index on a tie).

    - ``accuracy``: share of questions whose prediction equals their canonical answer, the most
      common annotator answer (a tie goes to the one listed first);
    - ``vqa_score``: mean of min(#annotators who gave the predicted answer / 3, 1), the VQA
      accuracy without the official average over the ten leave-one-out subsets of the annotators
      (which differs from it by well under a point on VQAv2);
    - ``coverage``: share of questions whose canonical answer is in ``vocab`` at all (the
      ceiling on ``accuracy``); also ``n`` and ``accuracy_se`` (:func:`standard_error`).
    """
    scores = _to_numpy(logits)
    vocab = [str(v) for v in vocab]
    answers = [[answers_i] if isinstance(answers_i, str) else list(answers_i)
               for answers_i in answers]
    if scores.ndim != 2 or scores.shape != (len(answers), len(vocab)):
        raise ValueError(f"logits must be N×A with N = {len(answers)} questions and A = "
                         f"{len(vocab)} vocabulary answers, got shape {scores.shape}")
    if not answers or any(not a for a in answers):
        raise ValueError("every question needs at least one annotator answer")
    predicted = [vocab[i] for i in scores.argmax(axis=1)]
    canonical = [Counter(a).most_common(1)[0][0] for a in answers]
    known = set(vocab)
    acc = float(np.mean([p == c for p, c in zip(predicted, canonical)]))
    return {
        "accuracy": acc,
        "vqa_score": float(np.mean([min(a.count(p) / 3.0, 1.0)
                                    for p, a in zip(predicted, answers)])),
        "coverage": float(np.mean([c in known for c in canonical])),
        "n": len(answers),
        "accuracy_se": standard_error(acc, len(answers)),
    }
