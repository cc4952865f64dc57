"""Checkpoints: atomic writes and RNG capture, loadable with ``torch.load(weights_only=True)``.

A training checkpoint holds everything an exact resume needs: the student, the teacher (with its
weight sum), optimizer, schedule, grad scaler, the text and global RNG states (python, numpy,
torch, CUDA; one set per rank under DDP), the data position, the bad-data log and the recipe.

Every checkpoint is written with its SHA-256 beside it (see :mod:`tracer_cli.rundir`), so a
resume trusts only what it verified. A checkpoint's ``state_dict`` key holds the student's
weights, so open_clip's own loader reads a tracer checkpoint as it is
(``open_clip.create_model(arch, pretrained="runs/x/last.pt")``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from tracer_cli import rundir
from tracer_cli.rundir import checksums
from tracer_cli.errors import UsageError
from tracer_cli.io import atomic_path


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states, as weights_only-safe values."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_to_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


# What a weights-only milestone keeps: enough for eval / export / WiSE-FT, not for resuming.
WEIGHTS_ONLY_KEYS = ("step", "state_dict", "teacher", "head", "head_init", "recipe")


class _HashingWriter:
    """The file object torch.save writes to: hashes the bytes on their way to disk (no second
    read of a multi-GB file) and keeps the OSError of a failed write, which torch's zip writer
    would otherwise turn into "unexpected pos ..."."""

    def __init__(self, fh: Any):
        self.fh, self.digest, self.error = fh, hashlib.sha256(), None

    def write(self, data: bytes) -> int:
        try:
            written = self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise
        self.digest.update(data)
        return written

    def flush(self) -> None:
        self.fh.flush()


def save(path: Path, payload: dict[str, Any]) -> str:
    """Write ``payload`` so that ``path`` is either absent, the old file, or complete, with its
    SHA-256 recorded beside it (``<path>.sha256``) before the file appears; returns the digest.

    A write that fails for lack of space raises :class:`DiskFullError` naming the file, and
    leaves nothing behind."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            writer = _HashingWriter(fh)
            try:
                torch.save(payload, writer)
            except RuntimeError:
                if writer.error is not None:
                    raise writer.error from None
                raise
            fh.flush()
            os.fsync(fh.fileno())
        digest = writer.digest.hexdigest()
        checksums.write_sha(path, digest)
    return digest


def save_checkpoint(run_dir: Path, step: int, payload: dict[str, Any], keep: int = 0,
                    keep_every: int = 0) -> Path:
    """``checkpoints/step_N.pt``, then ``last.pt`` pointed at it, then all but the newest ``keep``
    step checkpoints removed (0: none), then a weights-only milestone when ``keep_every`` divides
    ``step``. Until the new file is complete the previous checkpoints stay untouched."""
    path = rundir.step_path(run_dir, step)
    save(path, payload)
    checksums.publish_last(run_dir, path)
    rundir.prune(run_dir, keep)
    if keep_every and step % keep_every == 0:
        save(rundir.weights_path(run_dir, step),
             {k: payload[k] for k in WEIGHTS_ONLY_KEYS if k in payload})
    return path


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint read weights-only: a file that needs more than tensors and plain containers
    is refused (unpickling arbitrary objects could run code), and never retried unsafely."""
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise UsageError(f"checkpoint '{path}' {what}")
    try:
        with quiet_pickle_warnings():
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, foreign or unsafe files: say which file, not a traceback
        raise UsageError(f"checkpoint '{path}' is not a safe/readable weights file: "
                         f"{unreadable_reason(exc)}") from None


@contextmanager
def quiet_pickle_warnings() -> Iterator[None]:
    """Silence torch's warnings about a pickle protocol it did not write and about TorchScript
    archives: the file is refused or read all the same, and a warning would break the one-line
    error contract."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        warnings.filterwarnings("ignore", message=".*looks like a TorchScript archive")
        yield


_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def unreadable_reason(exc: BaseException) -> str:
    """Why a weights-only ``torch.load`` failed, in a few words.

    torch's own message advises re-running with ``weights_only=False``; for a file that was just
    refused as unsafe that is the wrong advice, so it is never passed on.
    """
    refused = _REFUSED_GLOBAL.search(str(exc))
    if refused:
        return (f"it refers to '{refused.group(1)}', which weights-only loading refuses because "
                "unpickling it could run code; tracer never loads such files")
    if "TorchScript" in str(exc):
        return ("a TorchScript archive, which weights-only loading does not read; use a state-dict "
                "file (.pt/.bin/.safetensors) or the open_clip tag, e.g. pretrained = \"openai\"")
    if isinstance(exc, pickle.UnpicklingError):
        return ("refused by the weights-only loader: not a plain tensor file; corrupt, or a "
                "pickle of arbitrary objects, which tracer never loads")
    return "truncated, corrupt or not a PyTorch file"
