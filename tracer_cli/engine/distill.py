"""Self-distillation views of TRACER as small pure functions on tensors.

Conventions (checked against the reference implementation's numbers in the tests): student features
``fi``, ``ft`` and teacher features ``gi``, ``gt`` are L2-normalized B×D tensors; ``s`` and ``s_t``
are the student's and teacher's logit scales, already exponentiated; KL divergences use the
``batchmean`` reduction (sum over a row, mean over rows); cross-entropy targets are ``arange(B)``.
Student logits are ``S = s · fi ftᵀ``; teacher logits are ``T = s_t · gi gtᵀ``, divided by the
distillation temperature τ only for plain soft distillation, as the reference code does (see
:func:`teacher_logits`). Every function computes in float32 or wider, see
:func:`tracer_cli.engine.losses.full_precision` for why.

A :class:`~tracer_cli.sdk.contracts.Pairing` with candidate texts per image (VQA: each image's
question with every candidate answer) turns the B×B logits into B×K ones, row i over image i's
candidates, with the pairing's targets instead of the diagonal. Every view then keeps its
image→text direction only (a candidate text has no one right image): CRD and XKD become the KL
between the teacher's and the student's answer distributions, ICL picks each image's right text
among the teacher's candidate texts, FD is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tracer_cli.engine.losses import (
    CLIP_PAIRING, full_precision, paired_logits, paired_targets)
from tracer_cli.recipe import DistillWeights
from tracer_cli.sdk.contracts import Pairing


def student_logits(fi: torch.Tensor, ft: torch.Tensor, s, pairing: Pairing = CLIP_PAIRING
                   ) -> torch.Tensor:
    """``S = s · fi ftᵀ`` (image→text rows; its transpose is text→image), B×K with candidates."""
    return paired_logits(fi, ft, s, pairing)


def teacher_logits(
    gi: torch.Tensor, gt: torch.Tensor, s_t, temperature: float = 1.0,
    pairing: Pairing = CLIP_PAIRING
) -> torch.Tensor:
    """``T = s_t · gi gtᵀ / τ``: teacher logits, softened by τ (plain soft distillation only)."""
    return paired_logits(gi, gt, s_t, pairing) / temperature


def _both_ways(i2t, t2i, symmetric: bool) -> torch.Tensor:
    """The mean of the two directions, or image→text alone for candidate texts (``t2i`` is then
    never computed)."""
    return 0.5 * (i2t() + t2i()) if symmetric else i2t()


def _kl(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) ‖ softmax(logits)) row-wise, ``batchmean``; log-space for stability."""
    return F.kl_div(
        F.log_softmax(logits, dim=1),
        F.log_softmax(target_logits, dim=1),
        reduction="batchmean",
        log_target=True,
    )


