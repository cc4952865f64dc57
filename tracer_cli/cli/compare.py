"""``tracer compare RUN_DIR_OR_GLOB...``: mean ± SE per group, paired differences, the WiSE-FT
frontier, effective robustness and the ID-vs-OOD plot of finished runs.

The work happens in :mod:`tracer_cli.analysis`; this module parses flags and prints the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from tracer_cli.cli.common import JsonOpt, boundary, emit_json, result_console
from tracer_cli.errors import UsageError

app = typer.Typer()

RunsArg = Annotated[list[str], typer.Argument(
    help="Run directories or glob patterns (quote them: 'runs/ft_*').", metavar="RUN_DIR_OR_GLOB",
    show_default=False)]
ByOpt = Annotated[Optional[str], typer.Option(
    "--by", help="Group by these recipe keys (comma-separated), e.g. train.method; default: the "
    "recipe without its seed.", show_default=False)]
BaselineOpt = Annotated[Optional[str], typer.Option(
    "--baseline", help="Group every other group is compared with, paired by seed.",
    show_default=False)]
MarkdownOpt = Annotated[bool, typer.Option(
    "--markdown", help="Print the tables as Markdown text (for a report) instead of drawing them.")]
PlotOpt = Annotated[Optional[Path], typer.Option(
    "--plot", help="Write the ID-vs-OOD plot (PNG, one panel per pretrained model) here.",
    show_default=False)]


@app.command("compare")
@boundary
def compare_command(
    runs: RunsArg,
    by: ByOpt = None,
    baseline: BaselineOpt = None,
    as_json: JsonOpt = False,
    markdown: MarkdownOpt = False,
    plot: PlotOpt = None,
) -> None:
    """Compare finished runs: per group and pretrained model, mean ± SE of ID and OOD metrics,
    paired differences against --baseline, the WiSE-FT frontier and effective robustness."""
    from tracer_cli.analysis.groups import compare
    from tracer_cli.analysis.report import compare_markdown

    if as_json and markdown:
        raise UsageError("--json and --markdown both print the result on stdout: give one")
    keys = [k.strip() for k in by.split(",") if k.strip()] if by is not None else None
    if keys is not None and not keys:
        raise UsageError("--by '': give one or more recipe keys, e.g. --by train.method")
    doc = compare(runs, keys, baseline)
    if plot is not None:
        from tracer_cli.analysis.plots import plot_id_vs_ood

        doc["plot"] = str(plot_id_vs_ood(doc["panels"], plot, *doc["keys"][:2]))
    text = compare_markdown(doc)
    if as_json:
        emit_json(doc)
    elif markdown:
        typer.echo(text, nl=False)
    else:
        console = result_console(False)
        for block in terminal_blocks(text):
            console.print(block)
    if plot is not None and not as_json:
        result_console(True).print(f"plot: {plot}")


def terminal_blocks(text: str) -> list[Any]:
    """The Markdown of a comparison as rich renderables: each table a rich Table whose cells
    wrap (``overflow="fold"``: long group labels are shown whole, never cut with an ellipsis),
    every other line (blank ones included, they separate the sections) as plain text."""
    from rich.table import Table
    from rich.text import Text

    blocks: list[Any] = []
    rows: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):  # the |---| separator line
                rows.append(cells)
            continue
        if rows:
            table = Table(show_lines=False)
            for head in rows[0]:
                table.add_column(head, overflow="fold")
            for cells in rows[1:]:
                table.add_row(*cells)
            blocks.append(table)
            rows = []
        style = "bold" if line.startswith("#") else None
        blocks.append(Text(line.lstrip("# ").replace("**", ""), style=style))
    return blocks[:-1]  # the "" that closed the last table
