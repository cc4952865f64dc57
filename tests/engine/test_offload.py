"""θ₀ kept off the compute device: the frozen copy round-trips exactly, distances match."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tracer_cli.engine import offload
from tracer_cli.engine.offload import FrozenCopy, squared_distance
from tracer_cli.errors import DiskFullError, RunError


def _tensors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(37, 11, generator=g), torch.randn(5, generator=g),
            torch.randn((), generator=g), torch.randn(0, generator=g),
            torch.randn(3, 4, 5, generator=g).to(torch.bfloat16),
            torch.randn(7, 3, generator=g).t()]  # non-contiguous


@pytest.mark.parametrize("where", ["file", "host"])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 22])
def test_frozen_copy_round_trips_bit_for_bit(where, chunk):
    src = _tensors()
    frozen = FrozenCopy(src, chunk_elements=chunk, where=where)
    assert frozen.where == where and len(frozen) == len(src)
    with torch.no_grad():
        for t in src:  # the copy is frozen: later changes to the source do not reach it
            t.add_(1)
    for i, t in enumerate(_tensors()):
        got = frozen.tensor(i)
        assert got.dtype == t.dtype and got.shape == t.shape
        assert torch.equal(got, t)  # a byte copy read back, no arithmetic: exact by design
    frozen.close()


def test_cpu_parameters_go_to_a_file_that_is_not_linked():
    frozen = FrozenCopy(_tensors())
    assert frozen.where == "file"
    fd = frozen._file.fileno()
    assert os.fstat(fd).st_nlink == 0  # unlinked: removed by the OS when the process ends
    assert os.fstat(fd).st_size == sum(t.numel() * t.element_size() for t in _tensors())


@pytest.mark.numerics
@pytest.mark.parametrize("where", ["file", "host"])
@pytest.mark.parametrize("chunk", [3, 1 << 22])
def test_squared_distance_matches_the_direct_formula(where, chunk):
    a, b = _tensors(0), _tensors(1)
    expected = sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(a, b))
    frozen = FrozenCopy(b, chunk_elements=chunk, where=where)
    # bf16 entries are rounded the same way on both sides; fp32 sums differ in order only
    torch.testing.assert_close(squared_distance(a, frozen), expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(squared_distance(a, b, chunk_elements=chunk), expected,
                               rtol=1e-6, atol=1e-9)
    for i, t in enumerate(_tensors(1)):  # reading for a distance leaves the copy intact
        assert torch.equal(frozen.tensor(i), t)  # byte copy: exact by design


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor (in bytes) any operation allocates while active (views
    allocate nothing)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.parametrize("where", ["file", "host"])
def test_distance_allocates_chunks_not_a_copy_of_the_model(where):
    """No operation of the distance allocates more than one chunk (at most float64: 8 bytes per
    element); the fused ``_foreach_sub`` it replaces allocated a whole second copy of the
    parameters (here 80 KiB against 8 KiB) at every log step."""
    chunk = 1 << 10
    a, b = [torch.randn(20 * chunk), torch.randn(3, chunk + 5)], [torch.randn(20 * chunk),
                                                                  torch.randn(3, chunk + 5)]
    frozen = FrozenCopy(b, chunk_elements=chunk, where=where)
    for other in (frozen, b):
        with _LargestOutput() as mode:
            squared_distance(a, other, chunk_elements=chunk)
        assert 0 < mode.largest <= 8 * chunk


def test_a_full_disk_names_the_directory_and_the_way_out(monkeypatch, tmp_path):
    monkeypatch.setattr(offload.tempfile, "gettempdir", lambda: str(tmp_path))

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(offload.os, "write", full)
    with pytest.raises(DiskFullError) as info:
        FrozenCopy(_tensors())
    message = str(info.value)
    assert str(tmp_path) in message and "TMPDIR" in message and "run.track_drift" in message

    def denied(fd, data):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(offload.os, "write", denied)
    with pytest.raises(RunError, match="cannot write a temporary file"):
        FrozenCopy(_tensors())


def test_host_copy_falls_back_to_pageable_memory_when_pinning_is_refused(monkeypatch):
    empty = torch.empty

    def refuse_pinning(*args, pin_memory=False, **kwargs):
        if pin_memory:
            raise RuntimeError("cannot pin memory: locked-memory limit")
        return empty(*args, **kwargs)

    monkeypatch.setattr(offload.torch, "empty", refuse_pinning)
    src = torch.arange(6.0).view(2, 3)
    buffer = offload._host_buffer(src, pin=True)
    assert buffer.shape == src.shape and buffer.dtype == src.dtype and not buffer.is_pinned()
