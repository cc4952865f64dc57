"""Switching modules to evaluation mode for a while, and back exactly as they were."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(*modules: nn.Module | None) -> Iterator[None]:
    """Every given module (None is skipped) in eval mode inside the block; afterwards each
    submodule gets back its own mode, so a BatchNorm layer kept in eval mode inside a training
    model (``model.freeze_bn_stats``) stays so."""
    saved = [(m, m.training) for module in modules if module is not None
             for m in module.modules()]
    for module in modules:
        if module is not None:
            module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training
