"""The ``tracer`` command line: one Typer app per subcommand, joined here."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tracer_cli import __version__
from tracer_cli.cli import eval as eval_cmd
from tracer_cli.cli import export as export_cmd
from tracer_cli.cli import compare, distill_check, finetune, plugins
from tracer_cli.cli.common import plain_errors, usage_message

app = typer.Typer(
    name="tracer",
    help="Robust finetuning of CLIP-style models (TRACER and baselines).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tracer {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", is_eager=True,
        callback=_print_version)] = False) -> None:
    """Robust finetuning of CLIP-style models (TRACER and baselines)."""


app.add_typer(finetune.app)
app.add_typer(eval_cmd.app)
app.add_typer(distill_check.app)
app.add_typer(export_cmd.app)
app.add_typer(compare.app)
app.add_typer(plugins.app, name="plugins")


def main() -> None:
    """The console script (and ``python -m tracer_cli``).

    At a terminal Typer reports a usage error with its boxed usage. For scripts the contract
    holds: one ``error: ...`` line on stderr and exit 2, so the app runs without Click's
    standalone handling and its usage errors are printed here.
    """
    if not plain_errors():
        app()
        return
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # Click's usage errors (Typer vendors Click)
        print(f"error: {usage_message(exc)}", file=sys.stderr, flush=True)
        code = exc.exit_code
    except typer.Abort:
        print("error: aborted", file=sys.stderr, flush=True)
        code = 1
    # Without standalone handling a command's typer.Exit comes back as its code; success is None.
    sys.exit(code if isinstance(code, int) else 0)
