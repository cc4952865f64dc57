"""The contrastive task loss (FLYP-style CLIP loss) and the feature gathering it needs under DDP.

Conventions shared with :mod:`tracer_cli.engine.distill`: features are L2-normalized B×D tensors,
``scale`` is the already exponentiated logit scale (a float or a 0-d tensor), and the targets are
the diagonal, ``arange(B)``.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

_F = TypeVar("_F", bound=Callable)


def _promote(x):
    # float64 stays float64 (the golden tests run in double); anything narrower becomes float32.
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float64:
        return x.float()
    return x


def _device_type(args) -> str:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device.type
    return "cpu"


def full_precision(fn: _F) -> _F:
    """Run ``fn`` with its tensor arguments in at least float32 and autocast switched off.

    Softmax, log-softmax and KL of bf16/fp16 logits lose precision badly: with a logit scale near
    100, bf16 keeps about 3 significant digits of each logit, so small teacher-student differences
    (exactly what distillation measures) round away. These losses act on B×B matrices, so computing
    them in float32 costs nothing measurable. Casting alone is not enough: under autocast a float32
    matmul would be run in bf16 again, hence autocast is disabled inside.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        args = tuple(_promote(a) for a in args)
        kwargs = {k: _promote(v) for k, v in kwargs.items()}
        with torch.autocast(device_type=_device_type(args), enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def pairwise_logits(a: torch.Tensor, b: torch.Tensor, scale) -> torch.Tensor:
    """``scale · a bᵀ``: row i scores item i of ``a`` against every item of ``b``."""
    return scale * a @ b.t()


def diagonal_targets(logits: torch.Tensor) -> torch.Tensor:
    """Targets ``arange(B)`` for a square B×B logit matrix (pair i matches pair i)."""
    return torch.arange(logits.shape[0], device=logits.device)


@full_precision
def clip_loss(fi: torch.Tensor, ft: torch.Tensor, scale) -> torch.Tensor:
    """½[CE(S) + CE(Sᵀ)] with S = scale · fi ftᵀ: the symmetric contrastive (CLIP/FLYP) loss."""
    logits = pairwise_logits(fi, ft, scale)
    labels = diagonal_targets(logits)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def gather_features(fi: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the features of all ranks so negatives span the global batch.

    Without an initialized process group this returns its inputs unchanged. Otherwise it
    all-gathers without gradient and puts this rank's own tensors (which do carry the gradient) back
    in their slot, the open_clip ``gather_with_grad=False`` pattern: every rank then computes the
    same global loss but back-propagates only through its local features. DDP averages gradients
    over ranks, so the result is the global gradient divided by the world size, a constant factor
    that AdamW is insensitive to; all_gather with autograd would instead need an extra collective
    in the backward pass.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return fi, ft
    world, rank = dist.get_world_size(), dist.get_rank()
    gathered = []
    for local in (fi, ft):
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.detach().contiguous())
        parts[rank] = local
        gathered.append(torch.cat(parts, dim=0))
    return gathered[0], gathered[1]


def contrastive_loss(fi: torch.Tensor, ft: torch.Tensor, scale) -> torch.Tensor:
    """:func:`clip_loss` over the global batch: features are gathered from all ranks first."""
    gi, gt = gather_features(fi, ft)
    return clip_loss(gi, gt, scale)
