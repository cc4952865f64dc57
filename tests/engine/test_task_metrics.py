"""Retrieval and VQA metrics against hand-computed answers and a brute-force ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tracer_cli.results import metrics

# Retrieval metrics in chunks, whole and by brute force; CI reruns these under other CPU
# kernels (.ci/run).
pytestmark = pytest.mark.numerics

# Three images on the axes; five captions (images 0, 0, 1, 2, 2). Every score is 0, 0.6, 0.8 or 1,
# exact in float32, so the ties below are real ties.
IMAGES = np.eye(3)
TEXTS = np.array([[0.0, 1.0, 0.0],   # image 0's caption, but closest to image 1
                  [0.8, 0.6, 0.0],   # image 0
                  [0.0, 0.0, 1.0],   # image 1's caption, closest to image 2
                  [0.0, 0.6, 0.8],   # image 2
                  [0.6, 0.8, 0.0]])  # image 2's caption, closest to image 1
OWNER = [0, 0, 1, 2, 2]
# By hand, ties to the lower index:
# image -> text ranks: image 0: t1 first (rank 0); image 1: t0, t4, t1, t3 (0.6 tie: t1 first), t2
# -> rank 4; image 2: t2, t3 -> its best caption t3 at rank 1.
# text -> image ranks: t0: i1, then i0/i2 tied at 0 -> i0 at rank 1; t1: rank 0; t2: i2, i0, i1
# -> rank 2; t3: rank 0; t4: i1, i0, i2 -> rank 2.


def _brute_force(images, texts, owner, ks):
    scores = images @ texts.T

    def order(row):
        return sorted(range(len(row)), key=lambda j: (-row[j], j))

    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = np.mean([any(owner[j] == i for j in order(scores[i])[:k])
                                    for i in range(len(images))])
    for k in ks:
        out[f"t2i_r{k}"] = np.mean([owner[j] in order(scores[:, j])[:k]
                                    for j in range(len(texts))])
    return out


def test_retrieval_hand_example_default_ks():
    out = metrics.retrieval_metrics(IMAGES, TEXTS, OWNER)
    expected = {"i2t_r1": 1 / 3, "i2t_r5": 1.0, "i2t_r10": 1.0,  # k >= 5 texts: all retrieved
                "t2i_r1": 2 / 5, "t2i_r5": 1.0, "t2i_r10": 1.0}  # k > 3 images: clipped
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-12), key
    assert out["mean_recall"] == pytest.approx(np.mean(list(expected.values())))
    assert (out["n_images"], out["n_texts"]) == (3, 5)


def test_retrieval_hand_example_small_ks():
    out = metrics.retrieval_metrics(IMAGES, TEXTS, OWNER, ks=(1, 2, 3))
    # image ranks [0, 4, 1]; text ranks [1, 0, 2, 0, 2]
    assert [out[f"i2t_r{k}"] for k in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert [out[f"t2i_r{k}"] for k in (1, 2, 3)] == pytest.approx([2 / 5, 3 / 5, 1.0])
    assert set(out) == {"i2t_r1", "i2t_r2", "i2t_r3", "t2i_r1", "t2i_r2", "t2i_r3",
                        "mean_recall", "n_images", "n_texts"}


def test_retrieval_any_caption_counts_for_image_to_text():
    # Image 0's first caption ranks behind both others; its second is its nearest text.
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    texts = np.array([[-0.6, -0.8], [1.0, 0.0], [0.0, 1.0]])
    out = metrics.retrieval_metrics(images, texts, [0, 0, 1], ks=(1,))
    assert out["i2t_r1"] == 1.0


def test_retrieval_ties_go_to_the_lower_index():
    # Two identical images: a caption of image 1 ties with image 0, which ranks first.
    images = np.array([[1.0, 0.0], [1.0, 0.0]])
    texts = np.array([[1.0, 0.0], [1.0, 0.0]])
    out = metrics.retrieval_metrics(images, texts, [0, 1], ks=(1, 2))
    assert out["t2i_r1"] == 0.5 and out["t2i_r2"] == 1.0  # caption 1 finds image 0 first
    assert out["i2t_r1"] == 0.5 and out["i2t_r2"] == 1.0  # image 1's caption is text 1


def test_retrieval_matches_brute_force_in_small_chunks(monkeypatch):
    gen = np.random.default_rng(0)
    images = gen.normal(size=(23, 6))
    texts = gen.normal(size=(61, 6))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    owner = np.concatenate([np.arange(23), gen.integers(0, 23, size=38)])
    whole = metrics.retrieval_metrics(images, texts, owner, ks=(1, 3, 10))
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 7)  # blocks of a single query row
    chunked = metrics.retrieval_metrics(images, texts, owner, ks=(1, 3, 10))
    # Blocks and the whole matrix round differently, but recalls are shares of counts that only
    # change when two scores swap order: with no two scores of a query within 1e-9, they cannot.
    scores = texts @ images.T
    for by_query in (scores, scores.T):
        assert np.diff(np.sort(by_query, axis=1), axis=1).min() > 1e-9
    assert chunked == whole
    expected = _brute_force(images, texts, owner, (1, 3, 10))
    for key, value in expected.items():
        assert whole[key] == pytest.approx(value, abs=1e-12), key
    assert 0 < whole["t2i_r1"] < whole["t2i_r10"] < 1  # a non-trivial case


def test_retrieval_accepts_tensors_of_any_float_dtype():
    images = torch.tensor(IMAGES, dtype=torch.float16)
    texts = torch.tensor(TEXTS, dtype=torch.bfloat16)
    out = metrics.retrieval_metrics(images, texts, torch.tensor(OWNER))
    assert out == metrics.retrieval_metrics(IMAGES, TEXTS, OWNER)


def test_retrieval_image_without_caption_is_never_retrieved():
    out = metrics.retrieval_metrics(np.eye(3), np.eye(3)[:2], [0, 1], ks=(1, 50))
    assert out["i2t_r1"] == pytest.approx(2 / 3) and out["i2t_r50"] == pytest.approx(2 / 3)
    assert out["t2i_r1"] == 1.0


@pytest.mark.parametrize("texts, owner, ks, match", [
    (np.ones((2, 4)), [0, 1], (1,), "N×D"),
    (np.ones((2, 3)), [0], (1,), "one text_image entry per text"),
    (np.ones((2, 3)), [0, 3], (1,), "outside 0..2"),
    (np.ones((2, 3)), [0, 1], (0,), "positive"),
])
def test_retrieval_rejects_bad_inputs(texts, owner, ks, match):
    with pytest.raises(ValueError, match=match):
        metrics.retrieval_metrics(np.ones((3, 3)), texts, owner, ks=ks)


VOCAB = ["yes", "no", "2", "3", "red"]


def test_vqa_hand_example():
    logits = np.array([[5.0, 0, 0, 0, 0],   # "yes"
                       [0, 0, 4.0, 1, 0],   # "2"
                       [0, 0, 0, 0, 3.0],   # "red"
                       [1.0, 1.0, 0, 0, 0]])  # tie between "yes" and "no": "yes" (first)
    answers = [["yes"] * 10,
               ["3", "2", "2", "3"],        # 2-2 tie: canonical "3", listed first
               ["blue", "blue", "red"],     # canonical "blue" is not in the vocabulary
               ["no", "no", "no", "yes"]]
    out = metrics.vqa_metrics(logits, answers, VOCAB)
    assert out["accuracy"] == pytest.approx(1 / 4)  # only the first question
    # min(#matching annotators / 3, 1): 1, 2/3, 1/3, 1/3
    assert out["vqa_score"] == pytest.approx((1 + 2 / 3 + 1 / 3 + 1 / 3) / 4)
    assert out["coverage"] == pytest.approx(3 / 4)
    assert out["n"] == 4
    assert out["accuracy_se"] == pytest.approx(math.sqrt(0.25 * 0.75 / 4))


def test_vqa_single_answer_per_question_and_tensor_logits():
    logits = torch.tensor([[0.1, 0.9, 0, 0, 0], [0, 0, 0, 2.0, 0]])
    out = metrics.vqa_metrics(logits, [["no"], ["2"]], VOCAB)
    assert out["accuracy"] == 0.5
    assert out["vqa_score"] == pytest.approx(1 / 6)  # one annotator: a match scores 1/3
    assert out["coverage"] == 1.0


@pytest.mark.parametrize("logits, answers, match", [
    (np.zeros((2, 4)), [["yes"], ["no"]], "N×A"),
    (np.zeros((3, 5)), [["yes"], ["no"]], "N×A"),
    (np.zeros((2, 5)), [["yes"], []], "at least one"),
])
def test_vqa_rejects_bad_inputs(logits, answers, match):
    with pytest.raises(ValueError, match=match):
        metrics.vqa_metrics(logits, answers, VOCAB)
