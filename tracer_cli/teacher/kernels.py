"""Averaging kernels of the teachers as pure functions: Beta (WMA) and momentum (EMA) weights.

The teachers in :mod:`tracer_cli.engine.teachers` use :func:`wma_kernel_weight`; the diagnostics
use the closed-form weight lists to show how much of the teacher still sits on the pretrained
weights (:func:`anchor_mass`) and how far it trails the student (:func:`teacher_lag`,
:func:`relative_lag`). Weight lists are ``[(step, weight), ...]`` with step 0 standing for θ₀;
they are not normalized.

The ``*_curve`` functions give the same quantities for the teacher after *every* step of a horizon
at once, as numpy arrays (:class:`KernelCurve`), so ``tracer distill-check`` can draw a 25,000-step
horizon instantly; the list functions above them stay the readable definitions the curves are
tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tracer_cli.teacher.spec import EMA_UPDATE_EVERY, WMA_BETA, TeacherSpec

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


def is_update_step(step: int, total_steps: int, update_every: int, fold_final: bool) -> bool:
    """Whether the teacher updates after optimizer step ``step`` (1-based count of done steps).

    The reference schedule: after the first step and every ``update_every`` steps from there
    (steps 1, k + 1, 2k + 1, ...: a 0-based step index divisible by k), and, when ``fold_final``
    (the WMA teacher), also after the last planned step, so the teacher ends on the final student.
    """
    if step < 1:
        return False
    return (step - 1) % update_every == 0 or (fold_final and step == total_steps)


def update_steps(total_steps: int, update_every: int, fold_final: bool,
                 upto: int | None = None) -> list[int]:
    """The steps after which the teacher updates (:func:`is_update_step`), up to ``upto``."""
    last = total_steps if upto is None else min(upto, total_steps)
    steps = list(range(1, last + 1, update_every))
    if fold_final and last == total_steps and steps and steps[-1] != total_steps:
        steps.append(total_steps)
    return steps


def wma_weights(
    total_steps: int, beta: float = WMA_BETA, update_every: int = 1, upto: int | None = None
) -> Weights:
    """Weights of the WMA teacher after step ``upto`` (default: the whole horizon), θ₀ included."""
    steps = [0, *update_steps(total_steps, update_every, True, upto)]
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
    update_every: int = EMA_UPDATE_EVERY,
    upto: int | None = None,
) -> Weights:
    """Effective weights of an EMA teacher (φ ← m·φ + (1 − m)·θ every k steps), θ₀ included.

    The updates follow :func:`update_steps` without the final fold (steps 1, k + 1, ...), and the
    update after step s uses ``momentum_fn(s − 1)``: the momentum is read at the 0-based index of
    the optimizer step just taken, as in the reference. Unrolling the recursion, θ₀ keeps Π m over
    all updates and the update at step s gets (1 − m) times the product of the momenta of the
    later updates; the weights sum to one.
    """
    steps = update_steps(total_steps, update_every, False, upto)
    weights: Weights = []
    carry = 1.0
    for s in reversed(steps):
        m = momentum_fn(s - 1)
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


# --------------------------------------------------------------------------- whole-horizon curves


@dataclass(frozen=True)
class KernelCurve:
    """A teacher's kernel statistics after every step t = 0..T of a horizon (array index = t).

    ``log_anchor_mass[t]`` is the log of the weight still on θ₀ (kept as a log: an EMA's anchor
    mass m^(t/k) underflows float64 long before a 25k-step horizon ends), ``lag[t]`` is L(t) and
    ``relative_lag[t]`` is ρ(t) = L(t)/t, NaN at t = 0 where it is undefined. ``updates`` are the
    steps at which the teacher changes.
    """

    log_anchor_mass: np.ndarray
    lag: np.ndarray
    relative_lag: np.ndarray
    updates: np.ndarray

    @property
    def horizon(self) -> int:
        return len(self.lag) - 1

    @property
    def anchor_mass(self) -> np.ndarray:
        return np.exp(self.log_anchor_mass)

    def anchor_half_life(self) -> int | None:
        """Steps since the anchor mass fell to twice its final value: T − min{t : A(t) ≤ 2·A(T)}.

        The trailing half-life at the end of the horizon. For an exponential decay m^(t/k) it is
        the usual half-life k·ln 2/ln(1/m) rounded down to whole updates; for a symmetric Beta
        kernel it is about T/2, because half of the kernel's mass lies in the second half of the
        run. None when the anchor mass never halved (A(T) > ½: a static teacher, or a horizon too
        short for any update).
        """
        log_a = self.log_anchor_mass
        target = log_a[-1] + math.log(2.0)
        if target > log_a[0]:
            return None
        # The anchor mass never increases, so the first step at or below the target is the edge.
        return int(self.horizon - np.flatnonzero(log_a <= target)[0])


def _update_array(total_steps: int, update_every: int, fold_final: bool) -> np.ndarray:
    if total_steps < 1 or update_every < 1:
        raise ValueError("a kernel curve needs total_steps >= 1 and update_every >= 1")
    return np.asarray(update_steps(total_steps, update_every, fold_final), dtype=np.int64)


def _curve(total_steps: int, log_anchor: np.ndarray, mean_step: np.ndarray,
           updates: np.ndarray) -> KernelCurve:
    """Spread per-update values (index n: after n updates, n = 0 is θ₀ alone) over every step."""
    t = np.arange(total_steps + 1)
    done = np.searchsorted(updates, t, side="right")  # updates made by the end of step t
    lag = t - mean_step[done]
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(t > 0, lag / np.maximum(t, 1), np.nan)
    return KernelCurve(log_anchor[done], lag, relative, updates)


def _beta_log_pdf(x: np.ndarray, beta: float) -> np.ndarray:
    """log Beta(β, β).pdf(x) for an array of positions (the vector form of :func:`beta_pdf`)."""
    log_norm = 2.0 * math.lgamma(beta) - math.lgamma(2.0 * beta)
    return (beta - 1.0) * (np.log(x) + np.log1p(-x)) - log_norm


def wma_curve(total_steps: int, beta: float = WMA_BETA, update_every: int = 1) -> KernelCurve:
    """:class:`KernelCurve` of the WMA teacher: the weights of :func:`wma_weights` at every step."""
    updates = _update_array(total_steps, update_every, True)
    w0 = wma_kernel_weight(0, total_steps, beta)
    w = np.exp(_beta_log_pdf((updates + 0.5) / (total_steps + 1), beta))
    weight_sum = w0 + np.concatenate([[0.0], np.cumsum(w)])
    moment = np.concatenate([[0.0], np.cumsum(w * updates)])
    return _curve(total_steps, np.log(w0 / weight_sum), moment / weight_sum, updates)


def linear_warmup_momenta(
    steps: np.ndarray, total_steps: int, start: float, end: float, warmup: float
) -> np.ndarray:
    """:func:`linear_warmup_momentum` for an array of steps."""
    steps = np.asarray(steps, dtype=np.float64)
    ramp = warmup * total_steps
    if ramp <= 0:
        return np.full(steps.shape, float(end))
    return start + (end - start) * np.minimum(steps / ramp, 1.0)


def _affine_scan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x_n = a_n·x_{n−1} + b_n from x_0 = 0, for every n at once.

    A doubling scan: log2(n) numpy passes, each composing neighbouring affine maps. With a_n and
    b_n non-negative it only multiplies and adds non-negative numbers, so nothing cancels or
    overflows (the closed form through cumulative products would divide by Π m, which underflows).
    """
    a, x = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    shift = 1
    while shift < len(x):
        # The right-hand sides are evaluated before assignment, so both read the previous pass.
        x[shift:] = a[shift:] * x[:-shift] + x[shift:]
        a[shift:] = a[shift:] * a[:-shift]
        shift *= 2
    return x