def _soft_ce(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """−Σ softmax(target)·log softmax(logits) over each row, mean over rows."""
    return -(F.softmax(target_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


@full_precision
def crd(S: torch.Tensor, T: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """Relational view: ½[KL(softmax(T)‖softmax(S)) + KL(softmax(Tᵀ)‖softmax(Sᵀ))]; the first
    term alone when not ``symmetric`` (candidate texts: the answer distributions)."""
    return _both_ways(lambda: _kl(T, S), lambda: _kl(T.t(), S.t()), symmetric)


@full_precision
def fd(fi: torch.Tensor, ft: torch.Tensor, gi: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Feature view: MSE(fi, gi) + MSE(ft, gt), element means (hence the large weight α_fd)."""
    return F.mse_loss(fi, gi) + F.mse_loss(ft, gt)


@full_precision
def icl(fi: torch.Tensor, ft: torch.Tensor, gi: torch.Tensor, gt: torch.Tensor, s,
        pairing: Pairing = CLIP_PAIRING) -> torch.Tensor:
    """Interactive contrastive view: ½[CE(s·fi gtᵀ) + CE(s·ft giᵀ)], with the *student* scale;
    with candidate texts CE(s·fi gtᵀ) over each image's candidates, against its target."""
    i2t = paired_logits(fi, gt, s, pairing)
    labels = paired_targets(i2t, pairing)
    return _both_ways(lambda: F.cross_entropy(i2t, labels),
                      lambda: F.cross_entropy(paired_logits(ft, gi, s), labels),
                      pairing.symmetric)


@full_precision
def xkd(
    T: torch.Tensor, fi: torch.Tensor, ft: torch.Tensor, gi: torch.Tensor, gt: torch.Tensor, s,
    pairing: Pairing = CLIP_PAIRING
) -> torch.Tensor:
    """Cross-modal KD: ½[KL(softmax(T)‖softmax(s·fi gtᵀ)) + KL(softmax(Tᵀ)‖softmax(s·ft giᵀ))];
    the first term alone, over each image's candidates, with candidate texts."""
    return _both_ways(lambda: _kl(T, paired_logits(fi, gt, s, pairing)),
                      lambda: _kl(T.t(), paired_logits(ft, gi, s)), pairing.symmetric)


@full_precision
def plain_sd(S: torch.Tensor, T: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """Plain soft distillation: soft CE in both directions, *summed* (not averaged) over the two;
    image→text alone when not ``symmetric``."""
    return _soft_ce(T, S) + (_soft_ce(T.t(), S.t()) if symmetric else 0.0)


@full_precision
def cross_fnorm(V: torch.Tensor, Tp: torch.Tensor) -> torch.Tensor:
    """‖V Tpᵀ‖_F for the visual projection V (in_v×D) and the text projection Tp (in_t×D)."""
    return torch.linalg.matrix_norm(V @ Tp.t(), ord="fro")


@full_precision
def orthogonality(V: torch.Tensor) -> torch.Tensor:
    """‖VᵀV − I_D‖_F for a projection V of shape in×D (CaRot's orthogonality constraint)."""
    eye = torch.eye(V.shape[1], dtype=V.dtype, device=V.device)
    return torch.linalg.matrix_norm(V.t() @ V - eye, ord="fro")


@full_precision
def distillation_loss(
    fi: torch.Tensor,
    ft: torch.Tensor,
    gi: torch.Tensor,
    gt: torch.Tensor,
    s,
    s_t,
    w: DistillWeights,
    pairing: Pairing = CLIP_PAIRING,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``λ_sd · L_SD`` and the unweighted parts (detached, for logging).

    L_SD = α_crd·CRD + α_fd·FD + α_icl·ICL + α_xkd·XKD, or plain soft distillation when every view
    weight is zero; τ (``w.temperature``) divides the teacher logits of plain soft distillation
    only. Views with weight zero are not computed. Teacher features are detached so no
    gradient can reach the teacher even if the caller forgot ``no_grad``. ``parts`` holds one
    entry per computed view plus ``"sd"`` (L_SD before ``λ_sd``). ``pairing`` says which texts
    each image is scored against (module docstring).
    """
    gi, gt = gi.detach(), gt.detach()
    S = student_logits(fi, ft, s, pairing)
    T = teacher_logits(gi, gt, s_t, pairing=pairing)
    both = pairing.symmetric
    if not w.uses_views:
        T = T / w.temperature
        terms = {"plain_sd": (1.0, lambda: plain_sd(S, T, both))}
    else:
        every = {
            "crd": lambda: crd(S, T, both),
            "fd": lambda: fd(fi, ft, gi, gt),
            "icl": lambda: icl(fi, ft, gi, gt, s, pairing),
            "xkd": lambda: xkd(T, fi, ft, gi, gt, s, pairing),
        }
        terms = {k: (a, every[k]) for k, a in w.view_weights.items() if a > 0}
    parts: dict[str, torch.Tensor] = {}
    sd = S.new_zeros(())
    for name, (alpha, compute) in terms.items():
        value = compute()
        parts[name] = value.detach()
        sd = sd + alpha * value
    parts["sd"] = sd.detach()
    return w.lambda_sd * sd, parts


def projection_penalty(
    V: torch.Tensor, Tp: torch.Tensor, w: DistillWeights
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``λ_fn·‖V Tpᵀ‖_F + λ_orth·‖VᵀV − I‖_F`` and the unweighted, detached parts.

    Terms with weight zero are skipped (and absent from ``parts``).
    """
    loss = V.new_zeros((), dtype=torch.promote_types(V.dtype, torch.float32))
    parts: dict[str, torch.Tensor] = {}
    if w.lambda_fn > 0:
        value = cross_fnorm(V, Tp)
        parts["cross_fnorm"] = value.detach()
        loss = loss + w.lambda_fn * value
    if w.lambda_orth > 0:
        value = orthogonality(V)
        parts["orthogonality"] = value.detach()
        loss = loss + w.lambda_orth * value
    return loss, parts


@full_precision
def teacher_student_kl(S: torch.Tensor, T: torch.Tensor, symmetric: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(softmax(T)‖softmax(S)), KL(softmax(Tᵀ)‖softmax(Sᵀ))), each row-wise ``batchmean``.

    Not ``symmetric`` (candidate texts), both entries are the image→text KL: there is no
    text→image distribution, and readers that average the two directions (``tracer
    distill-check``) then read that one."""
    i2t = _kl(T, S)
    return i2t, (_kl(T.t(), S.t()) if symmetric else i2t)


@full_precision
def top1_agreement(S: torch.Tensor, T: torch.Tensor, symmetric: bool = True) -> torch.Tensor:
    """Share of rows where student and teacher agree on the argmax, mean of both directions
    (image→text alone when not ``symmetric``)."""
    return _both_ways(lambda: (S.argmax(dim=1) == T.argmax(dim=1)).float().mean(),
                      lambda: (S.argmax(dim=0) == T.argmax(dim=0)).float().mean(), symmetric)
