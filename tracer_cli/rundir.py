"""The run directory, the contract between commands: its layout, readers and writers, its
checkpoints and its writer lock. Every command goes through this module; nothing else spells a
file name of a run. No torch import: readers stay cheap.

Layout owned here::

    runs/<name>/recipe.lock.toml             resolved recipe + a [lock] table (versions, git hash)
    runs/<name>/metrics.jsonl                one JSON object per log step, evaluation and event
    runs/<name>/eval/<tag>.json              metrics of one evaluated model (zeroshot, final_student)
    runs/<name>/summary.json                 the headline numbers, written last
    runs/<name>/.lock                        the writer lock (PID, host, start time of the holder)
    runs/<name>/last.pt                      the newest full checkpoint (a hard link to it)
    runs/<name>/last.pt.sha256               its SHA-256 (``sha256sum -c`` format)
    runs/<name>/checkpoints/step_N.pt        full training checkpoints, the newest
                                             ``train.keep_checkpoints`` of them
    runs/<name>/checkpoints/step_N.pt.sha256 their SHA-256, written right after the file
    runs/<name>/checkpoints/step_N.weights.pt  weights-only milestones (``train.keep_every``)
    runs/<name>/corrupt/                     checkpoints that failed verification, moved aside

A run directory has one writer at a time: :class:`RunLock` is an exclusive ``flock`` held for the
life of a finetune. The kernel drops it when its holder dies, even by SIGKILL, so a lock left by a
killed run is taken over (and said to be) instead of blocking ``--resume auto`` forever.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tracer_cli.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_LOCK = "recipe.lock.toml"
METRICS = "metrics.jsonl"
EVAL = "eval"
SUMMARY = "summary.json"
CURVES = "curves.png"
LOCK = ".lock"
LAST = "last.pt"
CHECKPOINTS = "checkpoints"
CORRUPT = "corrupt"
SHA_SUFFIX = ".sha256"
_STEP = re.compile(r"^step_(\d+)\.pt$")
_CHUNK = 1 << 20



# --------------------------------------------------------------------------- paths

def recipe_lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / RECIPE_LOCK


def metrics_path(run_dir: Path) -> Path:
    return Path(run_dir) / METRICS


def eval_path(run_dir: Path, tag: str) -> Path:
    return Path(run_dir) / EVAL / f"{tag}.json"


def curves_path(run_dir: Path) -> Path:
    """The plot of the evaluations during training (``run.eval_every``)."""
    return Path(run_dir) / EVAL / CURVES


def summary_path(run_dir: Path) -> Path:
    return Path(run_dir) / SUMMARY


def is_run_dir(path: Path) -> bool:
    return recipe_lock_path(path).is_file()


def last_path(run_dir: Path) -> Path:
    return Path(run_dir) / LAST


def step_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step}.pt"


def weights_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step}.weights.pt"


def sha_path(path: Path) -> Path:
    return path.with_name(path.name + SHA_SUFFIX)


def resolve_checkpoint(run_dir: Path, given: Path) -> Path:
    """A checkpoint path as the user gave it, or relative to the run (``checkpoints/step_N.pt``)."""
    inside = Path(run_dir) / given
    return inside if not given.exists() and inside.is_file() else given


def latest_run(root: Path) -> Path | None:
    """The most recent run directly under ``root`` (``tracer eval`` without a source), or None.

    A run here is a folder holding both ``recipe.lock.toml`` and ``last.pt``; the most recent is
    the one whose ``last.pt`` was written last (its modification time: the newest checkpoint's
    write), so a finished run, a stopped one and one still training all count by their newest
    checkpoint. Equal times go to the name that sorts last.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    found = []
    for run in root.iterdir():
        last = last_path(run)
        if run.is_dir() and is_run_dir(run) and last.is_file():
            found.append((last.stat().st_mtime_ns, run.name, run))
    return max(found)[2] if found else None


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The full step checkpoints of a run, newest first (weights-only milestones excluded)."""
    folder = Path(run_dir) / CHECKPOINTS
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _STEP.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


# --------------------------------------------------------------------------- reading and writing

def read_recipe_lock(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the resolved recipe's tables, the ``[lock]`` table: versions, device, backbone)."""
    path = recipe_lock_path(run_dir)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"'{run_dir}' is not a tracer run directory (no {RECIPE_LOCK})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"'{path}' is not valid TOML: {exc}") from None
    lock = doc.pop("lock", {})
    return doc, lock if isinstance(lock, dict) else {}


