"""How the engine reports progress without knowing who is listening.

The engine (and plugins doing long work, like building the embedded tiny CLIP) call the current
:class:`Reporter`; the CLI installs one that draws rich progress bars or plain log lines. Library
users get :class:`PlainReporter` (one line per log step on stderr) unless they install their own.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator


class Reporter:
    """Receives progress events. Subclasses override what they show; the defaults print nothing."""

    def notice(self, message: str) -> None:
        """A one-line message for the user (what is happening, where a file went)."""

    def start(self, task: str, total: int, completed: int = 0) -> None:
        """A long piece of work with ``total`` units begins (``completed`` already done)."""

    def advance(self, task: str, completed: int, fields: dict[str, Any] | None = None) -> None:
        """``completed`` units of ``task`` are done; ``fields`` are live values (loss, lr, ...)."""

    def log(self, task: str, record: dict[str, Any]) -> None:
        """A logged record (every ``run.log_every`` steps), for plain-text progress."""

    def finish(self, task: str) -> None:
        """``task`` is over."""


class PlainReporter(Reporter):
    """Plain lines on stderr: what a CI log or a pipe should show."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr

    def notice(self, message: str) -> None:
        print(message, file=self.stream, flush=True)

    def log(self, task: str, record: dict[str, Any]) -> None:
        parts = [f"{k}={_fmt(v)}" for k, v in record.items() if k not in ("event", "time")]
        print(f"[{task}] " + " ".join(parts), file=self.stream, flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_current: Reporter = PlainReporter()


def current_reporter() -> Reporter:
    return _current


@contextmanager
def use_reporter(reporter: Reporter) -> Iterator[Reporter]:
    """Install ``reporter`` for the duration of a command."""
    global _current
    previous, _current = _current, reporter
    try:
        yield reporter
    finally:
        _current = previous
