"""The objects plugins hand to the engine: backbones, dataset bundles and tasks.

These are structural contracts (``typing.Protocol``) plus one dataclass, so a third-party plugin
satisfies them without subclassing anything from tracer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

# Re-exported: a task plugin declares its metrics with these (defined apart, free of torch, so the
# CLI can read a spec without importing torch).
from tracer_cli.metric_spec import CLASSIFICATION_METRICS, TaskMetrics, task_metrics

__all__ = ["Backbone", "CLASSIFICATION_METRICS", "DatasetBundle", "SkippedItem", "Task",
           "TaskMetrics", "skipped_item", "task_metrics"]


@dataclass
class DatasetBundle:
    """A dataset plus the metadata tasks need.

    ``dataset[i]`` returns a dict with ``"image"`` (a transformed image tensor), ``"label"`` (int)
    and, for caption datasets, ``"caption"`` (str). ``classnames[label]`` names each label;
    ``templates`` are prompt templates with one ``{}`` for the class name; ``class_subset`` lists
    the indices of these classes in a parent label space when the dataset covers only part of it
    (ImageNet-R: 200 of 1000). An item that cannot be read (a corrupt image) is returned as a
    :class:`SkippedItem` rather than raised, so one bad file does not end a long run.
    """

    dataset: Dataset
    classnames: Sequence[str]
    templates: Sequence[str]
    has_captions: bool = False
    class_subset: Sequence[int] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedItem:
    """What a dataset returns instead of an item it cannot read (a corrupt or unreadable image).

    The engine drops these from the batch, counts them, reports them at the end of the run and in
    ``metrics.jsonl``, and stops the run when more than ``data.max_bad_fraction`` of the training
    set turns out to be unreadable. ``source`` names the file (or row) and ``reason`` says what
    went wrong, e.g. ``"OSError: image file is truncated"``.
    """

    source: str
    reason: str


def skipped_item(source: Any, exc: BaseException) -> SkippedItem:
    """A :class:`SkippedItem` for ``source`` (a path, a row id) that failed with ``exc``."""
    return SkippedItem(str(source), f"{type(exc).__name__}: {exc}")


class Backbone(Protocol):
    """A CLIP-style dual encoder.

    Methods that run the network take the module explicitly (``module`` is :attr:`model` or a copy
    of it, such as the teacher), so student and teacher share one implementation.

    Optional members the engine reads when present: ``set_grad_checkpointing(module) ->
    list[str]`` turns on activation checkpointing for ``module`` and returns the towers it covers
    (``"image"``, ``"text"``); ``train.grad_checkpointing = true`` needs it.
    ``shard_units(module) -> list[nn.Module]`` names the blocks ``train.strategy = "fsdp"``
    shards one at a time (without it the whole model is one unit).
    """

    model: nn.Module
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_eval: Callable[[Any], torch.Tensor]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor: ...

    def encode_image(self, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """L2-normalized image features, B×D."""

    def encode_text(self, module: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalized text features, B×D."""

    def logit_scale(self, module: nn.Module) -> torch.Tensor:
        """The exponentiated logit scale s (about 100 for pretrained CLIP)."""

    def projections(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(V, T): visual (in_v×D) and text (in_t×D) projection matrices, or None if absent."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description (arch, pretrained source, config) for the run's lock file."""


class Task(Protocol):
    """What is learned and how it is measured, on top of the shared engine.

    Optional members the engine reads when present: ``metrics`` (a :class:`TaskMetrics`; default
    :data:`CLASSIFICATION_METRICS`), ``objective`` (``"contrastive"``, the default, or ``"head"``:
    the task trains its own head with its own loss), and for tasks with a head
    ``make_head(backbone, module, bundle, device, autocast) -> nn.Module``,
    ``load_head(state) -> nn.Module`` and ``head_loss(head_output, batch) -> Tensor``; then
    ``evaluate`` also takes ``head=`` (None: evaluate without a trained head, e.g. zero-shot).
    """

    def train_texts(self, batch: dict[str, Any], bundle: DatasetBundle,
                    rng: torch.Generator) -> list[str]:
        """The caption paired with each training image of ``batch`` (contrastive targets)."""

    def evaluate(self, backbone: Backbone, module: nn.Module,
                 datasets: Mapping[str, tuple[DatasetBundle, Any]], device: torch.device,
                 autocast: Callable[[], Any]) -> dict[str, dict[str, Any]]:
        """Evaluate ``module`` on each ``name -> (bundle, loader)``.

        Returns ``name -> {"metrics": {...}, "logits": Tensor, "labels": Tensor}``; heads shared by
        datasets with the same label space are computed once per call. ``logits`` and ``labels``
        are optional (retrieval has none): without them no reliability diagram or predictions
        file is written for the dataset.
        """
