"""One finetuning run, start to finish: resolve plugins, train, checkpoint, evaluate, write results.

Launched by torchrun, every process runs :func:`finetune`; rank 0 alone evaluates and writes
(see :mod:`tracer_cli.engine.distributed`). The training phase, with checkpoints, exact resume,
signals, bad data and non-finite losses, is :mod:`tracer_cli.engine.training`.

The run directory is the contract between commands::

    runs/<name>/recipe.lock.toml      resolved recipe + versions + git hash
    runs/<name>/checkpoints/step_N.pt student, teacher, optimizer, schedule, scaler, RNG, data position
    runs/<name>/last.pt               the latest checkpoint
    runs/<name>/metrics.jsonl         one JSON object per log step and per evaluation
    runs/<name>/eval/zeroshot.json    the pretrained model on every evaluation set
    runs/<name>/eval/final.json       student (and teacher) after training
    runs/<name>/summary.json          the headline numbers, written last
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tracer_cli
from tracer_cli import recipe as recipe_mod
from tracer_cli.contracts import (
    CLASSIFICATION_METRICS, Backbone, DatasetBundle, Task, TaskMetrics, task_metrics)
from tracer_cli.engine import distributed
from tracer_cli.engine.data import eval_loader
from tracer_cli.engine.distributed import DistContext
from tracer_cli.engine.loop import check_grad_checkpointing
from tracer_cli.engine.precision import Precision, resolve_device, resolve_precision
from tracer_cli.engine.signals import SignalTrap
from tracer_cli.engine.training import (
    Resume, RunWriter, Trained, check_task_head, load_resume, train)
from tracer_cli.errors import UsageError
from tracer_cli.events import Reporter, current_reporter
from tracer_cli.io import atomic_write_json
from tracer_cli.plugins import get_host
from tracer_cli.recipe import Recipe


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_backbone(recipe: Recipe) -> Backbone:
    entry = get_host().backbones.get(recipe.model.backbone)
    return entry.factory(dict(recipe.model.options))


def build_task(recipe: Recipe) -> Task:
    return get_host().tasks.get(recipe.task.name).factory(dict(recipe.task.options))


def build_dataset(spec: dict[str, Any], path: str, split: str, transform: Any) -> DatasetBundle:
    """Call the dataset plugin named by ``spec`` with its options and the recipe key path."""
    entry = get_host().datasets.get(spec["name"])
    options = {k: v for k, v in spec.items() if k not in ("name", "label")}
    options["_path"] = path
    bundle = entry.factory(options, split, transform)
    if len(bundle.dataset) == 0:
        raise UsageError(f"dataset '{spec['name']}' ({path}) has no examples for split '{split}'")
    return bundle


def eval_sets(recipe: Recipe, backbone: Backbone) -> dict[str, tuple[DatasetBundle, Any]]:
    """name -> (bundle, loader) for the recipe's ID and OOD sets, in recipe order."""
    out = {}
    pin = resolve_device(recipe.run.device).type == "cuda"
    roles = [("id", s) for s in recipe.data.id] + [("ood", s) for s in recipe.data.ood]
    counters = {"id": 0, "ood": 0}
    for role, spec in roles:
        path = f"data.{role}[{counters[role]}]"
        counters[role] += 1
        bundle = build_dataset(spec, path, "test", backbone.preprocess_eval)
        loader = eval_loader(bundle.dataset, recipe.data.eval_batch_size, recipe.data.num_workers,
                             pin)
        out[spec.get("label") or spec["name"]] = (bundle, loader)
    return out


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
    """Create the run folder (or refuse to clobber one) and prove it is writable, before training.

    A resumed run keeps its folder as it is.
    """
    run_dir = run_dir_of(recipe, output_dir)
    if not resuming and run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UsageError(f"run directory '{run_dir}' already exists and is not empty; pass "
                             "--overwrite (or --resume auto to continue it), or choose another "
                             "--output-dir or run.name")
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to run directory '{run_dir}': "
                         f"{exc.strerror or exc}") from None
    return run_dir


