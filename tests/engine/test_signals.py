"""SignalTrap: signals become a request to stop at the next step boundary, only while trapped."""

from __future__ import annotations

import os
import signal

from tracer_cli.engine.signals import SignalTrap
from tracer_cli.errors import Interrupted


def test_signals_are_recorded_once_and_handlers_restored():
    before = signal.getsignal(signal.SIGTERM)
    notices: list[str] = []
    with SignalTrap(notice=notices.append) as trap:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # a second signal does not replace the first
        assert trap.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert notices == ["received SIGTERM: stopping after the current step and saving a "
                       "checkpoint (kill -9 stops without one)"]


def test_interrupted_maps_signals_to_shell_exit_codes():
    sigint = Interrupted(signal.SIGINT, 7, "runs/x/checkpoints/step_7.pt", "resume with: ...")
    assert sigint.exit_code == 130
    assert str(sigint) == ("stopped by SIGINT after step 7; checkpoint saved: "
                           "runs/x/checkpoints/step_7.pt; resume with: ...")
    assert Interrupted(signal.SIGTERM, 0, None).exit_code == 143
