"""What every command shares: option aliases, the output rules, and the one error boundary.

Rules: ``--json`` puts exactly one JSON document on stdout and everything human on stderr; no
colour or progress bars when stdout is not a terminal or ``CI`` is set; errors are one line
(``TRACER_DEBUG=1`` for the traceback) with the exit codes of :mod:`tracer_cli.errors`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console

from tracer_cli.engine.signals import StopSignal
from tracer_cli.errors import EXIT_RUN_FAILED, Interrupted, TracerError, no_space

RecipeArg = Annotated[Path, typer.Argument(help="Recipe TOML file, e.g. recipes/quickstart.toml.",
                                           show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a recipe key: --set train.steps=100 (repeatable; values read as TOML, "
    "commas make lists).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout; human "
                                       "output goes to stderr.")]
WhichOpt = Annotated[Optional[str], typer.Option(
    "--which", help="Which weights of a run or checkpoint: student (default) or teacher.",
    show_default=False)]
OutputDirOpt = Annotated[Optional[Path], typer.Option(
    "--output-dir", help="Parent folder of the run directory (default: run.output_dir).",
    show_default=False)]


def plain_output() -> bool:
    """True when output should be plain text: not a terminal, or running in CI."""
    return bool(os.environ.get("CI")) or not sys.stdout.isatty()


def plain_errors() -> bool:
    """True when usage errors should be one ``error:`` line: a script reads them (stdout or
    stderr is not a terminal) or ``CI`` is set. Only a person at a terminal gets the boxed usage."""
    return plain_output() or not sys.stderr.isatty()


def usage_message(exc: typer.TyperException) -> str:
    """One line for a usage error Typer raised (Click's, vendored): what is wrong, then where the
    help is."""
    message = " ".join(exc.format_message().split())
    if not message:  # a group called without a command: Typer has printed its help on stdout
        message = "missing command"
    ctx = getattr(exc, "ctx", None)
    return f"{message} (see '{ctx.command_path} --help')" if ctx is not None else message


def stderr_console() -> Console:
    plain = plain_output()
    return Console(stderr=True, no_color=plain, force_terminal=None if not plain else False,
                   highlight=False, width=120 if plain else None)


def result_console(as_json: bool) -> Console:
    """Where the human-readable result goes: stdout, or stderr when stdout carries JSON."""
    if as_json:
        return stderr_console()
    plain = plain_output()
    return Console(no_color=plain, force_terminal=None if not plain else False, highlight=False,
                   width=120 if plain else None)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def boundary(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn domain errors into one clear line and an exit code; keep tracebacks for TRACER_DEBUG."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except Interrupted as exc:
            # Not a failure to explain: the run stopped on request and says how to continue it.
            print(str(exc), file=sys.stderr, flush=True)
            raise typer.Exit(exc.exit_code) from None
        except TracerError as exc:
            _report(exc, str(exc))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if not no_space(exc):
                _report(exc, f"{type(exc).__name__}: {exc} (set TRACER_DEBUG=1 for the "
                        "traceback)")
                raise typer.Exit(EXIT_RUN_FAILED) from None
            where = f" writing '{exc.filename}'" if exc.filename else ""
            _report(exc, f"no space left on device{where}")
            raise typer.Exit(EXIT_RUN_FAILED) from None
        except StopSignal as exc:
            # Raised only where a command asked for it (stop_raises): its cleanup has run.
            print(f"{exc}; nothing was left half-written", file=sys.stderr, flush=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except Exception as exc:  # noqa: BLE001 - the boundary: anything else is a run failure
            _report(exc, f"{type(exc).__name__}: {exc} (set TRACER_DEBUG=1 for the traceback)")
            raise typer.Exit(EXIT_RUN_FAILED) from None

    return wrapper


def _report(exc: BaseException, line: str) -> None:
    if os.environ.get("TRACER_DEBUG"):
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {line}", file=sys.stderr, flush=True)
