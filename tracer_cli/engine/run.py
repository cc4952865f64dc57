"""One finetuning run, start to finish: resolve plugins, train, checkpoint, evaluate, write results.

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
from tracer_cli.contracts import Backbone, DatasetBundle, Task
from tracer_cli.engine import checkpoint
from tracer_cli.engine.data import TrainStream, eval_loader
from tracer_cli.engine.loop import Trainer
from tracer_cli.engine.precision import Precision, resolve_device, resolve_precision
from tracer_cli.engine.teachers import make_teacher
from tracer_cli.errors import UsageError
from tracer_cli.events import Reporter, current_reporter
from tracer_cli.io import append_jsonl, atomic_write_json
from tracer_cli.plugins import get_host
from tracer_cli.recipe import Recipe

TRAIN_TASK = "train"


@dataclass
class RunResult:
    run_dir: Path
    steps: int
    wall_time_s: float
    summary: dict[str, Any] = field(default_factory=dict)


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


def prepare_run_dir(recipe: Recipe, output_dir: Path | None, overwrite: bool) -> Path:
    """Create the run folder (or refuse to clobber one) and prove it is writable, before training."""
    run_dir = Path(output_dir or recipe.run.output_dir) / recipe.run.name
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise UsageError(f"run directory '{run_dir}' already exists and is not empty; pass "
                             "--overwrite, or choose another --output-dir or run.name")
        shutil.rmtree(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cannot write to run directory '{run_dir}': {exc.strerror}") from None
    return run_dir


def evaluate(task: Task, backbone: Backbone, module: torch.nn.Module,
             sets: dict[str, tuple[DatasetBundle, Any]], precision: Precision) -> dict[str, Any]:
    """name -> metrics (logits dropped: the run keeps metrics only)."""
    results = task.evaluate(backbone, module, sets, precision.device, precision.autocast)
    return {name: r["metrics"] for name, r in results.items()}


def summarize(recipe: Recipe, evals: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per dataset accuracy of each evaluated model, and the average over the OOD sets."""
    ood = [s.get("label") or s["name"] for s in recipe.data.ood]
    ids = [s.get("label") or s["name"] for s in recipe.data.id]
    table: dict[str, Any] = {"id": ids, "ood": ood, "models": {}}
    for model, metrics in evals.items():
        entry = {name: m for name, m in metrics.items()}
        if ood:
            entry["avg_ood_accuracy"] = float(np.mean([metrics[n]["accuracy"] for n in ood]))
            entry["avg_ood_ece"] = float(np.mean([metrics[n]["ece"] for n in ood]))
        table["models"][model] = entry
    return table


class _Run:
    """State of one run while it trains (kept small: the Trainer owns the model state)."""

    def __init__(self, recipe: Recipe, run_dir: Path, reporter: Reporter):
        self.recipe, self.run_dir, self.reporter = recipe, run_dir, reporter
        self.metrics_path = run_dir / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        append_jsonl(self.metrics_path, record)

    def eval_record(self, tag: str, metrics: dict[str, Any], step: int) -> None:
        atomic_write_json(self.run_dir / "eval" / f"{tag}.json", metrics)
        self.log({"event": "eval", "model": tag, "step": step,
                  **{f"{n}/accuracy": m["accuracy"] for n, m in metrics.items()}})


