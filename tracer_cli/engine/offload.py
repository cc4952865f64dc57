"""A frozen copy of a model's parameters kept off the compute device, and chunked distances.

The drift statistics need θ₀, the student's starting parameters, at log steps only. Holding it
next to the student costs one model's worth of the scarcest memory (GPU memory on CUDA, the
process's RAM on CPU) for a number read every ``run.log_every`` steps. :class:`FrozenCopy` keeps
it where it costs least:

- parameters on an accelerator: in host memory (pinned, so it streams back at full speed);
- parameters on the CPU: in an unlinked temporary file (``tempfile.TemporaryFile``, in
  ``$TMPDIR``), which the operating system caches while memory is free and drops under pressure.

:func:`squared_distance` then reads it back in chunks of :data:`CHUNK_ELEMENTS` elements, so
computing ‖θ − θ₀‖ (or ‖θ − φ‖) never allocates more than a few chunks, where a fused
``_foreach_sub`` would have allocated a whole extra copy of the parameters at every log step.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterator, Sequence

import torch

from tracer_cli.errors import DiskFullError, RunError, no_space

CHUNK_ELEMENTS = 1 << 22  # 16 MiB of fp32 per chunk


def _chunks(numel: int, size: int = CHUNK_ELEMENTS) -> Iterator[tuple[int, int]]:
    for start in range(0, numel, size):
        yield start, min(start + size, numel)


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's storage as a flat uint8 view (works for bf16, which numpy lacks)."""
    return t.reshape(-1).view(torch.uint8)


def _host_buffer(t: torch.Tensor, pin: bool) -> torch.Tensor:
    """An empty CPU tensor like ``t``: pinned when asked and the system allows it (a container's
    locked-memory limit can refuse large pinned buffers), else pageable (slower to stream back,
    same values)."""
    if pin:
        try:
            return torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
        except RuntimeError:
            pass
    return torch.empty(t.shape, dtype=t.dtype, device="cpu")


class FrozenCopy:
    """A read-only copy of ``tensors`` (taken at construction) kept off the compute device.

    ``chunks(i)`` yields tensor ``i``'s flattened values on its original device, chunk by chunk,
    together with the element range; :meth:`tensor` rebuilds one whole tensor (for tests and
    inspection). ``where`` is ``"host"`` or ``"file"``; by default ``"file"`` when every tensor
    is on the CPU, else ``"host"``.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], chunk_elements: int = CHUNK_ELEMENTS,
                 where: str | None = None):
        self.chunk_elements = chunk_elements
        self.meta = [(t.shape, t.dtype, t.device) for t in tensors]
        if where is None:
            where = "file" if all(t.device.type == "cpu" for t in tensors) else "host"
        if where not in ("file", "host"):
            raise ValueError(f"where must be 'file' or 'host', not {where!r}")
        self.where = where
        on_cpu = where == "file"
        self._host: list[torch.Tensor] = []
        self._file = None
        self._offsets: list[int] = []
        with torch.no_grad():
            if on_cpu:
                self._write(tensors)
            else:
                pin = torch.cuda.is_available() and any(t.is_cuda for t in tensors)
                for t in tensors:
                    self._host.append(_host_buffer(t, pin).copy_(t.detach()))

    def _write(self, tensors: Sequence[torch.Tensor]) -> None:
        directory = tempfile.gettempdir()
        try:
            self._file = tempfile.TemporaryFile(dir=directory)
            offset = 0
            for t in tensors:
                self._offsets.append(offset)
                data = _as_bytes(t.detach().contiguous())
                view = memoryview(data.numpy())
                written = 0
                while written < len(view):
                    written += os.write(self._file.fileno(), view[written:])
                offset += len(view)
        except OSError as exc:
            if self._file is not None:
                self._file.close()
            need = sum(t.numel() * t.element_size() for t in tensors) / 2**20
            hint = (f"drift tracking keeps a copy of the starting weights ({need:.0f} MiB) in a "
                    f"temporary file; point TMPDIR at a disk with room, or set "
                    f"run.track_drift = false")
            if no_space(exc):
                raise DiskFullError(directory, hint) from None
            raise RunError(f"cannot write a temporary file in '{directory}' ({exc}); {hint}") \
                from None

    def __len__(self) -> int:
        return len(self.meta)

    def chunks(self, i: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(start, end, values)`` for tensor ``i``: its flat elements ``start:end`` on the
        tensor's original device. A chunk may be a reused buffer: use it before the next one."""
        shape, dtype, device = self.meta[i]
        numel = shape.numel()
        if self._file is None:
            flat = self._host[i].reshape(-1)
            for a, b in _chunks(numel, self.chunk_elements):
                yield a, b, flat[a:b].to(device, non_blocking=True)
            return
        size = torch.tensor([], dtype=dtype).element_size()
        buffer = torch.empty(min(numel, self.chunk_elements) * size, dtype=torch.uint8)
        view = memoryview(buffer.numpy())
        for a, b in _chunks(numel, self.chunk_elements):
            n = (b - a) * size
            got = 0
            while got < n:
                read = os.preadv(self._file.fileno(), [view[got:n]],
                                 self._offsets[i] + a * size + got)
                if read <= 0:
                    raise RunError("the temporary copy of the starting weights was truncated")
                got += read
            yield a, b, buffer[:n].view(dtype)

    def tensor(self, i: int) -> torch.Tensor:
        """Tensor ``i`` as it was copied, whole, on its original device."""
        shape, dtype, device = self.meta[i]
        out = torch.empty(shape.numel(), dtype=dtype, device=device)
        for a, b, values in self.chunks(i):
            out[a:b].copy_(values)
        return out.view(shape)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._host = []


def _sum_squares_of_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ (x − y)² of one chunk as a float64 scalar. Half-precision inputs are subtracted in
    float32, where the difference of two of them is (nearly always) exact; the chunk's norm is
    computed in its own precision (float32 norms are 15x faster than float64 ones on CPU and
    accurate to ~1e-7 over a chunk) and the chunks are summed in float64."""
    if x.element_size() < 4:
        x, y = x.float(), y.float()
    return torch.linalg.vector_norm(x - y).double().square()


@torch.no_grad()
def squared_distance(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor] | FrozenCopy,
                     chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """‖a − b‖² over lists of tensors taken as one vector, summed over chunks in float64:
    never more than a chunk's worth of temporaries. ``b`` may be a :class:`FrozenCopy`."""
    device = a[0].device if len(a) else torch.device("cpu")
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i, x in enumerate(a):
        flat = x.reshape(-1)
        if isinstance(b, FrozenCopy):
            for start, end, values in b.chunks(i):
                total += _sum_squares_of_difference(flat[start:end], values)
        else:
            other = b[i].reshape(-1)
            for start, end in _chunks(flat.numel(), chunk_elements):
                total += _sum_squares_of_difference(flat[start:end], other[start:end])
    return total