def ema_curve(
    total_steps: int,
    momenta: Callable[[np.ndarray], np.ndarray | float],
    update_every: int = EMA_UPDATE_EVERY,
) -> KernelCurve:
    """:class:`KernelCurve` of the EMA teacher; ``momenta`` maps an array of 0-based step indices
    to m (the update after step s reads index s − 1, as in :func:`ema_weights`).

    The anchor mass is Π m over the updates so far. The lag at the n-th update follows
    ℓ_n = m_n·(ℓ_{n−1} + u_n − u_{n−1}) (unroll φ ← m·φ + (1 − m)·θ for the mean step), which
    tends to k·m/(1 − m) for a constant momentum.
    """
    updates = _update_array(total_steps, update_every, False)
    m = np.broadcast_to(np.asarray(momenta(updates - 1), dtype=np.float64), updates.shape)
    m = np.clip(m, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        log_anchor = np.concatenate([[0.0], np.cumsum(np.log(m))])
    lag_at_update = _affine_scan(m, m * np.diff(updates, prepend=0))
    mean_step = np.concatenate([[0.0], updates - lag_at_update])
    return _curve(total_steps, log_anchor, mean_step, updates)


def static_curve(total_steps: int) -> KernelCurve:
    """:class:`KernelCurve` of the static teacher φ = θ₀: anchor mass 1, L(t) = t, ρ(t) = 1."""
    none = np.zeros(0, dtype=np.int64)
    return _curve(total_steps, np.zeros(1), np.zeros(1), none)


def spec_curve(spec: TeacherSpec, total_steps: int) -> KernelCurve:
    """The kernel of teacher ``spec`` over a run of ``total_steps`` steps (what it averages)."""
    if spec.kind == "wma":
        return wma_curve(total_steps, spec.beta, spec.update_every)
    if spec.kind == "ema":
        def momenta(steps: np.ndarray) -> np.ndarray:
            return linear_warmup_momenta(steps, total_steps, spec.momentum_start,
                                         spec.momentum_end, spec.momentum_warmup)
        return ema_curve(total_steps, momenta, spec.update_every)
    return static_curve(total_steps)
