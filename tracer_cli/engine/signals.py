"""Stop training cleanly on SIGINT / SIGTERM.

The handler only records the signal. The training loop looks at it at the next step boundary
(under DDP every rank learns of it in the same step), saves a checkpoint and raises
:class:`tracer_cli.errors.Interrupted`, which the CLI turns into exit 130 (SIGINT) or 143
(SIGTERM) after printing where the checkpoint is and how to resume.

Handlers are installed by whoever drives the run (the CLI), and only while training: the engine
never changes process-wide signal state on its own, so library callers keep their handlers, and a
Ctrl-C during setup or evaluation interrupts at once as usual.

Work that is cheap to redo rather than resume (``export``) uses :func:`stop_raises` instead:
SIGTERM then unwinds like Ctrl-C, so the ``finally`` blocks that remove temporary files run
before the process ends (by default SIGTERM ends it on the spot and leaves them behind).
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Callable, Iterator, Sequence

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SignalTrap:
    """While entered, SIGINT and SIGTERM set :attr:`signum` instead of ending the process.

    A repeated signal is ignored rather than treated as "abort now": under torchrun a Ctrl-C
    reaches every worker twice (from the terminal and forwarded by the launcher), and the
    checkpoint must still be written. ``kill -9`` aborts without one.
    """

    def __init__(self, signals: Sequence[int] = STOP_SIGNALS,
                 notice: Callable[[str], None] = _stderr):
        self.signals, self.notice = tuple(signals), notice
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "SignalTrap":
        # Python runs signal handlers in the main thread only; elsewhere install nothing.
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            return
        self.signum = signum
        self.notice(f"received {signal.Signals(signum).name}: stopping after the current step and "
                    "saving a checkpoint (kill -9 stops without one)")


class StopSignal(KeyboardInterrupt):
    """SIGINT or SIGTERM received under :func:`stop_raises`.

    A KeyboardInterrupt, so that ``except Exception`` blocks do not swallow it; ``exit_code`` is
    the shell's 128 + signal number.
    """

    def __init__(self, signum: int):
        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def stop_raises(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """While entered, the first SIGINT or SIGTERM raises :class:`StopSignal` in the main thread;
    later ones are ignored, so that the cleanup the first one set off is not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be installed from the main thread
        return
    received: list[int] = []

    def handle(signum: int, frame: FrameType | None) -> None:
        if not received:
            received.append(signum)
            raise StopSignal(signum)

    previous = {sig: signal.signal(sig, handle) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
