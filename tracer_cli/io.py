"""Atomic file writes: a reader never sees a half-written file, even after a crash or SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from tracer_cli.errors import DiskFullError, no_space


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if no_space(exc):
            raise DiskFullError(exc.filename or path) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Build a folder under a temporary name, renamed into place only when complete.

    A folder already at ``path`` is moved aside first and removed only once the new one is in
    place; if the swap is interrupted, the old folder is put back. Whatever happens (an error, or
    a signal raised as an exception), no temporary folder is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old: Path | None = None
    try:
        yield tmp
        if path.exists():
            old = Path(f"{tmp}.old")
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # the new folder never arrived: keep the old one
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def folder_blocker(path: Path) -> Path | None:
    """``path`` or its nearest existing parent when that is not a folder (a file, a device), so
    that no folder can be made at ``path``; None when nothing is in the way."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON object per line; each line is written with a single write call."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
    except OSError as exc:
        if no_space(exc):
            raise DiskFullError(path) from None
        raise
