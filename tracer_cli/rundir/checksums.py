"""Checksums of a run's files: one home for SHA-256 in tracer.

Every SHA-256 tracer computes or records goes through here: checkpoints and ``last.pt`` (written
by the engine, verified by ``--resume``, ``eval`` and ``export``), the files of an export (its
model card lists them), the embedded weights (``tracer_cli.sdk`` gives plugins
:func:`file_sha256`, :func:`write_sha` and :func:`recorded_sha`) and the benchmarks' records.
A checksum is kept beside its file as ``<file>.sha256`` (:func:`tracer_cli.rundir.sha_path`), in
``sha256sum`` format, so ``sha256sum -c`` checks it too.

A checksum belongs to the bytes, not to a name: ``last.pt`` is a hard link to the newest
``checkpoints/step_N.pt``, one file under two names, each with a sidecar. A file is trusted when
its SHA-256 matches *any* checksum recorded for it under any of its names in the run
(:func:`recorded_shas`); it is damaged when checksums are recorded and none matches; a file with
none recorded under any name was written by an older tracer and is read unverified. Why "any":
a checksum is written after its file's bytes are final, so a failure while writing one (a full
disk) can leave a sidecar missing or describing the previous bytes, but never makes intact
bytes disagree with every sidecar, while a damaged file (a flipped bit, a truncation) matches
none of them. So a failure while writing a checksum never condemns an intact checkpoint, and
removing a sidecar never exempts a damaged one whose other name still records its checksum.
Where the file system has no hard links ``last.pt`` is a copy with only its own sidecar
(:func:`publish_last`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tracer_cli.rundir import (
    CHECKPOINTS, LAST, STEP_CHECKPOINT, last_path, sha_path, step_checkpoints)

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, as hex digits (read in 1 MiB chunks)."""
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
    """The SHA-256 recorded in ``<path>.sha256``, or None when it is absent, unreadable or not a
    checksum."""
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
    """Compare a checkpoint with the SHA-256 recorded when it was written (the rule is in the
    module docstring)."""
    if not path.is_file():
        return Verdict(False, "missing")
    recorded = recorded_shas(path)
    if not recorded:
        return Verdict(True, "no checksum recorded (written by an older tracer)")
    actual = file_sha256(path)
    if actual not in recorded:
        return Verdict(False, f"SHA-256 {actual[:12]}… does not match the {recorded[0][:12]}… "
                              "recorded when it was written")
    return Verdict(True)


def recorded_shas(path: Path) -> list[str]:
    """Every checksum recorded for the bytes of ``path``: its own sidecar's, then those of the
    run's other names for the same file (``last.pt`` and the step checkpoint it links to)."""
    found = [recorded_sha(name) for name in [Path(path), *_other_names(Path(path))]]
    return list(dict.fromkeys(digest for digest in found if digest is not None))


def _other_names(path: Path) -> list[Path]:
    """The run's other names of the same file as ``path`` (hard links, not copies)."""
    if path.name == LAST:
        candidates = [p for _, p in step_checkpoints(path.parent)]
    elif STEP_CHECKPOINT.match(path.name) and path.parent.name == CHECKPOINTS:
        candidates = [last_path(path.parent.parent)]
    else:
        return []
    return [c for c in candidates if c.is_file() and _same_file(c, path)]



def publish_last(run_dir: Path, newest: Path) -> Path:
    """Point ``last.pt`` at ``newest`` (a hard link: no second copy of the bytes), atomically;
    a copy only where the file system has no hard links."""
    from tracer_cli.io import atomic_path

    last = last_path(run_dir)
    # Its old checksum describes the previous bytes: gone before last.pt changes, so a failure
    # below leaves no sidecar that condemns the new last.pt (the step file's still vouches).
    sha_path(last).unlink(missing_ok=True)
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



def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
