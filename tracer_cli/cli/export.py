"""``tracer export RUN_DIR``: a run's model as open_clip / safetensors / ONNX / TorchScript files.

The work happens in :mod:`tracer_cli.commands.model_export`; this module parses flags and prints
what was written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from tracer_cli.cli.common import JsonOpt, WhichOpt, boundary, emit_json, result_console
from tracer_cli.cli.progress import make_reporter
from tracer_cli.engine.signals import stop_raises
from tracer_cli.events import use_reporter

app = typer.Typer()

RunDirArg = Annotated[Path, typer.Argument(
    help="Run directory written by `tracer finetune` (exports its last.pt).", metavar="RUN_DIR",
    show_default=False)]
FormatOpt = Annotated[str, typer.Option(
    "--format", help="open_clip (the openclip backbone's own format: a local-dir folder "
    "open_clip and CLIP_benchmark load), "
    "safetensors (the state dict), onnx (image and text encoders), torchscript (the same, "
    "traced and frozen).", show_default=False)]
OutputOpt = Annotated[Path, typer.Option(
    "--output", help="Folder to write (built under a temporary name, renamed when complete).",
    show_default=False)]


@app.command("export")
@boundary
def export_command(
    run_dir: RunDirArg,
    fmt: FormatOpt,
    output: OutputOpt,
    which: WhichOpt = None,
    wise_alpha: Annotated[Optional[float], typer.Option(
        "--wise-alpha", help="Export the WiSE-FT mix (1-α)·θ₀ + α·θ_ft with the pretrained "
        "weights θ₀ (α in [0, 1]).", show_default=False)] = None,
    precision: Annotated[str, typer.Option(
        "--precision", help="fp32, fp16 or bf16: floating weights are cast (onnx: fp32 "
        "only).")] = "fp32",
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", help="Another checkpoint of the run than last.pt, e.g. "
        "checkpoints/step_500.pt (relative to the run works).", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace --output when it exists and is not empty.")] = False,
    no_track: Annotated[bool, typer.Option(
        "--no-track", help="Do not attach the model card to the tracked runs of the run's "
        "loggers (MLflow, W&B artifacts); by default it is attached when the run was "
        "tracked.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a run's student, teacher or WiSE-FT mix with a model card (README.md,
    MODEL_CARD.md, model_card.json), attached to the run's tracked runs."""
    # imported here: it pulls in torch, which --help does not need
    from tracer_cli.commands import model_export as export

    request = export.ExportRequest(run_dir=run_dir, format=fmt, output=output, which=which,
                                   wise_alpha=wise_alpha, precision=precision,
                                   checkpoint=checkpoint, overwrite=overwrite,
                                   track=not no_track)
    # SIGTERM unwinds like Ctrl-C, so the half-built output folder is removed on the way out.
    with stop_raises(), use_reporter(make_reporter()) as reporter:
        result = export.export(request, reporter)
    card = result.card
    console = result_console(as_json)
    console.print(files_table(card))
    console.print(f"method: {card['method']}")
    for route, code in card["load"].items():
        console.print(f"load ({route.replace('_', ' ')}):\n{code}", soft_wrap=True)
    console.print(f"exported to {result.output}")
    if as_json:
        emit_json({"output": str(result.output), **card, "tracked": result.tracked})


def files_table(card: dict[str, Any]) -> Table:
    table = Table(title=f"{card['format']} export ({card['which']}, {card['precision']})")
    for column in ("file", "MB", "SHA-256"):
        table.add_column(column, justify="right" if column == "MB" else "left")
    for entry in card["files"]:
        table.add_row(entry["path"], f"{entry['bytes'] / 1e6:.1f}", entry["sha256"][:16] + "…")
    return table
