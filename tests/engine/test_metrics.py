"""Classification metrics against hand-computed answers and explicit loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tracer_cli.results import metrics

# Metrics against hand-computed answers (stated tolerances); CI reruns these under other CPU
# kernels (.ci/run).
pytestmark = pytest.mark.numerics

# Two classes; top-1 confidences 0.9, 0.9, 0.7, 0.7 with the second 0.9 row wrong.
PROBS = np.array([[0.9, 0.1], [0.9, 0.1], [0.7, 0.3], [0.7, 0.3]])
LABELS = np.array([0, 1, 0, 0])


def test_ece_hand_example():
    # Bin of 0.9: acc 0.5, |0.5 − 0.9|·2/4 = 0.2. Bin of 0.7: acc 1, |1 − 0.7|·2/4 = 0.15.
    assert metrics.ece(PROBS, LABELS) == pytest.approx(0.35, abs=1e-12)


def test_ece_is_dataset_level_not_a_mean_of_batches():
    batches = [[0, 2], [1, 3]]
    per_batch = np.mean([metrics.ece(PROBS[b], LABELS[b]) for b in batches])
    # Batch 1: (0.1 + 0.3)/2 = 0.2; batch 2: (0.9 + 0.3)/2 = 0.6; their mean is 0.4, not 0.35.
    assert per_batch == pytest.approx(0.4, abs=1e-12)
    assert metrics.ece(PROBS, LABELS) == pytest.approx(0.35, abs=1e-12)


def test_ece_equals_explicit_binning_formula():
    gen = np.random.default_rng(0)
    logits = gen.normal(size=(500, 6)) * 3
    labels = gen.integers(0, 6, size=500)
    probs = metrics.softmax(logits)
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        members = [i for i in range(500) if lo < conf[i] <= hi]
        if members:
            acc = np.mean([pred[i] == labels[i] for i in members])
            total += abs(acc - np.mean(conf[members])) * len(members) / 500
    assert metrics.ece(probs, labels) == pytest.approx(total, abs=1e-12)
    table = metrics.reliability_bins(probs, labels)
    assert len(table) == 15 and sum(b.count for b in table) == 500
    empty = [b for b in table if b.count == 0]
    assert all(math.isnan(b.conf) and math.isnan(b.acc) for b in empty)


def test_nll_and_brier_explicit():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-3.0, 4.0, 0.0]])
    labels = np.array([0, 2, 0])
    expected_nll, expected_brier = 0.0, 0.0
    for row, y in zip(logits, labels):
        p = np.exp(row) / np.exp(row).sum()
        expected_nll -= math.log(p[y]) / 3
        expected_brier += sum((p[c] - (c == y)) ** 2 for c in range(3)) / 3
    assert metrics.nll(logits, labels) == pytest.approx(expected_nll, abs=1e-12)
    probs = metrics.softmax(logits)
    assert metrics.brier(probs, labels) == pytest.approx(expected_brier, abs=1e-12)
    # Large logits must not overflow.
    assert metrics.nll(np.array([[1000.0, 0.0]]), np.array([1])) == pytest.approx(1000.0)


def test_macro_f1_hand_example():
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0])
    logits = np.eye(4)[preds]  # class 3 never occurs and must not count
    # F1: class 0 = 2/(2+1+1) = 0.5, class 1 = 4/(4+1) = 0.8, class 2 = 0.
    assert metrics.macro_f1(logits, labels) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert metrics.macro_f1_wilds(logits, labels) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_the_two_macro_f1s_differ_on_a_class_predicted_but_absent():
    # Class 3 is predicted once but absent from the labels; its false positive costs class 1 its
    # recall in both. F1: class 0 = 1, class 1 = 2/(2+0+1) = 2/3, class 2 = 1, class 3 = 0.
    labels = np.array([0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 3, 2])
    logits = np.eye(5)[preds]  # class 4: neither a label nor predicted, counted by neither
    # The reference code's (torchmetrics macro, scikit-learn's default): class 3 counts as 0.
    assert metrics.macro_f1(logits, labels) == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)
    # WILDS (iWildCam): f1_score(average="macro", labels=unique(y_true)): class 3 left out.
    assert metrics.macro_f1_wilds(logits, labels) == pytest.approx((1 + 2 / 3 + 1) / 3)


def test_mean_per_class_recall_hand_example():
    # CLIP_benchmark's mean_per_class_recall (balanced accuracy): recall of class 0 = 2/3,
    # class 1 = 1, class 2 = 0; class 3 is predicted but absent and does not count.
    labels = np.array([0, 0, 0, 1, 2])
    preds = np.array([0, 0, 1, 1, 3])
    logits = np.eye(4)[preds]
    assert metrics.mean_per_class_recall(logits, labels) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert metrics.accuracy(logits, labels) == pytest.approx(3 / 5)  # what it differs from


def test_accuracy_and_topk():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert metrics.accuracy(logits, labels) == pytest.approx(1 / 3)
    assert metrics.topk_accuracy(logits, labels, k=2) == pytest.approx(2 / 3)
    assert metrics.topk_accuracy(logits, labels, k=5) == 1.0  # k is capped at the class count
    assert metrics.accuracy(logits.numpy(), labels.numpy()) == metrics.accuracy(logits, labels)


def test_classification_metrics_keys_and_standard_error():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=gen, dtype=torch.bfloat16)
    labels = torch.randint(0, 10, (200,), generator=gen)
    out = metrics.classification_metrics(logits, labels)
    assert set(out) == {"accuracy", "top5", "ece", "nll", "brier", "macro_f1", "macro_f1_wilds",
                        "mean_per_class_recall", "n", "accuracy_se"}
    assert out["n"] == 200
    assert out["accuracy_se"] == pytest.approx(math.sqrt(out["accuracy"] * (1 - out["accuracy"])
                                                         / 200))
    assert metrics.standard_error(0.5, 100) == pytest.approx(0.05)
    assert out["top5"] >= out["accuracy"]
