"""SIGTERM during ``tracer export`` leaves nothing behind and keeps an earlier export whole.

The signal is sent at a fixed point (inside the half-built output folder, or between moving the
old export aside and renaming the new one into place), so the tests are deterministic rather
than a race against a timer. The in-process tests keep a fallback SIGTERM handler installed, so
that an export which forgot its own handler fails the test instead of killing pytest; one slow
test sends the signal to a real ``tracer export`` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tracer_cli.commands.model_export as export_mod
from tracer_cli.cli import app

STOPPED = "stopped by SIGTERM; nothing was left half-written"


@pytest.fixture(scope="module")
def run_dir(make_tiny_run) -> Path:
    return make_tiny_run("export-signal", "--set", "run.eval=false", "--set",
                         "run.eval_zeroshot=false")


@pytest.fixture
def fallback_handler():
    """Records a SIGTERM that nobody else handled (the process survives it)."""
    unhandled: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: unhandled.append(signum))
    yield unhandled
    signal.signal(signal.SIGTERM, previous)


def _stop_inside(monkeypatch) -> None:
    """SIGTERM once the export folder's files are written, before it is renamed into place."""
    write_card = export_mod.write_card

    def write_card_then_stop(folder, card):
        write_card(folder, card)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(export_mod, "write_card", write_card_then_stop)


def _stop_at_swap(monkeypatch, output: Path) -> None:
    """SIGTERM right after an existing export was moved aside, before the new one arrives."""
    replace = os.replace

    def replace_then_stop(src, dst):
        replace(src, dst)
        if Path(src) == output:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, "replace", replace_then_stop)


def _export(runner, run_dir: Path, output: Path, *args: str):
    return runner.invoke(app, ["export", str(run_dir), "--format", "safetensors", "--output",
                               str(output), *args])


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_sigterm_while_writing_leaves_nothing(run_dir, runner, tmp_path, monkeypatch,
                                              fallback_handler):
    output = tmp_path / "export"
    _stop_inside(monkeypatch)
    result = _export(runner, run_dir, output)
    assert fallback_handler == [], "export did not handle SIGTERM itself"
    assert result.exit_code == 128 + signal.SIGTERM, result.stderr
    assert result.stderr.strip().splitlines()[-1] == STOPPED
    assert not output.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("stop_at", ["inside", "swap"])
def test_sigterm_during_overwrite_keeps_the_old_export(run_dir, runner, tmp_path, monkeypatch,
                                                       fallback_handler, stop_at):
    output = tmp_path / "export"
    output.mkdir()
    (output / "old.txt").write_text("the earlier export")
    _stop_inside(monkeypatch) if stop_at == "inside" else _stop_at_swap(monkeypatch, output)
    result = _export(runner, run_dir, output, "--overwrite")
    assert fallback_handler == [] and result.exit_code == 128 + signal.SIGTERM, result.stderr
    assert sorted(p.name for p in output.iterdir()) == ["old.txt"]
    assert (output / "old.txt").read_text() == "the earlier export"
    assert _leftovers(tmp_path) == []


def test_sigterm_handlers_are_restored(run_dir, runner, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    assert _export(runner, run_dir, tmp_path / "export").exit_code == 0
    assert signal.getsignal(signal.SIGTERM) is before


# A real process: SIGTERM's default action ends it at once, so only a handler saves the cleanup.
_DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    import tracer_cli.commands.model_export as export

    write_card = export.write_card
    def write_card_then_stop(folder, card):
        write_card(folder, card)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)  # never reached when the signal is handled
    export.write_card = write_card_then_stop

    from tracer_cli.cli import main
    sys.argv = ["tracer", *sys.argv[1:]]
    main()
""")


@pytest.mark.slow
def test_sigterm_to_a_real_export_process(run_dir, tmp_path):
    driver, output = tmp_path / "driver.py", tmp_path / "out" / "export"
    driver.write_text(_DRIVER)
    output.parent.mkdir()
    done = subprocess.run([sys.executable, str(driver), "export", str(run_dir), "--format",
                           "safetensors", "--output", str(output)], capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert done.stderr.strip().splitlines()[-1] == STOPPED
    assert list(output.parent.iterdir()) == []
