"""Teachers for self-distillation behind one interface: WMA (TRACER), EMA (CaRot), static, none.

A teacher owns a frozen copy of the student taken at construction (the pretrained θ₀), kept in
eval mode with ``requires_grad=False``. The training loop calls ``update(step, student)`` after
every optimizer step (``step`` counts completed steps, starting at 1); each teacher decides whether
that step changes it. ``state_dict()`` holds the teacher weights and the running sums, so a resumed
run continues the exact same average.

Pitfalls shared by the averaging teachers:

- Build the teacher after the student has its final device and dtype. The teacher pairs its tensors
  with the student's once, at construction; ``student.to(...)`` afterwards replaces the student's
  buffers and the pairing would go stale.
- Pass the bare module, not a DDP wrapper (its parameter names carry a ``module.`` prefix and
  deep-copying it copies the process-group handles).
- Keep the student's master weights in float32 (AMP): averaging with weights of 1e-3 or less in a
  bf16 teacher would round most updates away.
"""

from __future__ import annotations

import copy
import inspect
import types
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from tracer_cli.teacher.kernels import is_update_step, linear_warmup_momentum, wma_kernel_weight
from tracer_cli.engine.sharding import local
from tracer_cli.errors import UsageError
from tracer_cli.teacher.spec import (
    DEFAULT_UPDATE_EVERY, EMA_MOMENTUM_END, EMA_MOMENTUM_START, EMA_MOMENTUM_WARMUP,
    EMA_UPDATE_EVERY, WMA_BETA)


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    # Bound as the frozen copy's ``train``: whatever the caller asks, the teacher stays in eval, so
    # dropout never fires and BatchNorm never updates its running stats from student batches.
    return nn.Module.train(module, False)


