"""Helpers of gradient accumulation that keeps the big-batch loss (``train.accum_steps``).

The contrastive loss and every distillation view are functions of the *whole* batch's features
(each example's negatives are the other examples), so dividing the loss of each micro-batch by N
and summing gradients would train on N small batches, not on one big one. Instead the step runs in
two passes, the scheme of open_clip's ``accum_freq``: first the features of every micro-batch
without a graph, then each micro-batch again with its graph, its rows substituted into the cached
features of the whole batch, and the whole-batch loss back-propagated through those rows only.
Summed over the micro-batches this is exactly the gradient of the whole-batch loss, at the memory
of one micro-batch's activations (plus one B×D feature cache). These helpers carve batches and
features; the two passes are :meth:`tracer_cli.engine.step.Trainer.step`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


def micro_bounds(size: int, parts: int) -> list[tuple[int, int]]:
    """``[start, end)`` of ``parts`` contiguous micro-batches covering ``size`` rows (sizes differ
    by at most one; never an empty one, so fewer parts when ``size < parts``)."""
    parts = max(1, min(parts, size))
    base, extra = divmod(size, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def slice_batch(batch: dict[str, Any], start: int, end: int) -> dict[str, Any]:
    """Rows ``[start, end)`` of a collated batch: tensors along dim 0, lists by item."""
    return {k: v[start:end] if isinstance(v, (torch.Tensor, list, tuple)) else v
            for k, v in batch.items()}


def rows(x: torch.Tensor | None, start: int, end: int) -> torch.Tensor | None:
    return None if x is None else x[start:end]


def substitute(cached: torch.Tensor, offset: int, live: torch.Tensor) -> torch.Tensor:
    """``cached`` (detached, whole batch) with rows ``offset .. offset + len(live)`` replaced by
    ``live``, which carries the gradient."""
    return torch.cat([cached[:offset], live, cached[offset + live.shape[0]:]])


@contextlib.contextmanager
def bn_statistics_kept(module: nn.Module) -> Iterator[None]:
    """Restore the running statistics of BatchNorm layers in training mode on exit.

    The first pass runs the student in training mode (its features must be those the second pass
    recomputes), which would update the running statistics a second time per micro-batch.
    """
    saved = [(m, {k: b.clone() for k, b in m.named_buffers(recurse=False)})
             for m in module.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for name, value in buffers.items():
                    getattr(m, name).copy_(value)
