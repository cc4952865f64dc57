"""Device and precision: ``"32-true" | "bf16-mixed" | "16-mixed"`` (Lightning's vocabulary).

``auto`` picks bf16 autocast on CUDA and fp32 on CPU. fp16 gets a GradScaler; bf16 does not need
one (same exponent range as fp32). All three run on CPU as well (PyTorch has CPU autocast for
bf16 and fp16 and a CPU GradScaler): slow there, but it is how the test suite exercises the
mixed-precision paths without a GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch

from tracer_cli.errors import UsageError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"run.device = '{name}' but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    name: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.name)

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Enabled only for fp16: bf16 and fp32 gradients do not underflow.
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "16-mixed")


def resolve_precision(name: str, device: torch.device) -> Precision:
    if name == "auto":
        name = "bf16-mixed" if device.type == "cuda" else "32-true"
    return Precision(name, device)


