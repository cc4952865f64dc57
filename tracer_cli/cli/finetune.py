"""``tracer finetune RECIPE``: train with the shared TRACER engine and evaluate at the end."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tracer_cli import recipe as recipe_mod
from tracer_cli.cli.common import (
    JsonOpt,
    OutputDirOpt,
    RecipeArg,
    SetOpt,
    boundary,
    emit_json,
    result_console,
)
from tracer_cli.cli.progress import make_reporter
from tracer_cli.events import use_reporter
from tracer_cli.report import accuracy_table

app = typer.Typer()


@app.command()
@boundary
def finetune(
    recipe: RecipeArg,
    overrides: SetOpt = None,
    output_dir: OutputDirOpt = None,
    max_steps: Annotated[Optional[int], typer.Option(
        "--max-steps", min=1, help="Shorthand for --set train.steps=N (warm-up clipped to fit).",
        show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an existing run directory of the same name.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Finetune a model as RECIPE describes; writes a run directory and prints the evaluation."""
    from tracer_cli.engine.run import finetune as run_finetune

    sets = list(overrides or [])
    if max_steps is not None:
        raw = recipe_mod.apply_overrides(recipe_mod.read_toml(recipe), sets)
        warmup = raw.get("train", {}).get("warmup_steps", 0)
        sets += [f"train.steps={max_steps}"]
        if isinstance(warmup, int) and warmup > max_steps:
            sets += [f"train.warmup_steps={max_steps}"]
    rec = recipe_mod.load(recipe, sets)
    console = result_console(as_json)
    with use_reporter(make_reporter()) as reporter:
        result = run_finetune(rec, output_dir=output_dir, overwrite=overwrite, reporter=reporter)
    if rec.run.eval:
        console.print(accuracy_table(result.summary["eval"]))
    console.print(f"run directory: {result.run_dir}")
    if as_json:
        emit_json(result.summary)
