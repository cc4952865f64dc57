"""torchrun / DDP plumbing: the process group, each rank's device, the DDP wrapper, and the few
collectives the training loop needs.

Launch model: torchrun (or ``tracer finetune --nproc N``, which calls it) starts one process per
device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Every
process runs the same ``tracer finetune``; :func:`setup` joins the group (NCCL on CUDA, gloo on
CPU) and gives each process the GPU of its ``LOCAL_RANK``. Multi-node is torchrun's rendezvous;
nothing here depends on the number of nodes.

Data layout: ``train.batch_size`` is the *global* batch. Every rank draws the same permutation and
takes its contiguous slice of each global batch, so rank order reassembles exactly the batch a
single process would have seen (:class:`Shard`). Only rank 0 logs, evaluates and writes files.

The process-group timeout (how long ranks wait for rank 0, e.g. while it evaluates the zero-shot
model) is ``TRACER_DIST_TIMEOUT_MIN`` minutes, 30 by default.
"""

from __future__ import annotations

import io
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from tracer_cli.engine.precision import resolve_device
from tracer_cli.errors import UsageError, WorkerFailed

TIMEOUT_ENV = "TRACER_DIST_TIMEOUT_MIN"
DEFAULT_TIMEOUT_MIN = 30.0
_local_only_depth = 0


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the number of ranks, and its device."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when setup() created the group (and teardown() ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when absent or inside :func:`local_only`)."""
    if _local_only_depth:
        return 1
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(raw))
    except ValueError:
        raise UsageError(f"WORLD_SIZE={raw!r} is not a number; launch with torchrun") from None


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.isdigit():
        raise UsageError(f"WORLD_SIZE is set but {name} is {raw!r}; start distributed runs with "
                         "torchrun (or tracer finetune --nproc N), which sets both")
    return int(raw)


def _timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        minutes = float(raw) if raw else DEFAULT_TIMEOUT_MIN
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise UsageError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of minutes")
    return timedelta(minutes=minutes)


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank`` for ``run.device`` = ``name``."""
    if name.startswith("cuda:"):
        raise UsageError(f"run.device = '{name}' names one GPU, but every process would use it; "
                         "under torchrun use 'auto' or 'cuda' (each process takes the GPU of its "
                         "LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES)")
    device = resolve_device(name)
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise UsageError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) "
                         "are visible; use at most one process per GPU")
    return torch.device("cuda", local_rank)


def setup(device_name: str) -> DistContext:
    """Join the process group when launched by torchrun; otherwise a single-process context.

    A group that already exists (set up by a library caller) is used as it is.
    """
    existing = is_initialized()
    if launched_world_size() == 1 and not (existing and dist.get_world_size() > 1):
        return DistContext(device=resolve_device(device_name))
    if existing:
        local_rank = _env_int("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    else:
        _env_int("RANK")
        local_rank = _env_int("LOCAL_RANK")
    device = rank_device(device_name, local_rank)
    owns = False
    if not existing:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=_timeout())
        owns = True
    return DistContext(device=device, rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=local_rank, owns_group=owns)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized() and not _local_only_depth


def teardown(ctx: DistContext) -> None:
    """Leave the group if :func:`setup` created it. No barrier: after an error on one rank the
    others may sit in a collective, and torchrun ends them when this process exits."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def local_only() -> Iterator[None]:
    """Inside, this process behaves as a single-process run (a nested ``finetune``, like the
    one-time build of the embedded tiny CLIP on rank 0, must not join the collectives)."""
    global _local_only_depth
    _local_only_depth += 1
    try:
        yield
    finally:
        _local_only_depth -= 1


