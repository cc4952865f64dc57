"""``tracer plugins list``: what loaded, from which distribution, at which version."""

from __future__ import annotations

import typer
from rich.table import Table

from tracer_cli.cli.common import JsonOpt, boundary, emit_json, result_console
from tracer_cli.sdk.host import get_host

app = typer.Typer(help="Inspect installed plugins (backbones, datasets, tasks, loggers).",
                  no_args_is_help=True)


@app.command("list")
@boundary
def list_plugins(as_json: JsonOpt = False) -> None:
    """List every registered backbone, dataset, task and logger with its plugin and distribution."""
    listing = get_host().listing()
    if as_json:
        emit_json(listing)
        return
    table = Table(title="tracer plugins")
    for col in ("kind", "name", "plugin", "distribution", "version"):
        table.add_column(col)
    for kind, entries in listing.items():
        for e in entries:
            table.add_row(kind[:-1], e["name"], e["plugin"], e["distribution"], e["version"])
    result_console(as_json).print(table)