def task_evaluate(task: Task, backbone: Backbone, module: torch.nn.Module,
                  sets: dict[str, tuple[DatasetBundle, Any]], device: torch.device, autocast: Any,
                  head: torch.nn.Module | None = None) -> dict[str, dict[str, Any]]:
    """``task.evaluate``, passing the trained head only when there is one (task plugins without
    heads need not accept the argument)."""
    if head is None:
        return task.evaluate(backbone, module, sets, device, autocast)
    was_training = head.training
    head.eval()
    try:
        return task.evaluate(backbone, module, sets, device, autocast, head=head)
    finally:
        head.train(was_training)


def evaluate(task: Task, backbone: Backbone, module: torch.nn.Module,
             sets: dict[str, tuple[DatasetBundle, Any]], precision: Precision,
             head: torch.nn.Module | None = None) -> dict[str, Any]:
    """name -> metrics (logits dropped: the run keeps metrics only)."""
    results = task_evaluate(task, backbone, module, sets, precision.device, precision.autocast,
                            head)
    return {name: r["metrics"] for name, r in results.items()}


def summarize(recipe: Recipe, evals: dict[str, dict[str, Any]],
              spec: TaskMetrics = CLASSIFICATION_METRICS) -> dict[str, Any]:
    """Per dataset metrics of each evaluated model, and ``avg_ood_<m>``, the average over the OOD
    sets, of each metric the task averages (classification: accuracy and ECE)."""
    ood = [s.get("label") or s["name"] for s in recipe.data.ood]
    ids = [s.get("label") or s["name"] for s in recipe.data.id]
    table: dict[str, Any] = {"id": ids, "ood": ood, "models": {}}
    for model, metrics in evals.items():
        entry = {name: m for name, m in metrics.items()}
        if ood:
            for m, key in zip(spec.averaged, spec.ood_keys):
                entry[key] = float(np.mean([metrics[n][m] for n in ood]))
        table["models"][model] = entry
    return table


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
    ctx = distributed.setup(recipe.run.device)
    reporter = (reporter or current_reporter()) if ctx.is_main else Reporter()
    try:
        run = _setup(recipe, ctx, output_dir, overwrite, resume, reporter)
        trained = train(run.writer, run.backbone, run.task, run.bundle, run.precision,
                        run.resume, _last_step(recipe, stop_after), interrupt)
    finally:
        distributed.teardown(ctx)
    if not ctx.is_main:
        return RunResult(run.writer.run_dir, trained.steps, round(time.time() - start, 2), {},
                         ctx.rank)
    return _finish(run, trained, start)


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


def _setup(recipe: Recipe, ctx: DistContext, output_dir: Path | None, overwrite: bool,
           resume: str | Path | None, reporter: Reporter) -> _Setup:
    precision = resolve_precision(recipe.run.precision, ctx.device)
    run_dir = run_dir_of(recipe, output_dir)
    # The checkpoint and its recipe are checked first: a mismatch fails in seconds.
    resumed = load_resume(recipe, run_dir, resume) if resume is not None else None
    task = build_task(recipe)
    check_task_head(recipe, task)  # in seconds, before weights are downloaded or built
    seed_everything(recipe.run.seed)
    with distributed.main_first(ctx):  # downloads and the embedded build happen once
        backbone = build_backbone(recipe)
    check_grad_checkpointing(backbone, recipe.train.grad_checkpointing)
    bundle = build_dataset(recipe.data.train, "data.train", "train", backbone.preprocess_train)
    sets = eval_sets(recipe, backbone) if recipe.run.eval and ctx.is_main else {}
    if ctx.is_main:
        prepare_run_dir(recipe, output_dir, overwrite, resuming=resumed is not None)
        lock = run_dir / "recipe.lock.toml"
        if resumed is None or not lock.is_file():  # a resumed run keeps its lock file
            _write_lock(recipe, lock, ctx, precision, backbone)
        if resumed is not None:
            _end_partial_line(run_dir / "metrics.jsonl")
    writer = RunWriter(recipe, run_dir, ctx, reporter)
    backbone.model.to(ctx.device)
    # Each rank its own stream for model-internal randomness (dropout); rank 0 matches a single
    # process. Data augmentation does not use this RNG (see engine.data).
    torch.manual_seed(recipe.run.seed + ctx.rank)
    run = _Setup(writer, backbone, task, bundle, precision, sets, resumed, {})
    if sets and (recipe.run.eval_zeroshot or recipe.train.method == "zeroshot"):
        run.evals["zeroshot"] = _zeroshot(run)
    distributed.barrier(ctx)  # the others wait while rank 0 evaluates the pretrained model
    return run


