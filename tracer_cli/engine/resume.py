"""Resuming a run: which checkpoint to trust, whether it fits the recipe, and putting it back.

The whole of ``--resume`` in one place, in the order a run takes it:

1. :func:`candidates`: where ``--resume auto`` looks (``last.pt``, then the step checkpoints
   newest first);
2. :func:`load_resume`: the checkpoint verified against the SHA-256 recorded when it was written
   (one that fails is moved to ``corrupt/``, never deleted), checked to be a complete training
   checkpoint (:data:`RESUME_KEYS`) of a run with the same run-defining recipe keys;
3. :func:`restore_training`: the trainer (weights, teacher, optimizer, schedule, scaler, text
   RNG), the data position and the bad-data log put back;
4. :func:`restore_rng`: the global RNG states of this rank, last, so that nothing draws from them
   before the next step.

The checkpoint format itself (atomic writes, RNG capture, weights-only loading) is
:mod:`tracer_cli.engine.checkpoint`; the run directory's layout and checksums are
:mod:`tracer_cli.rundir`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.rundir import checksums
from tracer_cli.engine import checkpoint
from tracer_cli.engine.data import BadDataLog, TrainStream
from tracer_cli.engine.step import Trainer
from tracer_cli.errors import UsageError
from tracer_cli.recipe import Recipe

# What a checkpoint must hold to be resumed (a weights-only milestone has fewer).
RESUME_KEYS = ("step", "state_dict", "teacher", "optimizer", "scheduler", "scaler", "text_rng",
               "rng", "data_position", "recipe")


@dataclass(frozen=True)
class Resume:
    """A checkpoint to continue from, checked against the recipe; ``skipped`` says which newer
    checkpoints failed verification (and where they were moved)."""

    path: Path
    state: dict[str, Any]
    skipped: tuple[str, ...] = ()

    @property
    def step(self) -> int:
        return int(self.state["step"])


def candidates(run_dir: Path) -> Iterator[Path]:
    """Where ``--resume auto`` looks, in order: ``last.pt``, then the step checkpoints newest
    first (a step checkpoint that is ``last.pt``'s own bytes once)."""
    last = rundir.last_path(run_dir)
    if last.is_file():
        yield last
    for _, path in rundir.step_checkpoints(run_dir):
        if last.is_file() and _same_file(path, last):
            continue  # the same bytes as last.pt, already judged
        yield path


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``--resume auto`` has anything to look at in ``run_dir``."""
    return next(candidates(run_dir), None) is not None


def load_resume(recipe: Recipe, run_dir: Path, resume: str | Path,
                notice: Callable[[str], None] = lambda _: None) -> Resume:
    """The checkpoint ``--resume`` names, verified against the SHA-256 recorded when it was
    written and checked to be a complete training checkpoint of a run with the same
    run-defining recipe keys.

    "auto" takes the newest intact checkpoint of the run directory: ``last.pt``, else the step
    checkpoints newest first; each one that fails verification or cannot be read is moved to
    ``corrupt/`` (never deleted) and said so. Call it holding the run directory's lock.
    """
    if str(resume) == "auto":
        path, state, skipped = _newest_intact(recipe, run_dir, notice)
    else:
        path, skipped = Path(resume), ()
        verdict = checksums.verify(path) if path.is_file() else checksums.Verdict(True)
        if not verdict.ok:
            raise UsageError(f"--resume {path}: {verdict.reason}, so it cannot be trusted; give "
                             "another checkpoint, or --resume auto to take the run's newest "
                             "intact one")
        state = checkpoint.load(path)
    missing = [k for k in RESUME_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise UsageError(f"'{path}' is not a tracer training checkpoint that can be resumed "
                         f"(it has no {', '.join(missing)})")
    diffs = recipe_mod.resume_differences(state["recipe"], recipe)
    if diffs:
        raise UsageError(f"cannot resume from '{path}': the recipe differs from the checkpoint's "
                         f"in {'; '.join(diffs)}. These keys define the run; resume with the "
                         "checkpoint's values or start a new run")
    return Resume(path, state, skipped)


def _newest_intact(recipe: Recipe, run_dir: Path, notice: Callable[[str], None]
                   ) -> tuple[Path, dict[str, Any], tuple[str, ...]]:
    skipped = []
    for path in list(candidates(run_dir)):
        verdict = checksums.verify(path)
        reason = "" if verdict.ok else verdict.reason
        if verdict.ok:
            try:
                return path, checkpoint.load(path), tuple(skipped)
            except UsageError:
                reason = "it cannot be read (truncated, or not a checkpoint)"
        moved = rundir.move_aside(run_dir, path)
        skipped.append(f"{path} ({reason}; moved to {moved})")
        notice(f"--resume auto: skipping {path}: {reason}; moved to {moved}")
    if skipped:
        raise UsageError(f"--resume auto: no intact checkpoint in '{run_dir}' (skipped "
                         f"{'; '.join(skipped)}); start the run again with --overwrite")
    raise UsageError(f"--resume auto: '{run_dir}' has no checkpoint to resume from (the run "
                     "wrote no checkpoint yet; train.checkpoint_every = "
                     f"{recipe.train.checkpoint_every}); start it again with --overwrite")


def restore_training(resume: Resume, trainer: Trainer, stream: TrainStream,
                     bad: BadDataLog) -> None:
    """The trainer's state, the data position and the bad-data log as the checkpoint left
    them (under FSDP a collective: every rank calls it)."""
    state = resume.state
    trainer.load_state_dict(state)
    stream.load_state_dict(state["data_position"])
    if "bad_data" in state:
        bad.load_state_dict(state["bad_data"])


def rng_for_rank(state: dict[str, Any], rank: int) -> dict[str, Any]:
    """The RNG states a checkpoint holds for ``rank`` (rank 0's when it was saved by fewer ranks
    or by a single process)."""
    ranks = state.get("rng_ranks") or []
    return ranks[rank] if rank < len(ranks) else state["rng"]


def restore_rng(resume: Resume, rank: int) -> None:
    """This rank's global RNG states (python, numpy, torch, CUDA) as the checkpoint saved them.
    Call it last: nothing may draw from the global RNG between here and the next step."""
    checkpoint.restore_rng(rng_for_rank(resume.state, rank))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
