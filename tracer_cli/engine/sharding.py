"""Sharded training (``train.strategy = "fsdp"``) with PyTorch's FSDP2 (``fully_shard``).

Plan: every block the backbone names (``shard_units(module)``: transformer blocks, ResNet
stages) becomes one FSDP unit, and the student's training forward (:class:`FeatureForward`, which
also holds the task head) is the root unit. The teacher gets exactly the same plan on its own
forward, so each rank holds the same slice of θ and of φ, and the WMA/EMA update stays one local
fused ``_foreach_lerp_`` per shard, with no communication; its forward gathers its blocks one at a
time like the student's. θ₀ (drift tracking) is a copy of the local shards. Parameters are sharded
along dim 0 over all ranks (a 1-D device mesh); buffers (BatchNorm statistics, the text mask) stay
replicated.

Checkpoints are consolidated: the student, the teacher and the head are gathered into full
tensors, and AdamW's state is gathered and stored in the plain ``optimizer.state_dict()`` layout
(parameters numbered in optimizer order), so ``last.pt`` is the same file a DDP or single-process
run writes: open_clip, ``tracer eval`` and ``tracer export`` read it unchanged, and a run may be
resumed with another strategy or number of processes. Gathering is a collective: every rank
calls :meth:`Sharding.full_state` and rank 0 receives the tensors (on CPU).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
    set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded parameter (a view: in-place updates reach the parameter);
    any other tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


class Sharding:
    """The device mesh of all ranks and the FSDP operations the engine needs."""

    def __init__(self, device: torch.device):
        self.mesh = init_device_mesh(device.type, (dist.get_world_size(),))

    @staticmethod
    def broadcast(module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (FSDP, unlike DDP, does not do this):
        student and teacher then start from identical weights everywhere."""
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data, src=0)

    def shard(self, root: nn.Module, units: Sequence[nn.Module],
              forward_only: bool = False) -> nn.Module:
        """``fully_shard`` each unit, then the root (which takes every remaining parameter).

        FSDP cannot shard 0-d parameters (CLIP's logit scale): they stay replicated, outside
        FSDP, and :meth:`finish_gradients` averages their gradients as DDP would. FSDP keeps
        the root's parameters gathered after a forward, for the backward that follows; a module
        that only runs forward (the teacher) must drop them again (``forward_only``).
        """
        for unit in units:
            fully_shard(unit, mesh=self.mesh)
        scalars = {p for p in root.parameters() if p.ndim == 0}
        return fully_shard(root, mesh=self.mesh, ignored_params=scalars or None,
                           reshard_after_forward=True if forward_only else None)

    @staticmethod
    @torch.no_grad()
    def finish_gradients(params: Sequence[torch.Tensor], max_norm: float) -> None:
        """Average the gradients of the replicated (unsharded) parameters over the ranks, then
        clip all gradients to a total norm of ``max_norm`` (0: no clipping) exactly as
        ``clip_grad_norm_`` does for a single process: sharded gradients contribute their local
        squares (summed over ranks), replicated ones once."""
        world = dist.get_world_size()
        grads = [p.grad for p in params if p.grad is not None]
        replicated = [g for g in grads if not isinstance(g, DTensor)]
        for g in replicated:
            dist.all_reduce(g)
            g.div_(world)
        if max_norm <= 0 or not grads:
            return
        shards = [local(g) for g in grads if isinstance(g, DTensor)]
        squares = torch.zeros((), dtype=torch.float64, device=local(grads[0]).device)
        for g in shards:
            squares += torch.linalg.vector_norm(g.double()) ** 2
        dist.all_reduce(squares)
        for g in replicated:
            squares += torch.linalg.vector_norm(g.double()) ** 2
        coef = (max_norm / (squares.sqrt() + 1e-6)).clamp(max=1.0)
        for g in [*shards, *replicated]:
            g.mul_(coef.to(g.dtype))

    @staticmethod
    def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
        """``module.state_dict()`` with full tensors on CPU on rank 0 ({} on the others)."""
        return get_model_state_dict(module, options=_FULL)

    @staticmethod
    def load_full(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load a full (consolidated) state dict into a sharded module; every rank passes it."""
        set_model_state_dict(module, state, options=_LOAD)

    @staticmethod
    def optimizer_state(root: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """AdamW's state gathered, in the layout of a plain ``optimizer.state_dict()``."""
        full = get_optimizer_state_dict(root, optimizer, options=_FULL)
        if not full:
            return {}
        index = {fqn: i for i, fqn in enumerate(_optimizer_fqns(root, optimizer))}
        return {"state": {index[fqn]: value for fqn, value in full["state"].items()},
                "param_groups": [{**g, "params": [index[f] for f in g["params"]]}
                                 for g in full["param_groups"]]}

    @staticmethod
    def load_optimizer(root: nn.Module, optimizer: torch.optim.Optimizer,
                       state: dict[str, Any]) -> None:
        """Load a plain-layout optimizer state (any strategy's checkpoint) into sharded AdamW."""
        fqns = _optimizer_fqns(root, optimizer)
        keyed = {"state": {fqns[i]: value for i, value in state["state"].items()},
                 "param_groups": [{**g, "params": [fqns[i] for i in g["params"]]}
                                  for g in state["param_groups"]]}
        set_optimizer_state_dict(root, optimizer, keyed, options=_LOAD)


def _optimizer_fqns(root: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name (in ``root``) of every optimized parameter, in optimizer order."""
    names = {id(p): n for n, p in root.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


@contextlib.contextmanager
def gradient_sync(module: nn.Module, enabled: bool) -> Iterator[None]:
    """FSDP's counterpart of DDP's ``no_sync``: gradients stay local (unsharded) until a backward
    with sync enabled reduce-scatters the accumulated sum."""
    module.set_requires_gradient_sync(enabled)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
