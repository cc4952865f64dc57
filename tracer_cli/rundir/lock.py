"""The writer lock of a run directory: one ``tracer finetune`` writes a run at a time.

:class:`RunLock` is an exclusive ``flock`` on ``<run>/.lock`` held for the life of a finetune.
The kernel drops it when its holder dies, even by SIGKILL, so a lock left by a killed run is
taken over (and said to be) instead of blocking ``--resume auto`` forever. :func:`lock_holder`
tells readers (``eval``, ``export``, the trackers) whether a run is still being written.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from tracer_cli.errors import UsageError
from tracer_cli.io import try_lock
from tracer_cli.rundir import LOCK, is_run_dir


class RunLock:
    """An exclusive lock on a run directory, held by the one process that writes it.

    ``acquire()`` creates the folder if needed, takes the lock without waiting, and records who
    holds it; a second writer gets a :class:`UsageError` naming the holder's PID and host.
    ``release()`` empties the record. When no run was written to the folder (no
    ``recipe.lock.toml``) and this lock made the file, it removes the file and the folders it
    made that are empty, so a run that failed its checks leaves no lock, no empty run directory
    and no empty ``runs/`` behind. A lock file it found stays, as does the lock of a run:
    removing it would let two processes lock two different files.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock made, innermost first
        self._made_file = False  # whether this lock created the lock file
        self.stale: dict[str, Any] | None = None  # the record of a dead holder it took over

    def acquire(self) -> RunLock:
        try:
            self._created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._made_file = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            fix = ("choose a shorter run.name" if exc.errno == errno.ENAMETOOLONG else
                   "choose another --output-dir or run.output_dir")
            raise UsageError(f"cannot write to run directory '{self.run_dir}': "
                             f"{exc.strerror or exc}; {fix}") from None
        if not try_lock(fd):
            holder = _read_record(fd)
            os.close(fd)
            raise UsageError(f"run directory '{self.run_dir}' is being written by another "
                             f"tracer process ({_describe(holder)}); wait for it to finish, stop "
                             "it, or choose another --output-dir or run.name")
        previous = _read_record(fd)
        if previous:
            self.stale = previous
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_own_record()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            if (self._created or self._made_file) and not is_run_dir(self.run_dir):
                self.path.unlink()
                for folder in self._created:  # the run directory, then `runs/` if it made it
                    folder.rmdir()  # fails, leaving it, unless it is empty
        except OSError:
            pass  # the folder went away or is shared: nothing of value is lost
        finally:
            os.close(fd)  # drops the lock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(run_dir: Path) -> str | None:
    """Who holds the writer lock of ``run_dir`` (PID, host, start), or None when no live process
    does; it only looks (the lock taken to look is dropped at once)."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None  # no lock file: no run has written here
    try:
        if try_lock(fd):
            return None
        return _describe(_read_record(fd))
    finally:
        os.close(fd)  # drops the lock taken just to look


def describe_stale(record: dict[str, Any]) -> str:
    return f"took over the lock of a tracer process that is gone ({_describe(record)})"


def _own_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _read_record(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        record = json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict[str, Any]) -> str:
    if not record:
        return "PID and host unknown"
    return (f"PID {record.get('pid', '?')} on host {record.get('host', '?')}, started "
            f"{record.get('started', '?')}")