@contextmanager
def main_first(ctx: DistContext) -> Iterator[None]:
    """Rank 0 runs the block first (alone, as a single process), then the others: downloads and
    one-time builds into a shared cache happen once instead of racing."""
    if not ctx.distributed:
        yield
        return
    if not ctx.is_main:
        barrier(ctx)
    with local_only():
        yield
    if ctx.is_main:
        barrier(ctx)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier(device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (for small metadata and RNG states, not data).

    Objects travel as ``torch.save`` bytes: ``all_gather_object``'s plain pickling of tensors
    fails for some dtypes (numpy's uint32 RNG key). The bytes come from our own ranks, hence the
    full unpickler.
    """
    if not ctx.distributed:
        return [obj]
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, buffer.getvalue())
    return [torch.load(io.BytesIO(raw), weights_only=False) for raw in out]


def wrap(module: nn.Module, ctx: DistContext, find_unused: bool = False) -> nn.Module:
    """``module`` in DistributedDataParallel when distributed (its construction broadcasts rank
    0's parameters and buffers, so every rank starts from the same weights); else unchanged.

    ``find_unused``: some parameters get no gradient in some steps (a frozen backbone while a
    head is probed, a text tower a head method never runs), which DDP must be told about.
    """
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused)


def sync_batchnorm(module: nn.Module, ctx: DistContext, freeze_bn_stats: bool) -> nn.Module:
    """BatchNorm that normalizes over the global batch, as one process would, when BN statistics
    are trained on several GPUs. PyTorch's SyncBatchNorm runs on GPUs only: on CPU (gloo) each
    rank normalizes its own slice, and DDP keeps rank 0's running statistics."""
    if ctx.distributed and ctx.device.type == "cuda" and not freeze_bn_stats:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


@dataclass(frozen=True)
class Shard:
    """This process's slice of one global training batch.

    ``sizes`` are the local batch sizes of all ranks in rank order (they differ when unreadable
    images were dropped); ``meta`` is the global batch without its images (labels, captions), so a
    task draws the captions of the whole batch exactly as a single process would. ``meta`` is None
    in a single process, where the local batch *is* the global one.
    """

    sizes: tuple[int, ...]
    rank: int = 0
    meta: dict[str, Any] | None = None

    @property
    def world_size(self) -> int:
        return len(self.sizes)

    @property
    def offset(self) -> int:
        return sum(self.sizes[:self.rank])

    @property
    def size(self) -> int:
        return self.sizes[self.rank]


@dataclass(frozen=True)
class Exchange:
    """What every rank learns about one global batch before it trains on it."""

    shard: Shard
    bad: list[Any]   # unreadable items of the whole global batch
    stop_signal: int  # a signal number when any rank was asked to stop, else 0


def exchange(ctx: DistContext, batch: dict[str, Any] | None, bad: list[Any],
             stop_signal: int) -> Exchange:
    """Share batch sizes, metadata, unreadable items and stop requests across ranks (one small
    ``all_gather_object`` per step), so that every rank takes the same decisions."""
    size = 0 if batch is None else len(batch["image"])
    if not ctx.distributed:
        return Exchange(Shard((size,)), list(bad), stop_signal)
    meta = {k: v for k, v in batch.items() if k != "image"} if batch is not None else {}
    parts = gather_objects(ctx, {"size": size, "meta": meta, "bad": bad, "stop": stop_signal})
    sizes = tuple(p["size"] for p in parts)
    merged = merge_meta([p["meta"] for p in parts if p["size"]])
    return Exchange(Shard(sizes, ctx.rank, merged), [b for p in parts for b in p["bad"]],
                    max(p["stop"] for p in parts))


def merge_meta(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate collated batch fields (tensors along dim 0, lists end to end) in rank order."""
    if not parts:
        return {}
    out: dict[str, Any] = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.cat(values)
        else:
            out[key] = [v for part in values for v in part]
    return out


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``python -m tracer_cli ARGS`` as ``nproc`` processes on this machine through
    ``torch.distributed.run --standalone`` (torchrun), and return 0, or 128 + N when this
    launcher was stopped by signal N (the workers got it too and said how to resume).

    A failed process raises :class:`WorkerFailed` naming the first rank that failed and its exit
    code (torchrun's own exit status would be 1 for any failure); torchrun then has stopped the
    other ranks.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    argv = ["--standalone", "--nproc_per_node", str(nproc), "-m", "tracer_cli", *args]
    try:
        with _quiet_worker_log():
            torchrun.run(torchrun.parse_args(argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise WorkerFailed(rank, nproc, failure.exitcode) from None
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


@contextmanager
def _quiet_worker_log() -> Iterator[None]:
    """Mute torchrun's lines about each worker it stops or finds dead: the caller reports the
    failed rank in one line of its own."""
    log = logging.getLogger("torch.distributed.elastic.multiprocessing.api")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
