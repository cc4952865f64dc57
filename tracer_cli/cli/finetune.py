"""``tracer finetune RECIPE``: train with the shared TRACER engine and evaluate at the end.

``--resume auto|PATH`` continues a run exactly where a checkpoint left it; ``--nproc N`` trains on N
local processes through torchrun (DDP). While training, SIGINT and SIGTERM save a checkpoint at the
next step boundary and exit 130 / 143 with the command that resumes the run.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
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
from tracer_cli.errors import EXIT_USAGE, DiskFullError, Interrupted, UsageError, WorkerFailed
from tracer_cli.events import PlainReporter, Reporter, use_reporter
from tracer_cli.results.display import accuracy_table, retention_table

app = typer.Typer()
NPROC_ENV = "TRACER_NPROC"

ResumeOpt = Annotated[Optional[str], typer.Option(
    "--resume", metavar="auto|PATH", show_default=False,
    help="Continue a run exactly where a checkpoint left it: 'auto' takes the run directory's "
    "last.pt, or give a checkpoint file. The recipe must match the checkpoint's in the keys that "
    "define the run.")]
NprocOpt = Annotated[Optional[int], typer.Option(
    "--nproc", min=1, show_default=False,
    help="Train on N processes of this machine with DDP (one per GPU; gloo on CPU) by launching "
    "torch.distributed.run. train.batch_size stays the global batch. For several nodes run "
    "torchrun yourself: torchrun ... -m tracer_cli finetune RECIPE.")]


def _overrides(recipe: Path, overrides: list[str] | None, max_steps: int | None) -> list[str]:
    """The --set list, plus train.steps (and a warm-up clipped to fit) for --max-steps."""
    sets = list(overrides or [])
    if max_steps is not None:
        raw = recipe_mod.apply_overrides(recipe_mod.read_toml(recipe), sets)
        train = raw.get("train")
        warmup = train.get("warmup_steps", 0) if isinstance(train, dict) else 0
        sets += [f"train.steps={max_steps}"]
        if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup > max_steps:
            sets += [f"train.warmup_steps={max_steps}"]
    return sets


def _command(recipe: Path, overrides: list[str], output_dir: Path | None, resume: str | None,
             as_json: bool = False, overwrite: bool = False) -> list[str]:
    """``finetune`` arguments that repeat this invocation (for workers and for the resume hint)."""
    args = ["finetune", str(recipe)]
    for item in overrides:
        args += ["--set", item]
    if output_dir is not None:
        args += ["--output-dir", str(output_dir)]
    if overwrite:
        args.append("--overwrite")
    if resume is not None:
        args += ["--resume", resume]
    if as_json:
        args.append("--json")
    return args


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
    resume: ResumeOpt = None,
    nproc: NprocOpt = None,
    print_recipe: Annotated[bool, typer.Option(
        "--print-recipe", help="Print the resolved recipe (method defaults and --set applied) as "
        "TOML on stdout and exit without training.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Finetune a model as RECIPE describes; writes a run directory and prints the evaluation."""
    from tracer_cli.engine.run import finetune as run_finetune
    from tracer_cli.engine.run import run_dir_of
    from tracer_cli.engine.signals import SignalTrap

    sets = _overrides(recipe, overrides, max_steps)
    # Notices about the recipe come once: from this process, or from the launcher of --nproc.
    quiet = os.environ.get("RANK", "0") != "0" or NPROC_ENV in os.environ
    with use_reporter(Reporter() if quiet else PlainReporter()):
        rec = recipe_mod.load(recipe, sets)
    if print_recipe:
        sys.stdout.write(recipe_mod.recipe_text(rec))
        return
    if resume is not None and overwrite:
        raise UsageError("--resume continues a run directory and --overwrite deletes it; use one")
    if nproc is not None and nproc > 1:
        _launch(nproc, rec, _command(recipe, sets, output_dir, resume, as_json, overwrite),
                lambda: _go_on(rec, recipe, sets, output_dir))
        return
    main_rank = os.environ.get("RANK", "0") == "0"
    console = result_console(as_json)
    with use_reporter(make_reporter() if main_rank else Reporter()) as reporter:
        try:
            result = run_finetune(rec, output_dir=output_dir, overwrite=overwrite,
                                  reporter=reporter, resume=resume,
                                  interrupt=SignalTrap(notice=reporter.notice))
        except (Interrupted, DiskFullError) as exc:
            if not main_rank:  # rank 0 says it once for all
                raise typer.Exit(exc.exit_code) from None
            again = _again(recipe, sets, output_dir, run_dir_of(rec, output_dir))
            if isinstance(exc, DiskFullError):
                hint = "; ".join(h for h in (exc.hint, f"free some space, then {again}") if h)
                raise DiskFullError(exc.path, hint) from None
            raise Interrupted(exc.signum, exc.step, exc.checkpoint, again) from None
    if result.rank != 0:
        return
    if rec.run.eval:
        ev = result.summary["eval"]
        console.print(accuracy_table(ev, metrics=result.metrics))
        if ev.get("retain"):
            console.print(retention_table(ev["retain"], ev["models"]))
    console.print(f"run directory: {result.run_dir}")
    if as_json:
        emit_json(result.summary)


