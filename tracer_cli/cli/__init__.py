"""The ``tracer`` command line: one Typer app per subcommand, joined here."""

from __future__ import annotations

import typer

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
app.add_typer(finetune.app)
app.add_typer(eval_cmd.app)
app.add_typer(distill_check.app)
app.add_typer(export_cmd.app)
app.add_typer(compare.app)
app.add_typer(plugins.app, name="plugins")


def main() -> None:
    app()
