"""One finetuning run, start to finish: resolve plugins, train, checkpoint, evaluate, write results.

Launched by torchrun, every process runs :func:`finetune`; rank 0 alone evaluates and writes
(see :mod:`tracer_cli.engine.distributed`): the pretrained model before training, the student and
teacher every ``run.eval_every`` steps during it (plotted in ``eval/curves.png``), and at the end.
The training phase, with checkpoints, exact resume, signals, bad data and non-finite losses, is
:mod:`tracer_cli.engine.step`.

It writes the run directory that the other commands read; :mod:`tracer_cli.rundir` owns its
layout (recipe lock, checkpoints, metrics, evaluations, summary). Optional loggers
(``run.loggers``) may keep their own files in it (``tensorboard/``, ``wandb/``, a tracker's run
id in ``*_run.json``, so ``--resume`` continues the same tracked run).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

import tracer_cli
from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.rundir.lock import RunLock, describe_stale
from tracer_cli.sdk.contracts import (
    CLASSIFICATION_METRICS, Backbone, DatasetBundle, Task, TaskMetrics, WeightsBuild,
    task_metrics)
from tracer_cli.engine import checkpoint, distributed
from tracer_cli.engine.build import (
    build_dataset, build_task, eval_sets, make_backbone, retain_task, seed_everything,
    unpack_shipped)
from tracer_cli.engine.data import eval_loader
from tracer_cli.engine.distributed import DistContext
from tracer_cli.engine.loggers import RunLoggers, build_loggers
from tracer_cli.engine.loop import RunWriter, Trained, check_pairing, check_task_head, train
from tracer_cli.engine.precision import Precision, resolve_precision
from tracer_cli.engine.resume import Resume, load_resume
from tracer_cli.engine.scoring import evaluate, summarize
from tracer_cli.engine.signals import SignalTrap
from tracer_cli.engine.step import Trainer, check_grad_checkpointing, check_tower_locks
from tracer_cli.errors import UsageError
from tracer_cli.events import Reporter, current_reporter
from tracer_cli.recipe import Recipe
from tracer_cli.results import figures


@dataclass
class RunResult:
    """Where the run went and its summary; ``summary`` is empty on ranks other than 0."""

    run_dir: Path
    steps: int
    wall_time_s: float
    summary: dict[str, Any] = field(default_factory=dict)
    rank: int = 0
    # How to read the summary's metrics (the task's declared spec): which one is the headline.
    metrics: TaskMetrics = CLASSIFICATION_METRICS


def git_hash() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, Any]:
    import open_clip

    return {"tracer": tracer_cli.__version__, "torch": torch.__version__,
            "open_clip": open_clip.__version__, "git": git_hash()}


def run_dir_of(recipe: Recipe, output_dir: Path | None) -> Path:
    return Path(output_dir or recipe.run.output_dir) / recipe.run.name


def prepare_run_dir(recipe: Recipe, output_dir: Path | None, overwrite: bool,
                    resuming: bool = False) -> Path:
    """Make the run folder ready (or refuse to clobber one) and prove it is writable, before
    training. Call it holding the folder's :class:`~tracer_cli.rundir.lock.RunLock`.

    A resumed run keeps its folder as it is; ``--overwrite`` removes what tracer wrote in it and
    refuses anything else (:func:`tracer_cli.rundir.clear_run`). A failed probe leaves nothing:
    the probe file goes here, the lock and the folders it made when the lock is released.
    """
    run_dir = run_dir_of(recipe, output_dir)
    if not resuming and rundir.contents(run_dir):
        if not overwrite:
            raise UsageError(f"run directory '{run_dir}' already exists and is not empty; pass "
                             "--overwrite (or --resume auto to continue it), or choose another "
                             "--output-dir or run.name")
        rundir.clear_run(run_dir)
    probe = run_dir / rundir.WRITE_TEST
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
    except OSError as exc:
        raise UsageError(f"cannot write to run directory '{run_dir}': "
                         f"{exc.strerror or exc}") from None
    finally:
        probe.unlink(missing_ok=True)
    return run_dir


def finetune(recipe: Recipe, output_dir: Path | None = None, overwrite: bool = False,
             reporter: Reporter | None = None, stop_after: int | None = None,
             resume: str | Path | None = None, interrupt: SignalTrap | None = None) -> RunResult:
    """Run ``recipe`` end to end and return where it went and its summary.

    ``stop_after`` trains only the first N steps of the planned run: the schedule and the teacher
    kernel still span ``train.steps`` (``tracer distill-check --steps`` looks at the start of the
    real run this way). A stopped run gets no final checkpoint, only those of
    ``train.checkpoint_every``.

    ``resume`` ("auto" for the run directory's ``last.pt``, or a checkpoint path) continues a run
    exactly where the checkpoint left it: same weights, teacher, optimizer, schedule, RNG and data
    position, appending to metrics.jsonl and reusing ``eval/zeroshot.json``. ``interrupt``, a
    :class:`SignalTrap` the caller provides, is entered while training: SIGINT/SIGTERM then save a
    checkpoint at the next step boundary and raise :class:`tracer_cli.errors.Interrupted`.

    Under torchrun every rank calls this; rank 0 evaluates and writes, the others return a
    result with an empty summary as soon as training is over.
    """
    if resume is not None and overwrite:
        raise UsageError("--resume continues a run directory and --overwrite deletes it; use one")
    start = time.time()
    # Logger names, [loggers.*] keys and their packages are checked first: a mistake fails in
    # seconds, on every rank alike.
    loggers = build_loggers(recipe)
    ctx = distributed.setup(recipe.run.device)
    reporter = (reporter or current_reporter()) if ctx.is_main else Reporter()
    # One writer per run directory, for the whole run: rank 0 holds the lock until the summary
    # is written (the other ranks write nothing).
    lock = RunLock(run_dir_of(recipe, output_dir))
    try:
        if ctx.is_main:
            lock.acquire()
            if lock.stale:
                reporter.notice(f"{lock.run_dir}: {describe_stale(lock.stale)}")
            _clean_debris(lock.run_dir, reporter)
        with loggers.closing():  # the loggers rank 0 started end with the run's outcome
            try:
                run = _setup(recipe, ctx, output_dir, overwrite, resume, reporter, loggers)
                trained = train(run.writer, run.backbone, run.task, run.bundle, run.precision,
                                run.resume, _last_step(recipe, stop_after), interrupt,
                                _DuringTraining(run, ctx))
            finally:
                distributed.teardown(ctx)
            if not ctx.is_main:
                return RunResult(run.writer.run_dir, trained.steps,
                                 round(time.time() - start, 2), {}, ctx.rank)
            result = _finish(run, trained, start)
            _clean_debris(lock.run_dir, reporter)
            return result
    finally:
        lock.release()


def _clean_debris(run_dir: Path, reporter: Reporter) -> None:
    """Temporaries a killed writer left (a checkpoint cut off by SIGKILL or preemption can be
    gigabytes): removed at the start of a run, resumed or not, and again when it finishes."""
    removed = rundir.clean_debris(run_dir)
    if removed:
        reporter.notice(f"{run_dir}: removed {len(removed)} temporary file(s) an interrupted "
                        f"tracer process left behind ({', '.join(p.name for p in removed[:3])}"
                        + (", ..." if len(removed) > 3 else "") + ")")


@dataclass
class _Setup:
    """A run ready to train: its writer, plugins, data and (when resuming) the checkpoint."""

    writer: RunWriter
    backbone: Backbone
    task: Task
    bundle: DatasetBundle
    precision: Precision
    sets: dict[str, tuple[DatasetBundle, Any]]
    resume: Resume | None
    evals: dict[str, dict[str, Any]]
    # Retention sets (data.retain), scored zero-shot by retain_scorer, and the pretrained model's
    # metrics on them (retention's "before").
    retain: dict[str, tuple[DatasetBundle, Any]] = field(default_factory=dict)
    retain_scorer: Task | None = None
    before: dict[str, Any] | None = None

    @property
    def evaluates(self) -> bool:
        return bool(self.sets or self.retain)


def _setup(recipe: Recipe, ctx: DistContext, output_dir: Path | None, overwrite: bool,
           resume: str | Path | None, reporter: Reporter, loggers: RunLoggers) -> _Setup:
    precision = resolve_precision(recipe.run.precision, ctx.device)
    run_dir = run_dir_of(recipe, output_dir)
    # The checkpoint and its recipe are checked first: a mismatch fails in seconds. Rank 0
    # chooses (moving corrupt files aside); the others then find the same checkpoint.
    resumed = None
    if resume is not None:
        with distributed.main_first(ctx):
            resumed = load_resume(recipe, run_dir, resume, reporter.notice)
    task = build_task(recipe)
    check_task_head(recipe, task)  # in seconds, before weights are downloaded or built
    check_pairing(recipe, task, ctx.world_size)
    seed_everything(recipe.run.seed)
    with distributed.main_first(ctx):  # downloads and the embedded build happen once
        backbone = build_backbone(recipe)
    if resumed is not None and ctx.is_main and rundir.is_run_dir(run_dir):
        _check_built_as_locked(run_dir, backbone, reporter)
    check_grad_checkpointing(backbone, recipe.train.grad_checkpointing)
    if recipe.run.eval_every and recipe.train.strategy == "fsdp" and ctx.distributed:
        # Rank 0 alone evaluates; under FSDP it holds only a shard of the weights.
        raise UsageError("run.eval_every evaluates on rank 0 alone, which under train.strategy "
                         "= 'fsdp' holds only a shard of the weights; set run.eval_every = 0 "
                         "(the final evaluation still runs) or train.strategy = 'ddp'")
    check_tower_locks(backbone, recipe.train)
    bundle = build_dataset(recipe.data.train, "data.train", "train", backbone.preprocess_train)
    # train.epochs becomes train.steps here, before the lock file, the schedule and the teacher
    # kernel read the horizon.
    recipe.train.resolve_epochs(len(bundle.dataset))
    evaluates = recipe.run.eval and ctx.is_main
    sets = eval_sets(recipe, backbone) if evaluates else {}
    retain = eval_sets(recipe, backbone, ("retain",)) if evaluates else {}
    if ctx.is_main:
        prepare_run_dir(recipe, output_dir, overwrite, resuming=resumed is not None)
        if resumed is None or not rundir.is_run_dir(run_dir):  # a resumed run keeps its lock
            _write_lock(recipe, run_dir, ctx, precision, backbone)
        loggers.start(run_dir, recipe, resumed.step if resumed is not None else None,
                      reporter.notice)
    writer = RunWriter(recipe, run_dir, ctx, reporter, loggers)
    backbone.model.to(ctx.device)
    # Each rank its own stream for model-internal randomness (dropout); rank 0 matches a single
    # process. Data augmentation does not use this RNG (see engine.data).
    torch.manual_seed(recipe.run.seed + ctx.rank)
    run = _Setup(writer, backbone, task, bundle, precision, sets, resumed, {}, retain,
                 retain_task() if retain else None)
    if run.evaluates and (recipe.run.eval_zeroshot or recipe.train.method == "zeroshot"):
        run.evals["zeroshot"] = _zeroshot(run)
    run.before = _retain_before(run)
    distributed.barrier(ctx)  # the others wait while rank 0 evaluates the pretrained model
    return run


def _check_built_as_locked(run_dir: Path, backbone: Backbone, reporter: Reporter) -> None:
    """A resumed run continues in the network its lock file says it was trained in."""
    locked = rundir.read_recipe_lock(run_dir)[1].get("backbone")
    notice = rundir.check_built_as_locked(run_dir, locked if isinstance(locked, dict) else {},
                                          backbone.describe())
    if notice:
        reporter.notice(notice)


def _write_lock(recipe: Recipe, run_dir: Path, ctx: DistContext, precision: Precision,
                backbone: Backbone) -> None:
    extra = {**versions(), "device": str(ctx.device), "world_size": ctx.world_size,
             "precision": precision.name, "backbone": backbone.describe()}
    rundir.write_recipe_lock(run_dir, recipe_mod.lock_text(recipe, extra))


def _zeroshot(run: _Setup) -> dict[str, Any]:
    """The pretrained model's metrics; a resumed run reuses those it wrote before."""
    saved = rundir.read_eval(run.writer.run_dir, "zeroshot")
    if run.resume is not None and isinstance(saved, dict):
        return saved
    run.writer.reporter.notice(f"evaluating the pretrained model on "
                                f"{', '.join([*run.sets, *run.retain])}")
    metrics = _evaluate(run, "zeroshot", run.backbone.model)
    run.writer.eval_record("zeroshot", metrics, 0, task_metrics(run.task).primary)
    return metrics


def _retain_before(run: _Setup) -> dict[str, Any] | None:
    """The pretrained model's metrics on the retention sets: from its zero-shot evaluation, or,
    when that was skipped (``run.eval_zeroshot = false``) or a resumed run added sets, measured
    now, on the retention sets alone."""
    if not run.retain:
        return None
    zeroshot = run.evals.get("zeroshot") or {}
    if all(name in zeroshot for name in run.retain):
        return {name: zeroshot[name] for name in run.retain}
    run.writer.reporter.notice(f"evaluating the pretrained model on {', '.join(run.retain)} "
                               "(retention before finetuning)")
    return evaluate(run.retain_scorer, run.backbone, run.backbone.model, run.retain,
                    run.precision, what="zeroshot", reporter=run.writer.reporter)[0]


def _evaluate(run: _Setup, tag: str, module: torch.nn.Module, head: torch.nn.Module | None = None,
              sets: dict[str, tuple[DatasetBundle, Any]] | None = None) -> dict[str, Any]:
    """The task's metrics on the ID and OOD sets (through ``head`` when the run trained one) and
    the zero-shot metrics on the retention sets (never through a head: it has only the
    finetuning classes); the per-example correctness of the ID and OOD sets is kept. ``sets``:
    an evaluation during training (``run.eval_sets``), without retention or correctness."""
    during = sets is not None
    sets = run.sets if sets is None else sets
    metrics, correct = evaluate(run.task, run.backbone, module, sets, run.precision, head, tag,
                                run.writer.reporter) if sets else ({}, {})
    retain = {} if during else run.retain
    if not during:
        run.writer.correct_record("zeroshot" if tag == "zeroshot" else f"final_{tag}", correct)
    if retain:
        metrics.update(evaluate(run.retain_scorer, run.backbone, module, retain, run.precision,
                                what=tag, reporter=run.writer.reporter)[0])
    for name, (_, loader) in {**sets, **retain}.items():
        skipped = getattr(loader, "bad", [])
        if skipped:
            run.writer.log({"event": "bad_data", "split": "eval", "model": tag, "dataset": name,
                            "skipped": len(skipped),
                            "examples": [i.describe() for i in skipped[:20]]})
            run.writer.reporter.notice(f"{name}: skipped {len(skipped)} unreadable item(s) "
                                       f"evaluating {tag} (first: {skipped[0].describe()})")
    return metrics


class _DuringTraining:
    """``run.eval_every``: the student (and an active teacher, through the head when the run
    trains one) evaluated every N steps on ``run.eval_sets``, by rank 0 while the other ranks wait.

    It runs before the step's checkpoint, so a resumed run never repeats an evaluation its
    checkpoint follows (it redoes one an interrupted attempt made after its checkpoint, with the
    steps it redoes). The last step is the final evaluation's. The RNG is saved and restored
    around it, so a run trains exactly as it would without.
    """

    def __init__(self, run: _Setup, ctx: DistContext):
        self.run, self.ctx = run, ctx
        self.every = run.writer.recipe.run.eval_every
        self.sets = _sets_during_training(run) if self.every else {}

    def __call__(self, trainer: Trainer, step: int) -> None:
        if not self.every or step % self.every or step == self.run.writer.recipe.train.steps:
            return
        if self.ctx.is_main:
            rng = checkpoint.capture_rng()
            try:
                self._evaluate(trainer, step)
            finally:
                checkpoint.restore_rng(rng)
        distributed.barrier(self.ctx)

    def _evaluate(self, trainer: Trainer, step: int) -> None:
        run, recipe = self.run, self.run.writer.recipe
        primary = task_metrics(run.task).primary
        models = {"student": trainer.student}
        if trainer.teacher.active and recipe.teacher.kind != "static":
            models["teacher"] = trainer.teacher.module
        for tag, module in models.items():
            metrics = _evaluate(run, tag, module, trainer.head, self.sets)
            run.writer.log_eval(tag, metrics, step, primary)
            heads = ", ".join(f"{name} {m.get(primary, float('nan')):.4f}"
                              for name, m in metrics.items())
            run.writer.reporter.notice(f"step {step} {tag} {primary}: {heads}")


def _sets_during_training(run: _Setup) -> dict[str, tuple[DatasetBundle, Any]]:
    """The sets ``run.eval_sets`` names (all without it), each cut to ``run.eval_max_images``
    images evenly spaced over the set (sets are often ordered by class)."""
    cfg, data = run.writer.recipe.run, run.writer.recipe.data
    out = {}
    for name, (bundle, loader) in run.sets.items():
        if cfg.eval_sets and name not in cfg.eval_sets:
            continue
        size = len(loader.dataset)
        if cfg.eval_max_images and cfg.eval_max_images < size:
            keep = np.linspace(0, size, cfg.eval_max_images, endpoint=False).astype(int)
            loader = eval_loader(Subset(loader.dataset, keep.tolist()), data.eval_batch_size,
                                 data.num_workers, run.precision.device.type == "cuda")
        out[name] = (bundle, loader)
    return out


def _finish(run: _Setup, trained: Trained, start: float) -> RunResult:
    recipe, writer = run.writer.recipe, run.writer
    spec = task_metrics(run.task)
    if trained.bad.skipped:
        writer.log({"event": "bad_data", "split": "train", "final": True,
                    **trained.bad.summary()})
        first = next(iter(trained.bad.items.values()))
        writer.reporter.notice(f"training: {len(trained.bad.items)} unreadable item(s), "
                               f"{100 * trained.bad.fraction:.2f}% of the training set, skipped "
                               f"{trained.bad.skipped} time(s) in all (first: {first.describe()})")
    evals = dict(run.evals)
    if run.evaluates and recipe.train.method == "zeroshot" and "zeroshot" in evals:
        evals["student"] = evals["zeroshot"]  # the same weights: no second evaluation
        writer.eval_record("final_student", evals["student"], trained.steps, spec.primary)
    elif run.evaluates:
        writer.reporter.notice("evaluating the finetuned model on "
                               f"{', '.join([*run.sets, *run.retain])}")
        head = trained.trainer.head
        evals["student"] = _evaluate(run, "student", run.backbone.model, head)
        teacher = trained.trainer.teacher
        if teacher.active and recipe.teacher.kind != "static":
            # A head has no teacher of its own: the teacher's backbone is read with the student's.
            evals["teacher"] = _evaluate(run, "teacher", teacher.module, head)
        for tag, metrics in evals.items():
            if tag != "zeroshot":
                writer.eval_record(f"final_{tag}", metrics, trained.steps, spec.primary)
    if run.sets and recipe.run.eval_every:
        figures.eval_curves(_curves(writer.run_dir, spec.primary),
                            rundir.curves_path(writer.run_dir), spec.primary)
    summary = {"run_dir": str(writer.run_dir), "steps": trained.steps,
               "wall_time_s": round(time.time() - start, 2),
               "eval": summarize(recipe, evals, spec, run.before)}
    if trained.bad.skipped:
        summary["bad_data"] = trained.bad.summary()
    rundir.write_summary(writer.run_dir, summary)
    writer.loggers.log_files(writer.run_dir, rundir.result_files(writer.run_dir))
    return RunResult(writer.run_dir, trained.steps, summary["wall_time_s"], summary,
                     metrics=spec)


def _curves(run_dir: Path, primary: str) -> dict[str, list[tuple[int, float]]]:
    """``"<model> <dataset>"`` -> (step, headline) of every evaluation in metrics.jsonl, the
    zero-shot one starting the student's and teacher's curves; a step evaluated again after a
    resume keeps its last record."""
    latest = {}
    for record in rundir.read_metrics(run_dir):
        if record.get("event") == "eval":
            latest[(record["model"], record["step"])] = record
    curves: dict[str, list[tuple[int, float]]] = {}
    for (model, step), record in sorted(latest.items(), key=lambda item: item[0][1]):
        whose = ("student", "teacher") if model == "zeroshot" else (model.removeprefix("final_"),)
        for key, value in record.items():
            if key.endswith(f"/{primary}") and isinstance(value, (int, float)):
                for who in whose:
                    curves.setdefault(f"{who} {key.removesuffix(f'/{primary}')}", []).append(
                        (step, value))
    return {label: points for label, points in curves.items() if len(points) > 1}


def backbone_from_options(name: str, options: dict[str, Any]) -> Backbone:
    """Backbone plugin ``name`` built from its ``[model]`` options, the weights it asks for
    (``weights_build``) made first when missing: unpacked, or trained by :func:`train_weights`."""
    return make_backbone(name, options, train_weights)


def build_backbone(recipe: Recipe) -> Backbone:
    """The recipe's backbone, its weights made first when the plugin asks for that."""
    return backbone_from_options(recipe.model.backbone, dict(recipe.model.options))


def pretrained_backbone(recipe: Recipe) -> Backbone:
    """The backbone exactly as ``finetune`` built it: seeded first, so that even randomly
    initialised weights (``pretrained = "none"``) come out as the run's θ₀."""
    seed_everything(recipe.run.seed)
    return build_backbone(recipe)


def train_weights(build: WeightsBuild) -> Path:
    """Keep ``build``'s weights at ``build.target``, with their lock file beside it: the
    plugin's packaged weights when it ships them (``build.shipped``), else ``build.recipe`` run
    as ``tracer finetune`` would (in a temporary run directory), its student's weights passed
    through ``build.finalize`` when given."""
    if build.shipped is not None:
        return unpack_shipped(build)
    reporter = current_reporter()
    reporter.notice(f"building {build.what} (one-time training; it will be cached at "
                    f"{build.target})")
    with tempfile.TemporaryDirectory(prefix="tracer-weights-") as tmp:
        source = Path(tmp) / "recipe.toml"
        source.write_text(build.recipe, encoding="utf-8")
        recipe = recipe_mod.load(source, list(build.overrides))
        result = finetune(recipe, output_dir=Path(tmp) / "runs", reporter=reporter)
        last = checkpoint.load(rundir.last_path(result.run_dir))
        state = last["state_dict"]
        if build.finalize is not None:
            state = build.finalize(state, last)
        lock = rundir.recipe_lock_path(result.run_dir).read_text(encoding="utf-8")
        build.target.parent.mkdir(parents=True, exist_ok=True)
        build.target.with_suffix(".lock.toml").write_text(lock, encoding="utf-8")
        checkpoint.save(build.target, {"state_dict": state})
    values = sum(v.numel() for v in state.values() if torch.is_tensor(v))
    reporter.notice(f"{build.what} ready: {build.target} ({values:,} values)")
    return build.target


def _last_step(recipe: Recipe, stop_after: int | None) -> int:
    total = recipe.train.steps
    return total if stop_after is None else max(0, min(stop_after, total))