def strip_lock_table(tables: dict[str, Any]) -> dict[str, Any]:
    """A recipe's tables without a ``[lock]`` table (a run's lock file read as a recipe)."""
    return {k: v for k, v in tables.items() if k != "lock"}


def write_recipe_lock(run_dir: Path, text: str) -> Path:
    from tracer_cli.io import atomic_write_text

    path = recipe_lock_path(run_dir)
    atomic_write_text(path, text)
    return path


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    from tracer_cli.io import append_jsonl

    append_jsonl(metrics_path(run_dir), record)


def end_partial_metrics_line(run_dir: Path) -> None:
    """A process killed mid-write may leave a line without its newline; appending to it would
    corrupt the next record too."""
    path = metrics_path(run_dir)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def read_metrics(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Records of ``metrics.jsonl`` (a line being written right now is skipped)."""
    path = metrics_path(run_dir)
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def write_eval(run_dir: Path, tag: str, metrics: dict[str, Any]) -> Path:
    from tracer_cli.io import atomic_write_json

    path = eval_path(run_dir, tag)
    atomic_write_json(path, metrics)
    return path


def read_eval(run_dir: Path, tag: str) -> Any:
    return read_json(eval_path(run_dir, tag))


def eval_files(run_dir: Path, nested: bool = False) -> list[Path]:
    """Every ``eval/*.json`` in name order; ``nested`` adds the documents ``tracer eval
    --output-dir RUN/eval/<folder>`` writes (``eval/<folder>/eval.json``)."""
    folder = Path(run_dir) / EVAL
    found = [*folder.glob("*.json"), *(folder.glob("*/eval.json") if nested else [])]
    return sorted(found)


def result_files(run_dir: Path) -> list[Path]:
    """What a finished run has to show, for trackers' artifacts: the recipe lock, the summary,
    every evaluation document and plot under ``eval/`` (``tracer eval --output-dir RUN/eval/..``
    included)."""
    run_dir = Path(run_dir)
    folder = run_dir / EVAL
    found = [recipe_lock_path(run_dir), summary_path(run_dir),
             *sorted(p for p in folder.rglob("*") if p.suffix in (".json", ".png"))]
    return [p for p in found if p.is_file()]


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    from tracer_cli.io import atomic_write_json

    path = summary_path(run_dir)
    atomic_write_json(path, summary)
    return path


def read_summary(run_dir: Path) -> Any:
    """The run's ``summary.json``, or None while it is being written or when it is absent."""
    return read_json(summary_path(run_dir))


def read_json(path: Path) -> Any:
    """A JSON file of a run, or None when it is absent, being written or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- checksums

def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_sha(path: Path, digest: str) -> None:
    """``<path>.sha256`` in ``sha256sum`` format, so ``sha256sum -c`` checks it too."""
    from tracer_cli.io import atomic_write_text

    atomic_write_text(sha_path(path), f"{digest}  {path.name}\n")


def recorded_sha(path: Path) -> str | None:
    try:
        text = sha_path(path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0] if text and re.fullmatch(r"[0-9a-f]{64}", text[0]) else None


@dataclass(frozen=True)
class Verdict:
    """Whether a checkpoint file can be trusted, and why not."""

    ok: bool
    reason: str = ""


def verify(path: Path) -> Verdict:
    """Compare a checkpoint with the SHA-256 recorded when it was written."""
    if not path.is_file():
        return Verdict(False, "missing")
    expected = recorded_sha(path)
    if expected is None:
        return Verdict(True, "no checksum recorded (written by an older tracer)")
    actual = file_sha256(path)
    if actual != expected:
        return Verdict(False, f"SHA-256 {actual[:12]}… does not match the {expected[:12]}… "
                              "recorded when it was written")
    return Verdict(True)


def move_aside(run_dir: Path, path: Path) -> Path:
    """Move a checkpoint that failed verification (and its checksum) to ``corrupt/``; never
    delete it: it is the user's data, and may still be worth a look."""
    folder = Path(run_dir) / CORRUPT
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = "" if path.parent == Path(run_dir) else f"{path.parent.name}-"
    target = folder / f"{prefix}{path.name}.{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{prefix}{path.name}.{stamp}-{n}"
    os.replace(path, target)
    sha = sha_path(path)
    if sha.exists():
        os.replace(sha, target.with_name(target.name + SHA_SUFFIX))
    return target


# --------------------------------------------------------------------------- retention

def publish_last(run_dir: Path, newest: Path) -> Path:
    """Point ``last.pt`` at ``newest`` (a hard link: no second copy of the bytes), atomically;
    a copy only where the file system has no hard links."""
    from tracer_cli.io import atomic_path

    last = last_path(run_dir)
    with atomic_path(last) as tmp:
        tmp.unlink()
        try:
            os.link(newest, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK):
                raise
            shutil.copyfile(newest, tmp)
    digest = recorded_sha(newest)
    if digest is not None:
        write_sha(last, digest)
    return last


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` full step checkpoints (0 keeps every one). Call it only
    after the newest one is completely written and verified to be on disk."""
    if keep <= 0:
        return []
    removed = []
    for _, path in step_checkpoints(run_dir)[keep:]:
        path.unlink(missing_ok=True)
        sha_path(path).unlink(missing_ok=True)
        removed.append(path)
    return removed


def remove_checkpoints(run_dir: Path, keep_last: bool = False) -> None:
    """Delete a run's checkpoints and their checksums (every other file stays); ``keep_last``
    keeps ``last.pt``."""
    folder = Path(run_dir) / CHECKPOINTS
    paths = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    for path in paths + ([] if keep_last else [last_path(run_dir)]):
        path.unlink(missing_ok=True)
        sha_path(path).unlink(missing_ok=True)


def resume_candidates(run_dir: Path) -> Iterator[Path]:
    """Where ``--resume auto`` looks, in order: ``last.pt``, then the step checkpoints newest
    first."""
    last = last_path(run_dir)
    if last.is_file():
        yield last
    for _, path in step_checkpoints(run_dir):
        if last.is_file() and _same_file(path, last):
            continue  # the same bytes as last.pt, already judged
        yield path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# --------------------------------------------------------------------------- the writer lock

class RunLock:
    """An exclusive lock on a run directory, held by the one process that writes it.

    ``acquire()`` creates the folder if needed, takes the lock without waiting, and records who
    holds it; a second writer gets a :class:`UsageError` naming the holder's PID and host.
    ``release()`` empties the record (and removes the folders this lock created when nothing else
    was written to them, so a run that failed its checks leaves no empty run directory, nor an
    empty ``runs/``, behind). The lock file itself stays: removing it would let two processes
    lock two different files.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock made, innermost first
        self.stale: dict[str, Any] | None = None  # the record of a dead holder it took over

    def acquire(self) -> RunLock:
        try:
            self._created = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            fix = ("choose a shorter run.name" if exc.errno == errno.ENAMETOOLONG else
                   "choose another --output-dir or run.output_dir")
            raise UsageError(f"cannot write to run directory '{self.run_dir}': "
                             f"{exc.strerror or exc}; {fix}") from None
        if not _try_lock(fd):
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
            if self._created and [p.name for p in self.run_dir.iterdir()] == [LOCK]:
                self.path.unlink()
                for folder in self._created:  # the run directory, then `runs/` if it made it
                    folder.rmdir()
        except OSError:
            pass  # the folder went away or is shared: nothing of value is lost
        finally:
            os.close(fd)  # drops the lock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def describe_stale(record: dict[str, Any]) -> str:
    return f"took over the lock of a tracer process that is gone ({_describe(record)})"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


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

