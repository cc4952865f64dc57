"""``tracer distill-check RECIPE``: will the recipe's teacher still pull at the end of training?

Thin adapter over :mod:`tracer_cli.commands.teacher_diagnostics`: the analytic check of the
recipe's teacher beside the alternatives, optionally the measured series of the first N steps
(``--steps``) or of a run (``--run``), a table, a plot, and exit 3 with ``--strict`` when the
teacher collapses.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from tracer_cli.commands import teacher_diagnostics as diagnostics
from tracer_cli import recipe as recipe_mod
from tracer_cli.cli.common import JsonOpt, RecipeArg, SetOpt, boundary, emit_json, result_console
from tracer_cli.cli.progress import make_reporter
from tracer_cli.errors import GateError, UsageError
from tracer_cli.events import use_reporter

app = typer.Typer()


@app.command("distill-check")
@boundary
def distill_check(
    recipe: RecipeArg = None,
    overrides: SetOpt = None,
    steps: Annotated[Optional[int], typer.Option(
        "--steps", min=1, help="Also train the first N steps of the recipe (real model and data, "
        "a temporary run directory) and measure KL, agreement and ‖θ − φ‖/‖θ − θ₀‖ at every "
        "step.", show_default=False)] = None,
    run: Annotated[Optional[Path], typer.Option(
        "--run", help="Also read the measured series from this run directory's metrics.jsonl "
        "(finished or running); RECIPE defaults to the run's recipe.lock.toml.",
        show_default=False)] = None,
    threshold: Annotated[float, typer.Option(
        "--threshold", help="Collapsed when ρ(T) falls below it, or a measured series' tail "
        "below it times its peak.")] = diagnostics.DEFAULT_THRESHOLD,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 3 when the verdict is 'collapsed'.")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Write ρ(t) and the anchor mass (and the measured series) to this image.",
        show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Diagnose teacher collapse: relative lag ρ(t), anchor mass and measured teacher pull."""
    if steps is not None and run is not None:
        raise UsageError("give --steps (measure a fresh start) or --run (read a run), not both")
    rec = _load_recipe(recipe, run, list(overrides or []))
    if plot is not None:
        diagnostics.plot_format(plot)
    result = diagnostics.check(rec, threshold)  # validates everything before any training
    if steps is not None:
        with use_reporter(make_reporter()) as reporter:
            empirical = diagnostics.probe(rec, steps, threshold, reporter)
        result = diagnostics.check(rec, threshold, empirical)
    elif run is not None:
        empirical = diagnostics.from_run(run, rec.train.steps, threshold)
        notes = _mismatch(rec, run) if recipe is not None else []
        result = diagnostics.check(rec, threshold, empirical, notes)
    console = result_console(as_json)
    _render(console, result)
    if plot is not None:
        console.print(f"plot: {diagnostics.plot(result, plot)}")
    if as_json:
        emit_json(result.to_dict())
    if strict and result.collapsed:
        raise GateError(f"teacher collapsed: {'; '.join(result.reasons(failing_only=True))}")


def _load_recipe(path: Path | None, run: Path | None, sets: list[str]) -> recipe_mod.Recipe:
    """RECIPE with --set applied, or the run's resolved recipe when only --run is given."""
    if path is not None:
        from tracer_cli.engine.build import resolve_epochs

        rec = recipe_mod.load(path, sets)
        resolve_epochs(rec)  # the teacher's horizon in steps
        return rec
    if run is None:
        raise UsageError("give a RECIPE file, or --run RUN_DIR to check a run")
    from tracer_cli.commands.finished_run import RunDir

    run_dir = RunDir(run)
    raw = copy.deepcopy(run_dir.tables)
    return recipe_mod.from_dict(recipe_mod.apply_overrides(raw, sets), str(run_dir.lock_path))


def _mismatch(rec: recipe_mod.Recipe, run: Path) -> list[str]:
    """A note when RECIPE's teacher or horizon is not the one the run was trained with."""
    from tracer_cli.commands.finished_run import RunDir

    trained = RunDir(run).recipe
    if (trained.to_dict()["teacher"], trained.train.steps) == \
            (rec.to_dict()["teacher"], rec.train.steps):
        return []
    return [f"the run was trained with other teacher settings or horizon than RECIPE (teacher "
            f"{trained.teacher.kind}, train.steps = {trained.train.steps}); the analytic part "
            "describes RECIPE"]


def _ratio(value: float) -> str:
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _mass(log10_mass: float) -> str:
    """Anchor masses span hundreds of decades (an EMA's m^(t/k)): format from the log."""
    if log10_mass == -math.inf:
        return "0"
    if log10_mass >= -3:
        return f"{10 ** log10_mass:.4f}"
    exponent = math.floor(log10_mass)
    return f"{10 ** (log10_mass - exponent):.2f}e{exponent}"


def _teacher_table(result: diagnostics.DistillCheck) -> Table:
    horizon = result.horizon
    table = Table(title=f"teacher kernels over the planned horizon T = {horizon} steps",
                  caption="* the recipe's teacher; half-life: of the anchor mass, at the end")
    for name in ("teacher", "updates", "lag L(T)", "ρ(T)", "min ρ", "anchor mass", "half-life",
                 "verdict"):
        table.add_column(name, justify="left" if name in ("teacher", "verdict") else "right",
                         no_wrap=name == "teacher")
    for i, a in enumerate([result.teacher, *result.alternatives]):
        half = a.curve.anchor_half_life()
        table.add_row(
            ("* " if i == 0 else "  ") + a.spec.label, str(len(a.curve.updates)),
            f"{a.curve.lag[-1]:.1f}", _ratio(a.relative_lag_final), _ratio(a.relative_lag_min),
            _mass(a.log10_anchor_mass_final),
            "never halved" if half is None else f"{half} ({half / horizon:.0%})",
            "collapsed" if a.collapsed else "persistent", style="bold" if i == 0 else None)
    return table


def _empirical_table(emp: diagnostics.EmpiricalAnalysis) -> Table:
    table = Table(title=f"measured ({emp.source}, {len(emp.steps)} records)")
    for name in ("series", "peak (step)", "tail mean", "final", "tail/peak"):
        table.add_column(name, justify="left" if name == "series" else "right")
    names = {"param_ratio": "‖θ − φ‖/‖θ − θ₀‖", "kl": "KL teacher‖student (mean i→t, t→i)"}
    for key, s in emp.summaries().items():
        if s is None:
            table.add_row(names[key], "-", "-", "-", "-")
        else:
            table.add_row(names[key], f"{s.peak:.4g} ({s.peak_step})", f"{s.tail:.4g}",
                          f"{s.final:.4g}", f"{s.decay:.3f}")
    agreement = diagnostics.summarize_series(emp.steps, emp.series["agreement"])
    if agreement is not None:
        table.add_row("top-1 agreement", f"{agreement.peak:.3f} ({agreement.peak_step})",
                      f"{agreement.tail:.3f}", f"{agreement.final:.3f}", "")
    return table


def _render(console: Console, result: diagnostics.DistillCheck) -> None:
    console.print(_teacher_table(result))
    if result.empirical is not None:
        console.print(_empirical_table(result.empirical))
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"verdict: {result.verdict}", style="bold")
    for reason in result.reasons():
        console.print(f"  {reason}")
