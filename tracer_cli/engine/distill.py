"""Self-distillation views of TRACER as small pure functions on tensors.

Conventions (checked against the reference implementation's numbers in the tests): student features
``fi``, ``ft`` and teacher features ``gi``, ``gt`` are L2-normalized B×D tensors; ``s`` and ``s_t``
are the student's and teacher's logit scales, already exponentiated; KL divergences use the
``batchmean`` reduction (sum over a row, mean over rows); cross-entropy targets are ``arange(B)``.
Student logits are ``S = s · fi ftᵀ``; teacher logits are ``T = s_t · gi gtᵀ``, divided by the
distillation temperature τ only for plain soft distillation, as the reference code does (see
:func:`teacher_logits`). Every function computes in float32 or wider, see
:func:`tracer_cli.engine.losses.full_precision` for why.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tracer_cli.engine.losses import diagonal_targets, full_precision, pairwise_logits
from tracer_cli.recipe import DistillWeights

def student_logits(fi: torch.Tensor, ft: torch.Tensor, s) -> torch.Tensor:
    """``S = s · fi ftᵀ`` (image→text rows; its transpose is text→image)."""
    return pairwise_logits(fi, ft, s)


def teacher_logits(
    gi: torch.Tensor, gt: torch.Tensor, s_t, temperature: float = 1.0
) -> torch.Tensor:
    """``T = s_t · gi gtᵀ / τ``: teacher logits, softened by τ (plain soft distillation only)."""
    return pairwise_logits(gi, gt, s_t) / temperature


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
def crd(S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Relational view: ½[KL(softmax(T)‖softmax(S)) + KL(softmax(Tᵀ)‖softmax(Sᵀ))]."""
    return 0.5 * (_kl(T, S) + _kl(T.t(), S.t()))


@full_precision
def fd(fi: torch.Tensor, ft: torch.Tensor, gi: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Feature view: MSE(fi, gi) + MSE(ft, gt), element means (hence the large weight α_fd)."""
    return F.mse_loss(fi, gi) + F.mse_loss(ft, gt)


@full_precision
def icl(fi: torch.Tensor, ft: torch.Tensor, gi: torch.Tensor, gt: torch.Tensor, s) -> torch.Tensor:
    """Interactive contrastive view: ½[CE(s·fi gtᵀ) + CE(s·ft giᵀ)], with the *student* scale."""
    i2t = pairwise_logits(fi, gt, s)
    t2i = pairwise_logits(ft, gi, s)
    labels = diagonal_targets(i2t)
    return 0.5 * (F.cross_entropy(i2t, labels) + F.cross_entropy(t2i, labels))


@full_precision
def xkd(
    T: torch.Tensor, fi: torch.Tensor, ft: torch.Tensor, gi: torch.Tensor, gt: torch.Tensor, s
) -> torch.Tensor:
    """Cross-modal KD: ½[KL(softmax(T)‖softmax(s·fi gtᵀ)) + KL(softmax(Tᵀ)‖softmax(s·ft giᵀ))]."""
    return 0.5 * (_kl(T, pairwise_logits(fi, gt, s)) + _kl(T.t(), pairwise_logits(ft, gi, s)))


@full_precision
def plain_sd(S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Plain soft distillation: soft CE in both directions, *summed* (not averaged) over the two."""
    return _soft_ce(T, S) + _soft_ce(T.t(), S.t())


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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``λ_sd · L_SD`` and the unweighted parts (detached, for logging).

    L_SD = α_crd·CRD + α_fd·FD + α_icl·ICL + α_xkd·XKD, or plain soft distillation when every view
    weight is zero; τ (``w.temperature``) divides the teacher logits of plain soft distillation
    only. Views with weight zero are not computed. Teacher features are detached so no
    gradient can reach the teacher even if the caller forgot ``no_grad``. ``parts`` holds one
    entry per computed view plus ``"sd"`` (L_SD before ``λ_sd``).
    """
    gi, gt = gi.detach(), gt.detach()
    S = student_logits(fi, ft, s)
    T = teacher_logits(gi, gt, s_t)
    if not w.uses_views:
        T = T / w.temperature
        terms = {"plain_sd": (1.0, lambda: plain_sd(S, T))}
    else:
        every = {
            "crd": lambda: crd(S, T),
            "fd": lambda: fd(fi, ft, gi, gt),
            "icl": lambda: icl(fi, ft, gi, gt, s),
            "xkd": lambda: xkd(T, fi, ft, gi, gt, s),
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
def teacher_student_kl(S: torch.Tensor, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(softmax(T)‖softmax(S)), KL(softmax(Tᵀ)‖softmax(Sᵀ))), each row-wise ``batchmean``."""
    return _kl(T, S), _kl(T.t(), S.t())


@full_precision
def top1_agreement(S: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Share of rows where student and teacher agree on the argmax, mean of both directions."""
    i2t = (S.argmax(dim=1) == T.argmax(dim=1)).float().mean()
    t2i = (S.argmax(dim=0) == T.argmax(dim=0)).float().mean()
    return 0.5 * (i2t + t2i)
