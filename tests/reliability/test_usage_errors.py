"""Usage errors of the real console entry point (``python -m tracer_cli``): for a script (``CI``
set, or output that is not a terminal) each is exactly one ``error:`` line on stderr and exit 2;
only a person at a terminal gets Typer's boxed usage. ``--help`` keeps working either way."""

from __future__ import annotations

import os
import pty
import subprocess
import sys

import pytest

USAGE_ERRORS = [
    (["finetune", "recipes/quickstart.toml", "--max-steps", "0"], "'--max-steps'"),
    (["finetune", "recipes/quickstart.toml", "--nproc", "0"], "'--nproc'"),
    (["fintune", "recipes/quickstart.toml"], "No such command 'fintune'"),
    (["finetune", "recipes/quickstart.toml", "--bogus"], "No such option: --bogus"),
    (["distill-check", "recipes/quickstart.toml", "--steps", "-1"], "'--steps'"),
    (["finetune"], "Missing argument 'recipe'"),
]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return {**env, **extra}


def _tracer(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer_cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", ["1", None], ids=["CI", "piped"])
@pytest.mark.parametrize("args, fragment", USAGE_ERRORS,
                         ids=[" ".join(args) or "bare" for args, _ in USAGE_ERRORS])
def test_a_usage_error_is_one_line_and_exit_2(args, fragment, ci):
    done = _tracer(args, _env(CI=ci) if ci else _env())
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "--help" in lines[0] and done.stdout == ""


def test_a_bare_command_shows_its_help_and_one_error_line():
    done = _tracer(["plugins"], _env(CI="1"))
    assert done.returncode == 2 and "list" in done.stdout
    assert done.stderr.splitlines() == ["error: missing command (see 'python -m tracer_cli plugins "
                                        "--help')"]


def test_help_still_works_for_scripts():
    done = _tracer(["finetune", "--help"], _env(CI="1"))
    assert done.returncode == 0 and "--max-steps" in done.stdout, done.stderr


def test_a_terminal_keeps_the_boxed_usage():
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "tracer_cli", "finetune",
                                 "recipes/quickstart.toml", "--max-steps", "0"], env=_env(),
                                stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal's other end closed: the process is done
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=120) == 2
    finally:
        os.close(controller)
    shown = b"".join(chunks).decode(errors="replace")
    assert "Usage:" in shown and "╭─" in shown and "Error" in shown, shown  # the box
    assert "error: " not in shown, shown
