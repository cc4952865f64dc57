"""The contrastive task loss (FLYP-style CLIP loss) and the feature gathering it needs under DDP.

Conventions shared with :mod:`tracer_cli.engine.distill`: features are L2-normalized B×D tensors,
``scale`` is the already exponentiated logit scale (a float or a 0-d tensor), and the targets are
the diagonal, ``arange(B)``, unless a :class:`~tracer_cli.sdk.Pairing` names candidate texts
and targets per image (then the logits are B×K and only image→text is scored).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tracer_cli.sdk.contracts import Pairing

CLIP_PAIRING = Pairing()  # B images, B texts, text i is image i's
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


def paired_logits(a: torch.Tensor, b: torch.Tensor, scale, pairing: Pairing = CLIP_PAIRING
                  ) -> torch.Tensor:
    """``scale · a bᵀ`` (B×T), or its columns each row's pairing names: B×K, row i over image
    i's candidate texts."""
    logits = pairwise_logits(a, b, scale)
    return logits if pairing.symmetric else logits.gather(1, pairing.candidates)


def paired_targets(logits: torch.Tensor, pairing: Pairing = CLIP_PAIRING) -> torch.Tensor:
    """The right column of each row: the diagonal, or the pairing's targets."""
    return diagonal_targets(logits) if pairing.symmetric else pairing.targets


@full_precision
def clip_loss(fi: torch.Tensor, ft: torch.Tensor, scale, pairing: Pairing = CLIP_PAIRING
              ) -> torch.Tensor:
    """½[CE(S) + CE(Sᵀ)] with S = scale · fi ftᵀ: the symmetric contrastive (CLIP/FLYP) loss;
    with candidate texts per image CE(S) alone, S the B×K logits over each image's candidates."""
    logits = paired_logits(fi, ft, scale, pairing)
    labels = paired_targets(logits, pairing)
    if not pairing.symmetric:
        return F.cross_entropy(logits, labels)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def gather_features(fi: torch.Tensor, ft: torch.Tensor, sizes: Sequence[int] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the features of all ranks, in rank order, so negatives span the global batch.

    Without an initialized process group this returns its inputs unchanged. Otherwise it
    all-gathers without gradient and puts this rank's own tensors (which do carry the gradient) back
    in their slot, the open_clip ``gather_with_grad=False`` pattern: every rank then computes the
    same global loss but back-propagates only through its local features. ``sizes`` are the local
    batch sizes of all ranks when they may differ (unreadable images dropped); slices are padded
    to the largest for the collective and cut back after it.

    Gradient scaling: with this pattern rank r's gradient is ∂L/∂f_r·∂f_r/∂θ plus the full term of
    every parameter the loss reaches directly on each rank (the logit scale), and DDP averages over
    the W ranks. The training loop therefore multiplies the data loss by W and divides the gradient
    of the logit scale by W (:func:`scale_grad`), which makes the averaged gradient equal the
    single-process gradient of the global batch exactly, not up to a factor: gradient clipping and
    AdamW's epsilon would notice a factor.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return fi, ft
    return _gather_one(fi, sizes), _gather_one(ft, sizes)


def _gather_one(local: torch.Tensor, sizes: Sequence[int] | None) -> torch.Tensor:
    world, rank = dist.get_world_size(), dist.get_rank()
    longest = max(sizes) if sizes else local.shape[0]
    send = local.detach()
    if send.shape[0] < longest:
        send = torch.cat([send, send.new_zeros(longest - send.shape[0], *send.shape[1:])])
    parts = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(parts, send.contiguous())
    if sizes:
        parts = [part[:n] for part, n in zip(parts, sizes)]
    parts[rank] = local
    return torch.cat(parts, dim=0)


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x`` with its value unchanged (bit for bit) and its gradient multiplied by ``factor``."""
    if factor == 1.0:
        return x
    detached = x.detach()
    return detached + (x - detached) * factor


def contrastive_loss(fi: torch.Tensor, ft: torch.Tensor, scale) -> torch.Tensor:
    """:func:`clip_loss` over the global batch: features are gathered from all ranks first."""
    gi, gt = gather_features(fi, ft)
    return clip_loss(gi, gt, scale)
