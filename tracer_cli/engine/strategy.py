"""How the student is spread over processes: one process, DDP or FSDP, as one object.

A :class:`Strategy` owns the three places where the strategies differ, so that the step
(:class:`tracer_cli.engine.step.Trainer`) reads the same for all of them:

- **setup**: wrapping the student's training forward (DDP, or FSDP's sharding plan), in the
  order each strategy needs relative to the teacher's copy of θ₀ (:meth:`Strategy.prepare`);
- **backward**: gradient synchronization held back for every micro-batch but the last
  (:meth:`Strategy.gradient_sync`), the backward pass itself, and the gradient's finishing
  (unscaling, averaging replicated gradients, clipping: :meth:`Strategy.finish_gradients`);
- **state**: the student, head, teacher and optimizer as full (consolidated) state dicts in the
  layout a single process writes, and loading them back, so a checkpoint resumes under any
  strategy and number of processes.

:func:`strategy_for` picks one from ``train.strategy`` and the process group
(:mod:`tracer_cli.engine.distributed`); the FSDP operations are :mod:`tracer_cli.engine.sharding`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

import torch
from torch import nn

from tracer_cli.sdk.contracts import Backbone
from tracer_cli.engine import distributed
from tracer_cli.engine.distributed import DistContext
from tracer_cli.engine.sharding import Sharding, gradient_sync
from tracer_cli.engine.teachers import Teacher

# The teacher's (f_i, f_t, s) for a batch's images and token ids, without gradient.
TeacherFeatures = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]]


@dataclass
class Prepared:
    """What :meth:`Strategy.prepare` hands the step: the student's training forward as the
    strategy wrapped it, the teacher, and how to compute the teacher's features."""

    forward: nn.Module
    teacher: Teacher
    teacher_features: TeacherFeatures


class FeatureForward(nn.Module):
    """The student's training forward, (f_i, f_t, s, head output) in one call, as a module DDP
    can wrap.

    DDP synchronizes gradients only for computations that run through its own ``forward``, while a
    backbone exposes its encoders as methods that take the module. This adapter routes both
    encoders, the logit scale and the task head (if any) through one ``forward``, so wrapping it
    covers them for any backbone plugin; its submodules are the student itself and the head
    (parameters shared, not copied). ``tokens`` may be None when no text is needed (f_t is None
    then), and ``frozen`` runs the backbone without gradients (linear probing).
    """

    def __init__(self, backbone: Backbone, head: nn.Module | None = None,
                 model: nn.Module | None = None):
        super().__init__()
        self.model = backbone.model if model is None else model
        self.head = head
        object.__setattr__(self, "_backbone", backbone)  # not a submodule: no parameters twice

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None, frozen: bool = False,
                projections: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, Any, Any]:
        """(f_i, f_t, s, head output, projections): ``projections`` asks for the backbone's
        projection matrices (V, T) as the forward sees them, which under FSDP is the only place
        they exist unsharded, so the regularizers take them from here."""
        b = self._backbone
        with torch.no_grad() if frozen else contextlib.nullcontext():
            fi = b.encode_image(self.model, images)
            ft = b.encode_text(self.model, tokens) if tokens is not None else None
            s = b.logit_scale(self.model)
        out = self.head(fi, ft) if self.head is not None else None
        return fi, ft, s, out, b.projections(self.model) if projections else None


def _unwrapped(module: nn.Module) -> nn.Module:
    """The module under ``torch.compile``'s wrapper (the one holding ``no_sync`` / FSDP)."""
    return getattr(module, "_orig_mod", module)


class Strategy:
    """One process: the forward as it is, plain state dicts; the base of the other strategies."""

    name = "none"
    # Whether parameters are sharded over the ranks (then state dicts and drift statistics are
    # collectives every rank takes part in).
    sharded = False

    def prepare(self, backbone: Backbone, head: nn.Module | None,
                make_teacher: Callable[[], Teacher], checkpointing: Callable[[], None]
                ) -> Prepared:
        """Wrap the student's :class:`FeatureForward` (with ``head``), copy the teacher from θ₀
        (``make_teacher``) and switch activation checkpointing on (``checkpointing``) after the
        copy: the teacher never back-propagates."""
        forward = self.wrap(FeatureForward(backbone, head))
        teacher = make_teacher()
        checkpointing()
        return Prepared(forward, teacher, plain_teacher_features(backbone, teacher))

    def wrap(self, forward: nn.Module) -> nn.Module:
        return forward

    def gradient_sync(self, forward: nn.Module, enabled: bool) -> ContextManager[None]:
        """A context in which the backward passes keep their gradients local (``enabled``
        False: every micro-batch but the last), so a step makes one all-reduce."""
        return contextlib.nullcontext()

    def backward(self, objective: torch.Tensor, scaler: torch.amp.GradScaler) -> None:
        scaler.scale(objective).backward()

    def finish_gradients(self, params: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer,
                         scaler: torch.amp.GradScaler, max_norm: float) -> None:
        """The accumulated gradient ready for the optimizer: unscaled and clipped to a total norm
        of ``max_norm`` (0: no clipping; the GradScaler unscales inside its step then)."""
        if max_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_norm)

    def abandon_step(self, forward: nn.Module) -> None:
        """Called when a step stops after its forward, before any backward (a non-finite
        loss)."""

    def module_state(self, module: nn.Module) -> dict[str, Any]:
        return module.state_dict()

    def load_module(self, module: nn.Module, state: dict[str, Any]) -> None:
        module.load_state_dict(state)

    def teacher_state(self, teacher: Teacher) -> dict[str, Any]:
        return teacher.state_dict()

    def load_teacher(self, teacher: Teacher, state: dict[str, Any]) -> None:
        teacher.load_state_dict(state)

    def optimizer_state(self, forward: nn.Module, optimizer: torch.optim.Optimizer
                        ) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer(self, forward: nn.Module, optimizer: torch.optim.Optimizer,
                       state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)


