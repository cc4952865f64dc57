"""Atomic file writes: a reader never sees a half-written file, even after a crash or SIGKILL.

A file is written under a temporary name beside it (``.NAME.RANDOM.tmp``; a folder as
``.NAME.RANDOM``) and renamed into place when complete. A process killed outright (SIGKILL,
power loss) cannot remove its temporary, so every temporary is ``flock``-ed by the process
building it: the kernel drops that lock when the process dies, and :func:`remove_stale_temps`
removes only temporaries nobody holds. Each atomic write sweeps the stale temporaries of its own
target first, and the run directory sweeps its own at the start and end of a run
(:func:`tracer_cli.rundir.clean_debris`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from tracer_cli.errors import DiskFullError, no_space

# What tempfile.mkstemp / mkdtemp make of the prefix ".NAME.": 8 random characters, then
# ".tmp" for atomic_path's files; atomic_dir's folders have no suffix, and ".old" is the folder
# an overwrite moved aside.
_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.tmp|\.old)?$")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, lambda name: name == path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until done: the temporary is in use
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if no_space(exc):
            raise DiskFullError(exc.filename or path) from None
        raise
    finally:
        os.close(fd)
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
    remove_stale_temps(path.parent, lambda name: name == path.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    fd = os.open(tmp, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    old: Path | None = None
    try:
        yield tmp
        if path.exists():
            old = Path(f"{tmp}.old")
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        os.close(fd)
        if old is not None and old.exists() and not path.exists():
            os.replace(old, path)  # the new folder never arrived: keep the old one
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


def remove_stale_temps(folder: Path, owned: Callable[[str], bool]) -> list[Path]:
    """Remove the temporaries :func:`atomic_path` and :func:`atomic_dir` left in ``folder`` when
    their process died, for the target names ``owned`` accepts; returns what it removed.

    A temporary still locked belongs to a live process and stays. A folder an overwrite had moved
    aside (``.NAME.RANDOM.old``) while ``NAME`` itself is gone holds the previous output: it is
    put back, never deleted.
    """
    removed: list[Path] = []
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:  # no folder, or not one this process may read: nothing of ours to remove
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or not owned(match["name"]) or _in_use(entry):
            continue
        target = entry.with_name(match["name"])
        if match["suffix"] == ".old":
            if _in_use(entry.with_name(entry.name.removesuffix(".old"))):
                continue  # a live overwrite between its two renames
            if not target.exists():
                os.replace(entry, target)
                continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; False when another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _in_use(path: Path) -> bool:
    """Whether a live process holds the lock of temporary ``path`` (False once it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return not try_lock(fd)
    finally:
        os.close(fd)  # drops the lock taken just to look


def folder_blocker(path: Path) -> Path | None:
    """``path`` or its nearest existing parent when that is not a folder (a file, a device), so
    that no folder can be made at ``path``; None when nothing is in the way."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


# atomic_dir builds ``NAME`` as ``.NAME.RANDOM`` and may move an old one to ``...RANDOM.old``;
# RANDOM is tempfile's 8 characters.
_TEMP_EXTRA_BYTES = len(".") + len(".") + 8 + len(".old")


def folder_problem(path: Path) -> str | None:
    """Why :func:`atomic_dir` could not build a folder at ``path`` (a name too long, a place no
    folder can be made: a read-only or virtual file system such as /proc or /sys, a folder
    without write permission), found without building it; None when nothing is in the way.
    Check it first: other checks of a path with a name too long raise OSError."""
    path = Path(os.path.abspath(path))
    # Where atomic_dir makes its temporary folder (path's parent, once made). os.path.exists, not
    # Path.exists: a name too long is an answer here, not an OSError.
    existing = next(p for p in path.parents if os.path.exists(p))
    name_max = _limit(existing, "PC_NAME_MAX", 255)
    parts = path.parts[1:]
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        room = name_max - (_TEMP_EXTRA_BYTES if last else 0)
        if len(os.fsencode(part)) > room:
            return (f"the name '{part[:24]}...' is {len(os.fsencode(part))} bytes long; at most "
                    f"{room} fit (a file name holds {name_max} bytes"
                    + (", and the temporary name tracer builds it under adds "
                       f"{_TEMP_EXTRA_BYTES}" if last else "") + ")")
    path_max = _limit(existing, "PC_PATH_MAX", 4096)
    if len(os.fsencode(str(path))) + _TEMP_EXTRA_BYTES >= path_max:
        return f"the path is longer than the {path_max} bytes a path may have"
    if not existing.is_dir():
        return None  # a file in the way: folder_blocker names it
    try:  # the real test: permissions, read-only mounts and virtual file systems all show here
        os.rmdir(tempfile.mkdtemp(prefix=".tracer-write-test.", dir=existing))
    except OSError as exc:
        return f"no folder can be made in '{existing}' ({exc.strerror or exc})"
    return None


def _limit(path: Path, name: str, default: int) -> int:
    """A file system limit (``os.pathconf``); ``default`` where it is unknown or unlimited."""
    try:
        value = os.pathconf(path, name)
    except (OSError, ValueError):
        return default
    return value if value > 0 else default


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON object per line; each line is written with a single write call."""
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
    except OSError as exc:
        if no_space(exc):
            raise DiskFullError(path) from None
        raise
