"""Domain exceptions and the exit codes the CLI maps them to.

Library code raises these; only the CLI's error boundary turns them into exit codes, so the same
errors stay catchable when tracer is used as a library.
"""

from __future__ import annotations

EXIT_OK = 0
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

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"recipe key '{key}': {message}")


class MissingResourceError(UsageError):
    """Weights or data that must exist locally are absent; the message says how to provide them."""


class RunError(TracerError):
    """The run itself failed (non-finite loss, I/O failure during training)."""


class GateError(TracerError):
    """A quality gate (``eval --fail-under`` / ``--fail-over``) failed; the message names it."""

    exit_code = EXIT_GATE