class DDPStrategy(Strategy):
    """DistributedDataParallel: the forward wrapped before the teacher's copy (its construction
    broadcasts rank 0's weights, which the teacher then copies); ``no_sync`` between
    micro-batches. State dicts are those of one process (every rank holds all weights)."""

    name = "ddp"

    def __init__(self, ctx: DistContext, find_unused: bool = False):
        self.ctx, self.find_unused = ctx, find_unused

    def wrap(self, forward: nn.Module) -> nn.Module:
        return distributed.wrap(forward, self.ctx, find_unused=self.find_unused)

    def gradient_sync(self, forward: nn.Module, enabled: bool) -> ContextManager[None]:
        module = _unwrapped(forward)
        if enabled or not hasattr(module, "no_sync"):
            return contextlib.nullcontext()
        return module.no_sync()


class FSDPStrategy(Strategy):
    """FSDP2: student and teacher sharded with one plan (:mod:`tracer_cli.engine.sharding`);
    state dicts gathered into full tensors (rank 0) and loaded back from them."""

    name = "fsdp"
    sharded = True

    def __init__(self, ctx: DistContext):
        self.sharding = Sharding(ctx.device)

    def prepare(self, backbone: Backbone, head: nn.Module | None,
                make_teacher: Callable[[], Teacher], checkpointing: Callable[[], None]
                ) -> Prepared:
        """Rank 0's weights broadcast (FSDP does not) before the teacher's copy; then the
        student's forward and the teacher's own forward sharded with the same plan."""
        self.sharding.broadcast(backbone.model)
        teacher = make_teacher()
        checkpointing()
        units = getattr(backbone, "shard_units", lambda module: [])
        forward = self.sharding.shard(FeatureForward(backbone, head), units(backbone.model))
        features = plain_teacher_features(backbone, teacher)
        if teacher.active:
            teacher_forward = self.sharding.shard(FeatureForward(backbone, model=teacher.module),
                                                  units(teacher.module), forward_only=True)
            teacher.pair_with(backbone.model)

            def features(images, tokens):  # its blocks gather as it runs
                return teacher_forward(images, tokens, True)[:3]
        return Prepared(forward, teacher, features)

    def gradient_sync(self, forward: nn.Module, enabled: bool) -> ContextManager[None]:
        if enabled:
            return contextlib.nullcontext()
        return gradient_sync(_unwrapped(forward), False)

    def finish_gradients(self, params, optimizer, scaler, max_norm: float) -> None:
        if max_norm > 0:
            scaler.unscale_(optimizer)
        self.sharding.finish_gradients(params, max_norm)

    def abandon_step(self, forward: nn.Module) -> None:
        _unwrapped(forward).reshard()  # no backward will reshard the root: do it here

    def module_state(self, module: nn.Module) -> dict[str, Any]:
        return self.sharding.full_state(module)

    def load_module(self, module: nn.Module, state: dict[str, Any]) -> None:
        self.sharding.load_full(module, state)

    def teacher_state(self, teacher: Teacher) -> dict[str, Any]:
        state = teacher.state_dict()
        if teacher.active:
            state["module"] = self.sharding.full_state(teacher.module)
        return state

    def load_teacher(self, teacher: Teacher, state: dict[str, Any]) -> None:
        if teacher.active:
            self.sharding.load_full(teacher.module, state["module"])
        teacher.load_state_dict(state, module=False)

    def optimizer_state(self, forward, optimizer) -> dict[str, Any]:
        return self.sharding.optimizer_state(forward, optimizer)

    def load_optimizer(self, forward, optimizer, state: dict[str, Any]) -> None:
        self.sharding.load_optimizer(forward, optimizer, state)


def plain_teacher_features(backbone: Backbone, teacher: Teacher) -> TeacherFeatures:
    """The teacher's features through the backbone's encoders, read from ``teacher.module`` at
    each call (after FSDP training rank 0 puts a plain module in its place)."""

    def features(images: torch.Tensor, tokens: torch.Tensor):
        module = teacher.module
        return (backbone.encode_image(module, images), backbone.encode_text(module, tokens),
                backbone.logit_scale(module))

    return features


def strategy_for(name: str, ctx: DistContext, find_unused: bool = False) -> Strategy:
    """The strategy ``train.strategy`` = ``name`` asks for in this process group: one process
    whatever the name when not distributed, else DDP or FSDP (``find_unused``: some parameters
    get no gradient in some steps, which DDP must be told)."""
    if not ctx.distributed:
        return Strategy()
    if name == "fsdp":
        return FSDPStrategy(ctx)
    return DDPStrategy(ctx, find_unused)