def _again(recipe: Path, sets: list[str], output_dir: Path | None, run_dir: Path) -> str:
    """How to go on after a stop: resume when the run has a checkpoint, else start it again
    (with --overwrite when it left files), so that the printed command works as it is."""
    from tracer_cli.engine.resume import has_checkpoint

    if has_checkpoint(run_dir):
        return "resume with: " + _rerun_command(recipe, sets, output_dir, resume="auto")
    return ("start again (there is no checkpoint to resume from yet) with: "
            + _rerun_command(recipe, sets, output_dir, overwrite=bool(rundir.contents(run_dir))))


def _rerun_command(recipe: Path, sets: list[str], output_dir: Path | None,
                   resume: str | None = None, overwrite: bool = False) -> str:
    from tracer_cli.engine import distributed

    command = "tracer " + shlex.join(_command(recipe, sets, output_dir, resume,
                                              overwrite=overwrite))
    if os.environ.get(NPROC_ENV):
        command += f" --nproc {os.environ[NPROC_ENV]}"
    elif distributed.launched_world_size() > 1:
        command += " (started by the same torchrun command)"
    return command


def _launch(nproc: int, rec: recipe_mod.Recipe, args: list[str], go_on: Callable[[], str]
            ) -> None:
    """Check what can be checked here, then run the workers and exit with their code.

    A rank that failed without saying how to go on (killed, or a crash the other ranks only saw
    as a lost connection) ends the run with one line naming it and ``go_on()``: the command that
    resumes the run, or the one that starts it again."""
    from tracer_cli.engine import distributed
    from tracer_cli.engine.loggers import build_loggers

    if "LOCAL_RANK" in os.environ:
        raise UsageError("--nproc starts torchrun, but this process was already started by "
                         "torchrun; drop --nproc")
    if rec.train.batch_size % nproc:
        raise UsageError(f"train.batch_size = {rec.train.batch_size} (the global batch) must be a "
                         f"multiple of --nproc {nproc}")
    build_loggers(rec)  # unknown loggers, bad [loggers.*] keys, missing packages: exit 2 here
    os.environ[NPROC_ENV] = str(nproc)  # the workers' resume hint repeats --nproc
    try:
        code = distributed.launch(nproc, args)
    except WorkerFailed as exc:
        if exc.exitcode in _EXPLAINED:  # the workers printed the error or the resume command
            raise typer.Exit(exc.exit_code) from None
        raise WorkerFailed(exc.rank, exc.world_size, exc.exitcode, go_on()) from None
    if code:
        raise typer.Exit(code)


# Worker exit codes whose own line already says what to do: bad usage, a stop on SIGINT / SIGTERM
# (a checkpoint was saved and rank 0 printed the resume command).
_EXPLAINED = (EXIT_USAGE, 128 + signal.SIGINT, 128 + signal.SIGTERM)


def _go_on(rec: recipe_mod.Recipe, recipe: Path, sets: list[str], output_dir: Path | None
           ) -> str:
    """After a failed distributed run: resume from its newest checkpoint, or start it again (over
    what the failed run left in its folder)."""
    from tracer_cli.engine.run import run_dir_of

    return _again(recipe, sets, output_dir, run_dir_of(rec, output_dir))
