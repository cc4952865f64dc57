"""Scoring models with a task: the task's evaluation on the recipe's ID and OOD sets, and the
run summary that averages the task's metrics over the OOD sets and reports retention on the
``data.retain`` sets. ``finetune`` and ``tracer eval`` share it.

Every evaluation reports its progress, one reporter task per dataset (``eval <what> <dataset>``,
counted in batches): a progress bar in a terminal, a plain line per dataset otherwise.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import torch

from tracer_cli.engine.modes import eval_mode
from tracer_cli.engine.precision import Precision
from tracer_cli.events import Reporter, current_reporter
from tracer_cli.recipe import Recipe
from tracer_cli.sdk.contracts import (
    CLASSIFICATION_METRICS, Backbone, DatasetBundle, Task, TaskMetrics)
from tracer_cli.sdk.task_metrics import retention


class _Progress:
    """An evaluation loader that reports each batch it yields; everything else (``bad``,
    ``dataset``, its length) is the loader's."""

    def __init__(self, loader: Any, reporter: Reporter, task: str):
        self.loader, self.reporter, self.task = loader, reporter, task

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        start, done = time.perf_counter(), 0
        self.reporter.start(self.task, len(self.loader))
        try:
            for batch in self.loader:
                yield batch
                done += 1
                self.reporter.advance(self.task, done)
        finally:
            self.reporter.finish(self.task)
        self.reporter.log(self.task, {"batches": done,
                                      "seconds": round(time.perf_counter() - start, 2)})


def _with_progress(sets: dict[str, tuple[DatasetBundle, Any]], what: str,
                  reporter: Reporter | None = None) -> dict[str, tuple[DatasetBundle, Any]]:
    """``sets`` whose loaders report their progress as ``eval <what> <dataset>``."""
    reporter = reporter or current_reporter()
    return {name: (bundle, _Progress(loader, reporter, f"eval {what} {name}"))
            for name, (bundle, loader) in sets.items()}


def task_evaluate(task: Task, backbone: Backbone, module: torch.nn.Module,
                  sets: dict[str, tuple[DatasetBundle, Any]], device: torch.device, autocast: Any,
                  head: torch.nn.Module | None = None, what: str = "model",
                  reporter: Reporter | None = None) -> dict[str, dict[str, Any]]:
    """``task.evaluate``, passing the trained head only when there is one (task plugins without
    heads need not accept the argument), with each dataset's progress reported as
    ``eval <what> <dataset>``. Model and head leave it in the modes they came in (training goes
    on after the evaluations of ``run.eval_every``)."""
    sets = _with_progress(sets, what, reporter)
    with eval_mode(module, head):
        if head is None:
            return task.evaluate(backbone, module, sets, device, autocast)
        return task.evaluate(backbone, module, sets, device, autocast, head=head)


def evaluate(task: Task, backbone: Backbone, module: torch.nn.Module,
             sets: dict[str, tuple[DatasetBundle, Any]], precision: Precision,
             head: torch.nn.Module | None = None, what: str = "model",
             reporter: Reporter | None = None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """name -> metrics, and name -> per-example correctness (top-1 prediction equals the label)
    for the sets whose task returns logits and one label per example; the logits are dropped
    (the run keeps metrics and one bit per example only). Progress as :func:`task_evaluate`."""
    results = task_evaluate(task, backbone, module, sets, precision.device, precision.autocast,
                            head, what, reporter)
    correct = {}
    for name, r in results.items():
        logits, labels = r.get("logits"), r.get("labels")
        if (isinstance(logits, torch.Tensor) and isinstance(labels, torch.Tensor)
                and logits.ndim == 2 and labels.ndim == 1 and len(logits) == len(labels)):
            correct[name] = (logits.argmax(dim=1).cpu() == labels.cpu()).numpy()
    return {name: r["metrics"] for name, r in results.items()}, correct


def summarize(recipe: Recipe, evals: dict[str, dict[str, Any]],
              spec: TaskMetrics = CLASSIFICATION_METRICS,
              before: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per dataset metrics of each evaluated model, ``avg_ood_<m>``, the average over the OOD
    sets, of each metric the task averages (classification: accuracy and ECE), and with retention
    sets ``retain_accuracy`` and ``retain_change`` against ``before``, the pretrained model's
    metrics on them (:func:`tracer_cli.sdk.task_metrics.retention`)."""
    ood = [s.get("label") or s["name"] for s in recipe.data.ood]
    ids = [s.get("label") or s["name"] for s in recipe.data.id]
    retain = [s.get("label") or s["name"] for s in recipe.data.retain]
    table: dict[str, Any] = {"id": ids, "ood": ood, "retain": retain, "models": {}}
    for model, metrics in evals.items():
        entry = {name: m for name, m in metrics.items()}
        if ood:
            for m, key in zip(spec.averaged, spec.ood_keys):
                entry[key] = float(np.mean([metrics[n][m] for n in ood]))
        entry.update(retention(metrics, retain, before))
        table["models"][model] = entry
    return table
