"""Task ``retrieval``: image-text finetuning on caption datasets, scored by recall@k both ways.

Training pairs each image with one of its captions, drawn uniformly per image per step from the
run's seeded text RNG, so every caption of an image is used over the epochs; the loss is the
engine's own: the contrastive (FLYP) loss, plus the WMA-teacher distillation and the projection
regularizers when the method has them (``tracer``, ``carot``). Nothing about TRACER changes for
this task: it only decides which caption an image is paired with, and how a model is measured.

Evaluation encodes every image of a dataset and every caption of each image (texts in chunks) and
reports recall@1/5/10 image→text (an image counts as retrieved at k when *any* of its captions is
among its k most similar texts), recall@1/5/10 text→image (a caption is retrieved when its own
image is among its k most similar images), their mean ``mean_recall`` (the headline metric), and
the numbers of images and texts (the COCO / Flickr30k protocol,
:func:`tracer_cli.sdk.retrieval_metrics`). The captions are read from the evaluation batches,
so an unreadable image takes its captions out of the evaluation with it.

Datasets: any caption dataset, i.e. items with ``"captions"`` (all of an image's captions) or at
least ``"caption"``: ``synth-captions``, ``csv``, ``hf`` and ``webdataset`` with
``mode = "captions"``.

There is no task head: the head methods (``lp``, ``ft``, ``lpft``) are refused; use
``zeroshot``, ``flyp``, ``carot`` or ``tracer``. The ``[task]`` table takes no keys.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tracer_cli.sdk import (
    Backbone, DatasetBundle, Options, RETRIEVAL_KS, TaskMetrics, UsageError, eval_mode, hookimpl,
    retrieval_metrics)

_TEXT_CHUNK = 512
_RECALLS = tuple(f"{d}_r{k}" for d in ("i2t", "t2i") for k in RETRIEVAL_KS)

RETRIEVAL_METRICS = TaskMetrics(
    primary="mean_recall",
    columns=(*_RECALLS, "mean_recall", "n_images", "n_texts"),
    higher_is_better=frozenset({*_RECALLS, "mean_recall", "n_images", "n_texts"}),
    fractions=frozenset({*_RECALLS, "mean_recall"}),
    averaged=("mean_recall", "i2t_r1", "t2i_r1"),
    headers={**{f"{d}_r{k}": f"{'I→T' if d == 'i2t' else 'T→I'}@{k} %"
                for d in ("i2t", "t2i") for k in RETRIEVAL_KS},
             "mean_recall": "mean R %", "n_images": "images", "n_texts": "texts"},
    percent=frozenset({*_RECALLS, "mean_recall"}),
)


def _captions(batch: dict[str, Any], what: str) -> list[list[str]]:
    """Each item's captions: ``"captions"`` (lists), else its single ``"caption"``."""
    if "captions" in batch:
        return [[str(c) for c in caps] for caps in batch["captions"]]
    if "caption" in batch:
        return [[str(c)] for c in batch["caption"]]
    raise UsageError(f"task 'retrieval' needs a caption dataset ({what} has no captions): use "
                     "synth-captions, or csv / hf / webdataset with mode = \"captions\"")


@torch.no_grad()
def encode_texts(backbone: Backbone, module: nn.Module, texts: Sequence[str],
                 device: torch.device, autocast: Any) -> torch.Tensor:
    """L2-normalized text features (float32, N×D), encoded ``_TEXT_CHUNK`` texts at a time."""
    feats = []
    with autocast():
        for i in range(0, len(texts), _TEXT_CHUNK):
            tokens = backbone.tokenize(list(texts[i:i + _TEXT_CHUNK])).to(device)
            feats.append(backbone.encode_text(module, tokens).float())
    return torch.cat(feats)


class RetrievalTask:
    """Image-text retrieval on top of a CLIP backbone: contrastive training on captions, recall@k
    evaluation in both directions."""

    name = "retrieval"
    objective = "contrastive"
    metrics = RETRIEVAL_METRICS

    def train_texts(self, batch: dict[str, Any], bundle: DatasetBundle,
                    rng: torch.Generator) -> list[str]:
        """One of each image's captions, drawn uniformly (one draw from ``rng`` per image)."""
        captions = _captions(batch, "the training set")
        if any(not caps for caps in captions):
            raise UsageError("task 'retrieval': a training image has no caption")
        counts = torch.tensor([len(caps) for caps in captions], dtype=torch.float64)
        picks = (torch.rand(len(captions), generator=rng, dtype=torch.float64) * counts).long()
        return [caps[min(int(p), len(caps) - 1)] for caps, p in zip(captions, picks.tolist())]

    @torch.no_grad()
    def evaluate(self, backbone: Backbone, module: nn.Module,
                 datasets: Mapping[str, tuple[DatasetBundle, Any]], device: torch.device,
                 autocast: Any) -> dict[str, dict[str, Any]]:
        """Recall@k metrics per dataset (no logits or labels: nothing to calibrate)."""
        out = {}
        with eval_mode(module):
            for name, (_, loader) in datasets.items():
                images, texts, owner = self._features(backbone, module, loader, device, autocast,
                                                      name)
                out[name] = {"metrics": retrieval_metrics(images, texts, owner)}
        return out

    @staticmethod
    def _features(backbone: Backbone, module: nn.Module, loader: Any, device: torch.device,
                  autocast: Any, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image features in loader order, text features of every caption, and each caption's
        image (its row among the image features)."""
        image_feats, captions, owner = [], [], []
        for batch in loader:
            per_image = _captions(batch, f"dataset '{name}'")
            first = sum(len(f) for f in image_feats)
            with autocast():
                image_feats.append(backbone.encode_image(
                    module, batch["image"].to(device, non_blocking=True)).float())
            for row, caps in enumerate(per_image):
                captions.extend(caps)
                owner.extend([first + row] * len(caps))
        if not image_feats or not captions:
            raise UsageError(f"dataset '{name}' has no readable image with a caption to retrieve")
        texts = encode_texts(backbone, module, captions, device, autocast)
        return torch.cat(image_feats), texts, torch.tensor(owner, dtype=torch.long)


def make_task(options: dict[str, Any]) -> RetrievalTask:
    Options(options, path="task").done()
    return RetrievalTask()


@hookimpl
def tracer_register_tasks(registry) -> None:
    registry.add("retrieval", make_task)