def _write_lock(recipe: Recipe, path: Path, ctx: DistContext, precision: Precision,
                backbone: Backbone) -> None:
    recipe_mod.write_lock(recipe, path, {**versions(), "device": str(ctx.device),
                                         "world_size": ctx.world_size,
                                         "precision": precision.name,
                                         "backbone": backbone.describe()})


def _end_partial_line(path: Path) -> None:
    """A process killed mid-write may leave a line without its newline; appending to it would
    corrupt the next record too."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def _zeroshot(run: _Setup) -> dict[str, Any]:
    """The pretrained model's metrics; a resumed run reuses those it wrote before."""
    saved = run.writer.run_dir / "eval" / "zeroshot.json"
    if run.resume is not None and saved.is_file():
        return json.loads(saved.read_text(encoding="utf-8"))
    run.writer.reporter.notice(f"evaluating the pretrained model on {', '.join(run.sets)}")
    metrics = _evaluate(run, "zeroshot", run.backbone.model)
    run.writer.eval_record("zeroshot", metrics, 0, task_metrics(run.task).primary)
    return metrics


def _evaluate(run: _Setup, tag: str, module: torch.nn.Module,
              head: torch.nn.Module | None = None) -> dict[str, Any]:
    metrics = evaluate(run.task, run.backbone, module, run.sets, run.precision, head)
    for name, (_, loader) in run.sets.items():
        skipped = getattr(loader, "bad", [])
        if skipped:
            run.writer.log({"event": "bad_data", "split": "eval", "model": tag, "dataset": name,
                            "skipped": len(skipped),
                            "examples": [i.describe() for i in skipped[:20]]})
            run.writer.reporter.notice(f"{name}: skipped {len(skipped)} unreadable item(s) "
                                       f"evaluating {tag} (first: {skipped[0].describe()})")
    return metrics


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
    if run.sets and recipe.train.method == "zeroshot" and "zeroshot" in evals:
        evals["student"] = evals["zeroshot"]  # the same weights: no second evaluation
        writer.eval_record("final_student", evals["student"], trained.steps, spec.primary)
    elif run.sets:
        writer.reporter.notice("evaluating the finetuned model")
        head = trained.trainer.head
        evals["student"] = _evaluate(run, "student", run.backbone.model, head)
        teacher = trained.trainer.teacher
        if teacher.active and recipe.teacher.kind != "static":
            # A head has no teacher of its own: the teacher's backbone is read with the student's.
            evals["teacher"] = _evaluate(run, "teacher", teacher.module, head)
        for tag, metrics in evals.items():
            if tag != "zeroshot":
                writer.eval_record(f"final_{tag}", metrics, trained.steps, spec.primary)
    summary = {"run_dir": str(writer.run_dir), "steps": trained.steps,
               "wall_time_s": round(time.time() - start, 2),
               "eval": summarize(recipe, evals, spec)}
    if trained.bad.skipped:
        summary["bad_data"] = trained.bad.summary()
    atomic_write_json(writer.run_dir / "summary.json", summary)
    return RunResult(writer.run_dir, trained.steps, summary["wall_time_s"], summary,
                     metrics=spec)


def _last_step(recipe: Recipe, stop_after: int | None) -> int:
    total = recipe.train.steps
    return total if stop_after is None else max(0, min(stop_after, total))
