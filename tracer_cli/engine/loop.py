"""The training phase of a run: the loop around :meth:`Trainer.step` that never loses a run.

It checkpoints every ``train.checkpoint_every`` steps and at the end, resumes bit-exactly from a
checkpoint, stops at a step boundary with a checkpoint on SIGINT/SIGTERM, skips unreadable items
(and stops once more than ``data.max_bad_fraction`` of the training set is unreadable), and stops on
a non-finite loss naming the last good checkpoint, or skips that batch (``train.on_nonfinite``).
Under DDP every decision is taken from information all ranks share, so ranks never diverge; only
rank 0 writes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.sdk.contracts import Backbone, DatasetBundle, Task
from tracer_cli.engine import checkpoint, distributed
from tracer_cli.engine.data import BadDataLog, BadItem, TrainStream
from tracer_cli.engine.distributed import DistContext, Shard
from tracer_cli.engine.loggers import RunLoggers
from tracer_cli.engine.precision import Precision
from tracer_cli.engine.resume import Resume, restore_rng, restore_training
from tracer_cli.engine.signals import SignalTrap
from tracer_cli.engine.step import (
    NonFiniteLoss, StepConfig, Trainer, enable_grad_checkpointing, lock_towers)
from tracer_cli.engine.strategy import strategy_for
from tracer_cli.engine.teachers import frozen_copy, make_teacher
from tracer_cli.errors import DiskFullError, Interrupted, RunError, UsageError
from tracer_cli.events import Reporter
from tracer_cli.sdk.host import get_host
from tracer_cli.recipe import Recipe
from tracer_cli.teacher.spec import TeacherSpec

TRAIN_TASK = "train"
# With on_nonfinite = "skip", this many non-finite batches in a row mean the run itself is broken
# (weights or learning rate), not an odd batch: stop instead of skipping the rest of the data.
MAX_NONFINITE_IN_A_ROW = 10


class RunWriter:
    """Everything a run writes, on rank 0 only: records for metrics.jsonl and the run's other
    loggers, eval/*.json, checkpoints."""

    def __init__(self, recipe: Recipe, run_dir: Path, ctx: DistContext, reporter: Reporter,
                 loggers: RunLoggers):
        self.recipe, self.run_dir, self.ctx, self.reporter = recipe, run_dir, ctx, reporter
        self.loggers = loggers
        self.last_checkpoint: Path | None = None
        self.last_saved_step: int | None = None

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (``event``: train, checkpoint, resume, ...), to every logger."""
        if self.ctx.is_main:
            self.loggers.log(record)

    def eval_record(self, tag: str, metrics: dict[str, Any], step: int,
                    primary: str = "accuracy") -> None:
        """``eval/<tag>.json``, and the evaluation to every logger (:meth:`log_eval`)."""
        if self.ctx.is_main:
            rundir.write_eval(self.run_dir, tag, metrics)
            self.log_eval(tag, metrics, step, primary)

    def log_eval(self, tag: str, metrics: dict[str, Any], step: int,
                 primary: str = "accuracy") -> None:
        """The task's headline metric per dataset in metrics.jsonl (``<dataset>/<primary>``:
        ``synth-photo/accuracy``, ``coco/mean_recall``), and every metric to the other loggers;
        no eval/*.json (the evaluations during training, ``run.eval_every``)."""
        if self.ctx.is_main:
            self.loggers.log_eval(tag, step, metrics, primary)

    def correct_record(self, tag: str, correct: dict[str, Any]) -> None:
        """``eval/<tag>.correct.npz``: which examples the model got right, per dataset."""
        if self.ctx.is_main and correct:
            rundir.write_correct(self.run_dir, tag, correct)

    def save(self, trainer: Trainer, position: dict[str, int], bad: BadDataLog, step: int) -> Path:
        """A checkpoint of the state after ``step`` steps (a collective under DDP: every rank
        contributes its RNG states, rank 0 writes)."""
        rngs = distributed.gather_objects(self.ctx, checkpoint.capture_rng())
        path = rundir.step_path(self.run_dir, step)
        state = trainer.state_dict()  # every rank: under FSDP gathering the weights is collective
        if self.ctx.is_main:
            payload = {"step": step, **state, "data_position": dict(position),
                       "rng": rngs[0], "recipe": self.recipe.to_dict(),
                       "bad_data": bad.state_dict(), "world_size": self.ctx.world_size}
            if self.ctx.distributed:
                payload["rng_ranks"] = rngs
            train = self.recipe.train
            try:
                path = checkpoint.save_checkpoint(self.run_dir, step, payload,
                                                  train.keep_checkpoints, train.keep_every)
            except DiskFullError as exc:
                raise DiskFullError(exc.path, self.last_good()) from None
            self.log({"event": "checkpoint", "step": step,
                      "path": str(path.relative_to(self.run_dir))})
        self.last_checkpoint, self.last_saved_step = path, step
        return path

    def last_good(self) -> str:
        """Where the run can continue from, in words."""
        if self.last_checkpoint is None:
            return ("no checkpoint was written before it (train.checkpoint_every = "
                    f"{self.recipe.train.checkpoint_every})")
        return f"the last good checkpoint is {self.last_checkpoint} (step {self.last_saved_step})"


def build_trainer(recipe: Recipe, ctx: DistContext, backbone: Backbone, task: Task,
                  bundle: DatasetBundle, precision: Precision, notice) -> Trainer:
    """The Trainer, its student forward set up by the run's strategy (one process, DDP or
    FSDP: :mod:`tracer_cli.engine.strategy`), and a teacher built from θ₀."""
    lock_towers(backbone, backbone.model, recipe.train)
    backbone.model = distributed.sync_batchnorm(backbone.model, ctx, freeze_bn_stats(recipe))
    if recipe.train.channels_last:
        backbone.model.to(memory_format=torch.channels_last)
    check_pairing(recipe, task, ctx.world_size)
    head = build_head(recipe, task, backbone, bundle, precision)
    if recipe.train.strategy == "fsdp" and ctx.distributed and head is not None:
        raise UsageError(f"train.strategy = 'fsdp' does not shard task heads (task "
                         f"'{recipe.task.name}' trains one); use train.strategy = 'ddp'")
    strategy = strategy_for(recipe.train.strategy, ctx, find_unused=head is not None)

    def checkpointing() -> None:
        if recipe.train.grad_checkpointing:
            enable_grad_checkpointing(backbone, backbone.model, notice)

    prepared = strategy.prepare(
        backbone, head, lambda: make_teacher(recipe.teacher.kind, backbone.model,
                                             recipe.train.steps, **teacher_params(recipe)),
        checkpointing)
    if recipe.train.compile:
        prepared.forward = torch.compile(prepared.forward)
    return Trainer(backbone, task, bundle, prepared.teacher, step_config(recipe, precision),
                   head=head, strategy=strategy, prepared=prepared, notice=notice)


def step_config(recipe: Recipe, precision: Precision) -> StepConfig:
    """The step's settings from ``recipe``."""
    return StepConfig(recipe.train, recipe.distill, precision, seed=recipe.run.seed,
                      freeze_bn_stats=freeze_bn_stats(recipe),
                      track_drift=recipe.run.track_drift)


def freeze_bn_stats(recipe: Recipe) -> bool:
    """Whether BatchNorm layers keep their running statistics: ``model.freeze_bn_stats``, or a
    locked image tower's ``train.lock_image_freeze_bn_stats`` (BatchNorm lives in image towers)."""
    return recipe.model.freeze_bn_stats or recipe.train.lock_image_freeze_bn_stats


def consolidate(trainer: Trainer, recipe: Recipe, ctx: DistContext, backbone: Backbone,
                device: torch.device) -> None:
    """After sharded training: gather the weights (all ranks) and, on rank 0, put plain student
    and teacher modules in their places, so evaluation runs on rank 0 alone as after DDP."""
    if not trainer.strategy.sharded:
        return
    student = trainer.strategy.module_state(trainer.student)
    teacher = trainer.strategy.module_state(trainer.teacher.module) if trainer.teacher.active \
        else {}
    if not ctx.is_main:
        return
    plain = get_host().backbones.get(recipe.model.backbone).factory(dict(recipe.model.options))
    plain.model.load_state_dict(student)
    backbone.model = plain.model.to(device)
    trainer.student = backbone.model
    if trainer.teacher.active:
        trainer.teacher.module = frozen_copy(backbone.model)
        trainer.teacher.module.load_state_dict(teacher)


def task_objective(task: Task) -> str:
    """``"contrastive"`` (image-text pairs, or candidate texts per image: classification,
    retrieval, vqa) or ``"head"`` (the task's own head and loss for every method). Task plugins
    without the attribute are contrastive; the head methods train a head either way."""
    return getattr(task, "objective", "contrastive")


def uses_head(recipe: Recipe, task: Task) -> bool:
    """Whether this run trains a task head: the head methods, or a task whose objective is one.

    A zero-shot run trains nothing, so it gets no head either: an untrained head in its
    checkpoint would make ``tracer eval RUN`` disagree with the run's own zero-shot numbers.
    """
    if recipe.train.method == "zeroshot":
        return False
    return recipe.train.method in recipe_mod.HEAD_METHODS or task_objective(task) == "head"


def build_head(recipe: Recipe, task: Task, backbone: Backbone, bundle: DatasetBundle,
               precision: Precision) -> torch.nn.Module | None:
    """The task's head for this run, built from θ₀ (a zero-shot head for classification), or
    None for the contrastive methods."""
    if not uses_head(recipe, task):
        return None
    check_task_head(recipe, task)
    head = task.make_head(backbone, backbone.model, bundle, precision.device, precision.autocast)
    return head.to(precision.device)


def check_task_head(recipe: Recipe, task: Task) -> None:
    """Refuse a head method for a task without a head (retrieval), before any work is done."""
    if uses_head(recipe, task) and getattr(task, "make_head", None) is None:
        raise UsageError(f"train.method = '{recipe.train.method}' trains a task head, but task "
                         f"'{recipe.task.name}' has none; use train.method 'zeroshot', 'flyp', "
                         "'carot' or 'tracer' with this task")


def check_pairing(recipe: Recipe, task: Task, world_size: int) -> None:
    """Refuse candidate texts per image (a task's ``train_pairs``: vqa's contrastive form) with
    several processes or micro-batches, before any work is done: the texts are shared by the
    batch's images, so neither feature gathering nor micro-batch substitution can split them."""
    if uses_head(recipe, task) or getattr(task, "train_pairs", None) is None:
        return
    where = f"--nproc {world_size}" if world_size > 1 else \
        f"train.accum_steps = {recipe.train.accum_steps}" if recipe.train.accum_steps > 1 else ""
    if where:
        raise UsageError(f"task '{recipe.task.name}' with train.method = "
                         f"'{recipe.train.method}' scores each image against candidate texts "
                         f"shared by the batch, which runs in one process without gradient "
                         f"accumulation; drop {where}, or use a head method (ft, lp, lpft)")


def teacher_params(recipe: Recipe) -> dict[str, Any]:
    return TeacherSpec.from_config(recipe.teacher).engine_params()


# Called with the trainer and the number of steps done, after each step (see :func:`train`).
AfterStep = Callable[[Trainer, int], None]


@dataclass
class Trained:
    trainer: Trainer
    bad: BadDataLog
    steps: int


def train(writer: RunWriter, backbone: Backbone, task: Task, bundle: DatasetBundle,
          precision: Precision, resume: Resume | None = None, last_step: int | None = None,
          interrupt: SignalTrap | None = None, after_step: AfterStep | None = None) -> Trained:
    """Train from step 0, or from ``resume``, up to ``last_step`` (default ``train.steps``).

    Build the backbone (θ₀) before calling: the drift tracker and the teacher are built from it
    before the checkpoint's weights are loaded. ``after_step(trainer, step)`` is called on every
    rank after each step, after its logging and before its checkpoint (the evaluations of
    ``run.eval_every``).
    """
    recipe, ctx = writer.recipe, writer.ctx
    trainer = build_trainer(recipe, ctx, backbone, task, bundle, precision,
                            writer.reporter.notice)
    stream = TrainStream(bundle.dataset, recipe.train.batch_size, recipe.run.seed,
                         recipe.data.num_workers, pin_memory=precision.device.type == "cuda",
                         rank=ctx.rank, world_size=ctx.world_size)
    bad = BadDataLog(len(bundle.dataset), recipe.data.max_bad_fraction)
    first = 0 if resume is None else _restore(writer, trainer, stream, bad, resume)
    last = recipe.train.steps if last_step is None else last_step
    if recipe.train.method == "zeroshot":
        # Nothing to train: the run's checkpoint holds θ₀, so eval, export and WiSE-FT read a
        # zero-shot run like any other.
        writer.save(trainer, stream.state_dict(), bad, 0)
        return Trained(trainer, bad, 0)
    loop = _Loop(writer, trainer, stream, bad, interrupt, after_step)
    with interrupt if interrupt is not None else contextlib.nullcontext():
        steps = loop.run(first, last)
    consolidate(trainer, recipe, ctx, backbone, precision.device)
    return Trained(trainer, bad, steps)


def _restore(writer: RunWriter, trainer: Trainer, stream: TrainStream, bad: BadDataLog,
             resumed: Resume) -> int:
    restore_training(resumed, trainer, stream, bad)
    writer.last_checkpoint, writer.last_saved_step = resumed.path, resumed.step
    writer.log({"event": "resume", "step": resumed.step, "checkpoint": str(resumed.path),
                **({"skipped": list(resumed.skipped)} if resumed.skipped else {})})
    writer.reporter.notice(f"resuming from {resumed.path} at step {resumed.step} of "
                           f"{writer.recipe.train.steps}")
    # Last: nothing may draw from the global RNG between here and the next step.
    restore_rng(resumed, writer.ctx.rank)
    return resumed.step


class _Loop:
    """The step loop with its policies; every method runs on all ranks in the same order."""

    def __init__(self, writer: RunWriter, trainer: Trainer, stream: TrainStream,
                 bad: BadDataLog, interrupt: SignalTrap | None, after_step: AfterStep | None):
        self.writer, self.trainer, self.stream, self.bad = writer, trainer, stream, bad
        self.interrupt, self.after_step = interrupt, after_step
        self.ctx, self.cfg = writer.ctx, writer.recipe
        self.window_start, self.window_images = time.perf_counter(), 0

    def run(self, step: int, last: int) -> int:
        reporter = self.writer.reporter
        reporter.start(TRAIN_TASK, last, completed=step)
        try:
            step = self._steps(step, last)
            signum = self._agreed_signal()
            if signum:  # arrived during the last step: training is done, but honour it
                self._stop(signum, step, self.stream.state_dict())
        finally:
            reporter.finish(TRAIN_TASK)
        return step

    def _steps(self, step: int, last: int) -> int:
        batches = iter(self.stream)
        in_a_row = 0
        while step < last:
            position = self.stream.state_dict()
            batch, local_bad = next(batches)
            signum = self.interrupt.signum if self.interrupt is not None else 0
            shared = distributed.exchange(self.ctx, batch, local_bad, signum)
            if shared.stop_signal:
                self._stop(shared.stop_signal, step, position)
            self._track_bad(shared.bad, step)
            if min(shared.shard.sizes) == 0:
                continue  # a rank has no readable item in this batch: every rank skips it
            try:
                record = self.trainer.step(step, batch, shared.shard)
            except NonFiniteLoss as exc:
                in_a_row = self._nonfinite(exc, in_a_row + 1)
                continue
            in_a_row = 0
            step += 1
            self._after_step(step, last, record, shared.shard)
        return step

    def _after_step(self, done: int, last: int, record: dict[str, Any], shard: Shard) -> None:
        cfg, reporter = self.cfg, self.writer.reporter
        self.window_images += sum(shard.sizes)
        reporter.advance(TRAIN_TASK, done, {k: record.get(k) for k in ("loss", "lr", "kl_i2t")})
        if done % cfg.run.log_every == 0 or done == last:
            elapsed = time.perf_counter() - self.window_start
            # Sharded drift statistics are all-reduced: then every rank computes them.
            drift = self.trainer.drift_stats() \
                if self.ctx.is_main or self.trainer.strategy.sharded else {}
            record = {"event": "train", "step": done, **record, **drift,
                      "img_per_s": round(self.window_images / max(elapsed, 1e-9), 2)}
            self.writer.log(record)
            reporter.log(TRAIN_TASK, record)
            self.window_start, self.window_images = time.perf_counter(), 0
            self._log_new_bad(done)
        if self.after_step is not None:
            # Before the checkpoint: a run resumed from step N's checkpoint never repeats what
            # was done at step N.
            self.after_step(self.trainer, done)
        every = cfg.train.checkpoint_every
        if done == cfg.train.steps or (every and done % every == 0):
            self.writer.save(self.trainer, self.stream.state_dict(), self.bad, done)

    def _agreed_signal(self) -> int:
        if self.interrupt is None:
            return 0
        return max(distributed.gather_objects(self.ctx, self.interrupt.signum))

    def _stop(self, signum: int, step: int, position: dict[str, int]) -> None:
        writer = self.writer
        if writer.last_saved_step == step and writer.last_checkpoint is not None:
            path = writer.last_checkpoint
        else:
            path = writer.save(self.trainer, position, self.bad, step)
        distributed.barrier(self.ctx)  # rank 0's file is complete before any rank exits
        writer.log({"event": "interrupted", "step": step, "signal": signum,
                    "checkpoint": str(path)})
        raise Interrupted(signum, step, str(path))

    def _nonfinite(self, exc: NonFiniteLoss, in_a_row: int) -> int:
        policy = self.cfg.train.on_nonfinite
        self.writer.log({"event": "nonfinite", "step": exc.step, "loss": str(exc.value),
                         "action": policy})
        if policy == "stop":
            raise RunError(f"{exc}; {self._last_good()}") from None
        if in_a_row >= MAX_NONFINITE_IN_A_ROW:
            raise RunError(f"{exc}, the {in_a_row}th non-finite loss in a row (train.on_nonfinite "
                           f"= 'skip' skips single batches, not a broken run); "
                           f"{self._last_good()}") from None
        self.writer.reporter.notice(f"{exc}: batch skipped (train.on_nonfinite = 'skip')")
        return in_a_row

    def _last_good(self) -> str:
        path = self.writer.last_checkpoint
        if path is None:
            return self.writer.last_good()
        return (f"{self.writer.last_good()}; continue from it with --resume {path}, e.g. with a "
                "lower train.lr or train.on_nonfinite = 'skip'")

    def _track_bad(self, items: list[BadItem], step: int) -> None:
        if not items:
            return
        if not self.bad.items:
            self.writer.reporter.notice(
                f"skipping unreadable training items (first: {items[0].describe()}); they are "
                "counted, logged to metrics.jsonl and reported at the end")
        self.bad.add(items)
        if self.bad.exceeded():
            self.writer.log({"event": "bad_data", "split": "train", "step": step,
                             **self.bad.summary()})
            raise RunError(self.bad.message())

    def _log_new_bad(self, step: int) -> None:
        new = self.bad.unreported()
        if new:
            self.writer.log({"event": "bad_data", "split": "train", "step": step,
                             "new": [i.describe() for i in new[:20]],
                             "skipped": self.bad.skipped, "distinct": len(self.bad.items)})
