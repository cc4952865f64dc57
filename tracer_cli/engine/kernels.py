"""Averaging kernels of the teachers as pure functions: Beta (WMA) and momentum (EMA) weights.

The teachers in :mod:`tracer_cli.engine.teachers` use :func:`wma_kernel_weight`; the diagnostics
use the closed-form weight lists to show how much of the teacher still sits on the pretrained
weights (:func:`anchor_mass`) and how far it trails the student (:func:`teacher_lag`,
:func:`relative_lag`). Weight lists are ``[(step, weight), ...]`` with step 0 standing for θ₀;
they are not normalized.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

Weights = list[tuple[int, float]]


def beta_pdf(x: float, a: float, b: float) -> float:
    """Density of Beta(a, b) at ``x`` in (0, 1), via ``math.lgamma`` (no scipy needed)."""
    if not 0.0 < x < 1.0:
        raise ValueError(f"Beta pdf is evaluated inside (0, 1), got x={x}")
    log_norm = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return math.exp((a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x) - log_norm)


def wma_position(step: int, total_steps: int) -> float:
    """Kernel position of the weights after ``step`` optimizer steps: (step + 0.5)/(N + 1).

    Position follows training progress, so it is the same for every ``update_every``. (The reference
    code counts updates instead but divides by the number of steps, which with k > 1 only ever uses
    the first 1/k of the kernel.) The half-step offset keeps x strictly inside (0, 1).
    """
    if not 0 <= step <= total_steps:
        raise ValueError(f"step {step} is outside the planned horizon 0..{total_steps}")
    return (step + 0.5) / (total_steps + 1)


def wma_kernel_weight(step: int, total_steps: int, beta: float) -> float:
    """w(step) = Beta(β, β).pdf(wma_position(step, total_steps))."""
    return beta_pdf(wma_position(step, total_steps), beta, beta)


def _update_steps(total_steps: int, update_every: int, upto: int | None) -> range:
    last = total_steps if upto is None else min(upto, total_steps)
    return range(update_every, last + 1, update_every)


def wma_weights(
    total_steps: int, beta: float = 0.5, update_every: int = 1, upto: int | None = None
) -> Weights:
    """Weights of the WMA teacher after step ``upto`` (default: the whole horizon), θ₀ included."""
    steps = [0, *_update_steps(total_steps, update_every, upto)]
    return [(s, wma_kernel_weight(s, total_steps, beta)) for s in steps]


def linear_warmup_momentum(
    step: int, total_steps: int, start: float, end: float, warmup: float
) -> float:
    """Momentum rising linearly from ``start`` to ``end`` over the first ``warmup`` of the steps."""
    ramp = warmup * total_steps
    if ramp <= 0:
        return end
    return start + (end - start) * min(step / ramp, 1.0)


def ema_weights(
    total_steps: int,
    momentum_fn: Callable[[int], float],
    update_every: int = 500,
    upto: int | None = None,
) -> Weights:
    """Effective weights of an EMA teacher (φ ← m·φ + (1 − m)·θ every k steps), θ₀ included.

    Unrolling the recursion, θ₀ keeps Π m over all updates and the update at step s gets
    (1 − m_s) times the product of the momenta of the later updates; the weights sum to one.
    """
    steps = list(_update_steps(total_steps, update_every, upto))
    weights: Weights = []
    carry = 1.0
    for s in reversed(steps):
        m = momentum_fn(s)
        weights.append((s, (1.0 - m) * carry))
        carry *= m
    weights.append((0, carry))
    return weights[::-1]


def anchor_mass(weights: Sequence[tuple[int, float]]) -> float:
    """Share of the teacher that sits on θ₀ (the weight of step 0 over the total)."""
    total = sum(w for _, w in weights)
    return sum(w for s, w in weights if s == 0) / total


def teacher_lag(weights: Sequence[tuple[int, float]], t: int) -> float:
    """L(t) = t − Σ w_s·s / Σ w_s: how many steps the teacher trails a student at step ``t``."""
    total = sum(w for _, w in weights)
    return t - sum(w * s for s, w in weights) / total


def relative_lag(weights: Sequence[tuple[int, float]], t: int) -> float:
    """ρ(t) = L(t)/t: the share of the distance travelled from θ₀ that the teacher holds back."""
    if t <= 0:
        raise ValueError("relative lag is defined for t > 0")
    return teacher_lag(weights, t) / t
