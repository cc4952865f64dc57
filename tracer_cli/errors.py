"""Domain exceptions and the exit codes the CLI maps them to.

Library code raises these; only the CLI's error boundary turns them into exit codes, so the same
errors stay catchable when tracer is used as a library.
"""

from __future__ import annotations

import errno
import os
import signal

EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_GATE = 3


class TracerError(Exception):
    """Base class: a failure explained in one line, with the exit code the CLI should use."""

    exit_code = EXIT_RUN_FAILED


class UsageError(TracerError):
    """Bad input the user can fix: an invalid recipe, a missing dataset root, unknown names."""

    exit_code = EXIT_USAGE


class RecipeError(UsageError):
    """A recipe key has a wrong type or value; the message names the key path."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key, self.detail = key, message
        where = f" ({source})" if source else ""
        super().__init__(f"recipe key '{key}': {message}{where}")


class MissingResourceError(UsageError):
    """Weights or data that must exist locally are absent; the message says how to provide them."""


class RunError(TracerError):
    """The run itself failed (non-finite loss, I/O failure during training)."""


class DiskFullError(RunError):
    """A write failed for lack of space; ``path`` is the file that could not be written (nothing
    partial of it is left). The caller adds where the run can continue from."""

    def __init__(self, path: str | os.PathLike, hint: str | None = None):
        self.path, self.hint = str(path), hint
        super().__init__(f"no space left on device writing '{self.path}'"
                         + (f"; {hint}" if hint else ""))


class WorkerFailed(RunError):
    """A process of a multi-process run failed: its rank, and how it ended. ``exitcode`` is the
    process's own status, negative -N for a death by signal N; ``exit_code`` is the shell's form of
    it (128 + N for a signal). The caller adds how the run can go on."""

    def __init__(self, rank: int, world_size: int, exitcode: int, hint: str | None = None):
        self.rank, self.world_size, self.exitcode, self.hint = rank, world_size, exitcode, hint
        self.exit_code = exitcode if exitcode > 0 else 128 - exitcode
        if exitcode < 0:
            how = f"was killed by {_signal_name(-exitcode)} (exit {self.exit_code})"
        else:
            how = f"failed with exit code {exitcode}"
        super().__init__(f"rank {rank} of {world_size} {how}" + (f"; {hint}" if hint else ""))


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def no_space(exc: OSError) -> bool:
    """Whether an OSError means the disk (or the user's quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Interrupted(TracerError):
    """Training stopped on a signal (SIGINT, SIGTERM) after saving a checkpoint.

    The exit code is the shell's convention for a death by that signal, 128 + signal number
    (130 for SIGINT, 143 for SIGTERM), so schedulers and scripts see what happened.
    """

    def __init__(self, signum: int, step: int, checkpoint: str | None, hint: str | None = None):
        self.signum, self.step, self.checkpoint, self.hint = signum, step, checkpoint, hint
        self.exit_code = 128 + signum
        name = _signal_name(signum)
        where = f"checkpoint saved: {checkpoint}" if checkpoint else "no checkpoint was saved"
        super().__init__(f"stopped by {name} after step {step}; {where}"
                         + (f"; {hint}" if hint else ""))


class GateError(TracerError):
    """A quality gate (``eval --fail-under`` / ``--fail-over``) failed; the message names it."""

    exit_code = EXIT_GATE