def finetune(recipe: Recipe, output_dir: Path | None = None, overwrite: bool = False,
             reporter: Reporter | None = None, stop_after: int | None = None) -> RunResult:
    """Run ``recipe`` end to end and return where it went and its summary.

    ``stop_after`` trains only the first N steps of the planned run: the schedule and the teacher
    kernel still span ``train.steps`` (``tracer distill-check --steps`` looks at the start of the
    real run this way). A stopped run gets no final checkpoint, only those of
    ``train.checkpoint_every``.
    """
    reporter = reporter or current_reporter()
    start = time.time()
    device = resolve_device(recipe.run.device)
    precision = resolve_precision(recipe.run.precision, device)
    seed_everything(recipe.run.seed)
    backbone = build_backbone(recipe)
    task = build_task(recipe)
    train_bundle = build_dataset(recipe.data.train, "data.train", "train", backbone.preprocess_train)
    sets = eval_sets(recipe, backbone) if recipe.run.eval else {}
    run_dir = prepare_run_dir(recipe, output_dir, overwrite)
    run = _Run(recipe, run_dir, reporter)
    recipe_mod.write_lock(recipe, run_dir / "recipe.lock.toml",
                          {**versions(), "device": str(device), "precision": precision.name,
                           "backbone": backbone.describe()})
    backbone.model.to(device)
    torch.manual_seed(recipe.run.seed)
    evals: dict[str, dict[str, Any]] = {}
    if sets:
        reporter.notice(f"evaluating the pretrained model on {', '.join(sets)}")
        evals["zeroshot"] = evaluate(task, backbone, backbone.model, sets, precision)
        run.eval_record("zeroshot", evals["zeroshot"], 0)
    trainer = _train(recipe, run, backbone, task, train_bundle, precision, stop_after)
    steps = _last_step(recipe, stop_after)
    if sets:
        reporter.notice("evaluating the finetuned model")
        evals["student"] = evaluate(task, backbone, backbone.model, sets, precision)
        if trainer.teacher.active and recipe.teacher.kind != "static":
            evals["teacher"] = evaluate(task, backbone, trainer.teacher.module, sets, precision)
        final = {k: v for k, v in evals.items() if k != "zeroshot"}
        for tag, metrics in final.items():
            run.eval_record(f"final_{tag}", metrics, steps)
    summary = {"run_dir": str(run_dir), "steps": steps,
               "wall_time_s": round(time.time() - start, 2), "eval": summarize(recipe, evals)}
    atomic_write_json(run_dir / "summary.json", summary)
    return RunResult(run_dir, steps, summary["wall_time_s"], summary)


def _last_step(recipe: Recipe, stop_after: int | None) -> int:
    total = recipe.train.steps
    return total if stop_after is None else max(0, min(stop_after, total))


def _train(recipe: Recipe, run: _Run, backbone: Backbone, task: Task, bundle: DatasetBundle,
           precision: Precision, stop_after: int | None = None) -> Trainer:
    t = recipe.teacher
    teacher = make_teacher(t.kind, backbone.model, recipe.train.steps, **_teacher_params(recipe))
    trainer = Trainer(backbone, task, bundle, teacher, recipe.train, recipe.distill, precision,
                      recipe.model.freeze_bn_stats, recipe.run.seed, notice=run.reporter.notice,
                      track_drift=recipe.run.track_drift)
    stream = TrainStream(bundle.dataset, recipe.train.batch_size, recipe.run.seed,
                         recipe.data.num_workers, pin_memory=precision.device.type == "cuda")
    total, every = recipe.train.steps, recipe.run.log_every
    last = _last_step(recipe, stop_after)
    run.reporter.start(TRAIN_TASK, last)
    window_start, window_images = time.perf_counter(), 0
    batches = iter(stream)
    for step in range(last):
        batch = next(batches)
        record = trainer.step(step, batch)
        window_images += len(batch["label"])
        done = step + 1
        run.reporter.advance(TRAIN_TASK, done, {k: record.get(k) for k in ("loss", "lr", "kl_i2t")})
        if done % every == 0 or done == last:
            elapsed = time.perf_counter() - window_start
            record = {"event": "train", "step": done, **record, **trainer.drift_stats(),
                      "img_per_s": round(window_images / max(elapsed, 1e-9), 2)}
            run.log(record)
            run.reporter.log(TRAIN_TASK, record)
            window_start, window_images = time.perf_counter(), 0
        ckpt_every = recipe.train.checkpoint_every
        if done == total or (ckpt_every and done % ckpt_every == 0):
            _save(run, trainer, stream, done)
    run.reporter.finish(TRAIN_TASK)
    return trainer


def _teacher_params(recipe: Recipe) -> dict[str, Any]:
    t = recipe.teacher
    if t.kind == "wma":
        return {"beta": t.beta, "update_every": t.resolved_update_every()}
    if t.kind == "ema":
        return {"momentum_start": t.momentum_start, "momentum_end": t.momentum_end,
                "warmup": t.momentum_warmup, "update_every": t.resolved_update_every()}
    return {}


def _save(run: _Run, trainer: Trainer, stream: TrainStream, step: int) -> None:
    payload = {"step": step, **trainer.state_dict(), "data_position": stream.state_dict(),
               "rng": checkpoint.capture_rng(), "recipe": run.recipe.to_dict()}
    path = checkpoint.save_checkpoint(run.run_dir, step, payload)
    run.log({"event": "checkpoint", "step": step, "path": str(path.relative_to(run.run_dir))})