def frozen_copy(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` without gradients that stays in eval mode even if ``train()``.

    The eval lock is an instance-bound ``train``; save the copy with ``state_dict()``, not by
    pickling the module object.
    """
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    teacher.train = types.MethodType(_stay_in_eval, teacher)  # type: ignore[method-assign]
    teacher.eval()
    return teacher


def _unwrap(module: nn.Module) -> nn.Module:
    # DDP/DataParallel keep the model in ``.module``, torch.compile in ``._orig_mod``; both share
    # the wrapped model's parameter objects, so updating through a wrapper is fine.
    while isinstance(getattr(module, "module", None), nn.Module) or hasattr(module, "_orig_mod"):
        module = getattr(module, "_orig_mod", None) or module.module
    return module


class _TensorPairs:
    """Teacher and student tensors matched by name, split into floating and integer lists.

    Built once, so an update is one fused ``_foreach`` call instead of a Python loop over hundreds
    of parameters, each allocating a temporary.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module):
        t_named = [*teacher.named_parameters(), *teacher.named_buffers()]
        s_named = [*student.named_parameters(), *student.named_buffers()]
        if [n for n, _ in t_named] != [n for n, _ in s_named]:
            raise ValueError("teacher and student do not have the same parameters and buffers")
        # Non-persistent buffers (a causal attention mask full of -inf) are constants, not
        # weights: averaging them would compute -inf - -inf = nan. Copy them like integer buffers.
        persistent = set(student.state_dict(keep_vars=True))
        pairs = [(n, t, n in persistent) for n, t in t_named]
        self.averaged = [n for n, t, keep in pairs if keep and t.is_floating_point()]
        self.copied = [n for n, t, keep in pairs if not (keep and t.is_floating_point())]
        self.teacher, self.student = teacher, student
        # Under FSDP the parameters are sharded (DTensors whose objects FSDP swaps between
        # passes): the pairs are then this rank's local shards, looked up by name at each update.
        self.sharded = any(isinstance(t, DTensor) for _, t in s_named)
        self._resolve()

    def _resolve(self) -> None:
        t_named = {**dict(self.teacher.named_parameters()), **dict(self.teacher.named_buffers())}
        s_named = {**dict(self.student.named_parameters()), **dict(self.student.named_buffers())}
        self.float_teacher = [local(t_named[n]) for n in self.averaged]
        self.float_student = [local(s_named[n]) for n in self.averaged]
        self.other_teacher = [local(t_named[n]) for n in self.copied]
        self.other_student = [local(s_named[n]) for n in self.copied]

    @torch.no_grad()
    def lerp_(self, weight: float, student: nn.Module) -> None:
        """Teacher ← teacher + weight·(student − teacher) for floats; integers are copied."""
        if student is not self.student and _unwrap(student) is not self.student:
            # The tensors were paired with another module; averaging them would silently ignore
            # the student the caller meant (e.g. one rebuilt on resume).
            raise ValueError("teacher updated with a different student than it was built from")
        if self.sharded:
            self._resolve()
        if self.float_teacher:
            torch._foreach_lerp_(self.float_teacher, self.float_student, weight)
        if self.other_teacher:
            # Integer buffers (BatchNorm's num_batches_tracked) cannot be averaged; take the latest.
            torch._foreach_copy_(self.other_teacher, self.other_student)


class Teacher:
    """Base teacher: ``module`` is the teacher network, or None when there is no teacher."""

    kind = "base"

    def __init__(self, module: nn.Module | None):
        self.module = module
        self.last_step = 0

    @property
    def active(self) -> bool:
        """Whether there is a teacher network to distill from."""
        return self.module is not None

    def update(self, step: int, student: nn.Module) -> None:
        """Called after optimizer step ``step`` (1-based count of completed steps)."""

    def pair_with(self, student: nn.Module) -> None:
        """Pair the teacher's tensors with ``student``'s again, after both were sharded (FSDP)
        with the same plan: the update then runs on each rank's local shards."""
        if getattr(self, "_pairs", None) is not None:
            self._pairs = _TensorPairs(self.module, student)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`_extra_state` saved."""

    def state_dict(self) -> dict[str, Any]:
        """Teacher weights plus running state, enough for an exact resume."""
        module_state = None if self.module is None else self.module.state_dict()
        return {"kind": self.kind, "last_step": self.last_step, "module": module_state,
                **self._extra_state()}

    def load_state_dict(self, state: dict[str, Any], module: bool = True) -> None:
        """Restore a :meth:`state_dict` of the same kind (weights are copied in place;
        ``module=False`` restores the running state only, when the caller loads the weights, as
        the engine does for a sharded teacher)."""
        if state.get("kind") != self.kind:
            saved = state.get("kind")
            raise ValueError(f"cannot load a '{saved}' teacher into a '{self.kind}' one")
        if self.module is not None and module:
            self.module.load_state_dict(state["module"])
        self.last_step = int(state["last_step"])
        self._load_extra_state(state)

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for logs and run metadata."""
        return {"kind": self.kind, "active": self.active, "last_step": self.last_step}


class NoTeacher(Teacher):
    """No teacher: distillation is off."""

    kind = "none"

    def __init__(self, student: nn.Module | None = None):
        super().__init__(None)


class StaticTeacher(Teacher):
    """φ = θ₀ for the whole run: distillation towards the pretrained model."""

    kind = "static"

    def __init__(self, student: nn.Module):
        super().__init__(frozen_copy(student))


class WmaTeacher(Teacher):
    """TRACER's teacher: a Beta(β, β)-weighted average of the whole trajectory, θ₀ included.

    φ = Σ_u w(u)·θ_u / Σ_u w(u) over θ₀ and every updated θ_u, with w the Beta(β, β) density at
    position (step + 0.5)/(total_steps + 1). Each update adds w(step) to the weight sum W and moves
    φ towards θ by w/W (the same as φ ← (φ + r·θ)/(1 + r), r = w/W_old) in one fused in-place
    ``_foreach_lerp_``. β = 0.5 (default) is U-shaped: a heavy, persistent anchor at θ₀ and heavy
    weight near the end; β = 1 is a uniform average (SWA-like). ``total_steps`` must be the planned
    number of optimizer steps; an update beyond it raises.

    With ``update_every`` = k it folds in θ after steps 1, k + 1, 2k + 1, ... and after the last
    planned step (the reference code's schedule,
    :func:`~tracer_cli.teacher.kernels.is_update_step`); the kernel position still follows the
    step, not the update count.
    """

    kind = "wma"

    def __init__(self, student: nn.Module, total_steps: int, beta: float = WMA_BETA,
                 update_every: int = DEFAULT_UPDATE_EVERY["wma"]):
        if total_steps < 1 or update_every < 1 or beta <= 0:
            raise ValueError("WmaTeacher needs total_steps >= 1, update_every >= 1 and beta > 0")
        super().__init__(frozen_copy(student))
        self.total_steps, self.beta = int(total_steps), float(beta)
        self.update_every = int(update_every)
        self._pairs = _TensorPairs(self.module, student)
        self.weight_sum = self.weight(0)

    def weight(self, step: int) -> float:
        """Kernel weight w(step) of the weights after ``step`` optimizer steps (0 is θ₀)."""
        return wma_kernel_weight(step, self.total_steps, self.beta)

    def update(self, step: int, student: nn.Module) -> None:
        """Fold θ after optimizer step ``step`` into the average if the schedule updates there."""
        if step <= self.last_step or not is_update_step(step, self.total_steps,
                                                        self.update_every, fold_final=True):
            return
        w = self.weight(step)
        self.weight_sum += w
        self._pairs.lerp_(w / self.weight_sum, student)
        self.last_step = step

    def _extra_state(self) -> dict[str, Any]:
        return {"weight_sum": self.weight_sum, "total_steps": self.total_steps,
                "beta": self.beta, "update_every": self.update_every}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        saved = (state["total_steps"], state["beta"], state["update_every"])
        if saved != (self.total_steps, self.beta, self.update_every):
            raise ValueError(f"WMA teacher state was saved with (total_steps, beta, update_every)="
                             f"{saved}, this run uses "
                             f"{(self.total_steps, self.beta, self.update_every)}")
        self.weight_sum = float(state["weight_sum"])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "beta": self.beta, "total_steps": self.total_steps,
                "update_every": self.update_every, "weight_sum": self.weight_sum,
                "anchor_mass": self.weight(0) / self.weight_sum}


class EmaTeacher(Teacher):
    """CaRot's teacher: φ ← m·φ + (1 − m)·θ every ``update_every`` steps.

    The momentum m rises linearly from ``momentum_start`` to ``momentum_end`` over the first
    ``warmup`` share of ``total_steps`` and then stays (:meth:`momentum`). As in the reference code
    it updates right after the first optimizer step and then every k steps (steps 1, k + 1, ...),
    each time with the momentum at the 0-based index of the step just taken, ``momentum(step − 1)``;
    so the first update, with m = ``momentum_start``, nearly replaces θ₀ by θ₁. Its effective window
    is about k/(1 − m) steps, so the pull towards θ₀ fades: use it as the baseline, not for TRACER.
    """

    kind = "ema"

    def __init__(self, student: nn.Module, total_steps: int,
                 momentum_start: float = EMA_MOMENTUM_START,
                 momentum_end: float = EMA_MOMENTUM_END, warmup: float = EMA_MOMENTUM_WARMUP,
                 update_every: int = EMA_UPDATE_EVERY):
        if total_steps < 1 or update_every < 1:
            raise ValueError("EmaTeacher needs total_steps >= 1 and update_every >= 1")
        if not (0 <= momentum_start <= 1 and 0 <= momentum_end <= 1 and warmup >= 0):
            raise ValueError("EMA momenta must lie in [0, 1] and warmup must be >= 0")
        super().__init__(frozen_copy(student))
        self.total_steps, self.update_every = int(total_steps), int(update_every)
        self.momentum_start, self.momentum_end = float(momentum_start), float(momentum_end)
        self.warmup = float(warmup)
        self._pairs = _TensorPairs(self.module, student)

    def momentum(self, step: int) -> float:
        """Momentum m at the 0-based step index ``step`` (the update after step s uses s − 1)."""
        return linear_warmup_momentum(step, self.total_steps, self.momentum_start,
                                      self.momentum_end, self.warmup)

    def update(self, step: int, student: nn.Module) -> None:
        """φ ← m·φ + (1 − m)·θ after steps 1, k + 1, 2k + 1, ... with m = ``momentum(step − 1)``."""
        if step <= self.last_step or not is_update_step(step, self.total_steps,
                                                        self.update_every, fold_final=False):
            return
        self._pairs.lerp_(1.0 - self.momentum(step - 1), student)
        self.last_step = step

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "momentum_start": self.momentum_start,
                "momentum_end": self.momentum_end, "warmup": self.warmup,
                "update_every": self.update_every, "total_steps": self.total_steps}


TEACHER_KINDS: dict[str, type[Teacher]] = {
    "wma": WmaTeacher, "ema": EmaTeacher, "static": StaticTeacher, "none": NoTeacher,
}


def make_teacher(kind: str, student: nn.Module, total_steps: int, **params: Any) -> Teacher:
    """Build the teacher named ``kind`` (``wma``, ``ema``, ``static``, ``none``) for ``student``.

    ``params`` are the kind's keyword options (``beta``, ``update_every``, ``momentum_start``, ...);
    an unknown kind or option raises :class:`tracer_cli.errors.UsageError`.
    """
    cls = TEACHER_KINDS.get(kind)
    if cls is None:
        raise UsageError(f"unknown teacher kind '{kind}' (known: {', '.join(TEACHER_KINDS)})")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "student", "total_steps"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise UsageError(f"teacher '{kind}' does not take option(s) {', '.join(unknown)}"
                         f" (it takes: {', '.join(sorted(accepted)) or 'none'})")
    if cls in (WmaTeacher, EmaTeacher):
        return cls(student, total_steps, **params)
    return cls(student, **params)
