"""The ``tracer`` command line: one Typer app per subcommand, joined here."""

from __future__ import annotations

from typing import Annotated

import typer

from tracer_cli import __version__
from tracer_cli.cli import eval as eval_cmd
from tracer_cli.cli import export as export_cmd
from tracer_cli.cli import compare, distill_check, finetune, plugins

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
    app()
