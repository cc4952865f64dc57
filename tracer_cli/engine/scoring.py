"""Scoring models with a task: the task's evaluation on the recipe's ID and OOD sets, and the
run summary that averages the task's metrics over the OOD sets and reports retention on the
``data.retain`` sets. ``finetune`` and ``tracer eval`` share it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tracer_cli.contracts import CLASSIFICATION_METRICS, Backbone, DatasetBundle, Task, TaskMetrics
from tracer_cli.engine.modes import eval_mode
from tracer_cli.engine.precision import Precision
from tracer_cli.metric_spec import retention
from tracer_cli.recipe import Recipe


def task_evaluate(task: Task, backbone: Backbone, module: torch.nn.Module,
                  sets: dict[str, tuple[DatasetBundle, Any]], device: torch.device, autocast: Any,
                  head: torch.nn.Module | None = None) -> dict[str, dict[str, Any]]:
    """``task.evaluate``, passing the trained head only when there is one (task plugins without
    heads need not accept the argument)."""
    if head is None:
        return task.evaluate(backbone, module, sets, device, autocast)
    with eval_mode(head):
        return task.evaluate(backbone, module, sets, device, autocast, head=head)


def evaluate(task: Task, backbone: Backbone, module: torch.nn.Module,
             sets: dict[str, tuple[DatasetBundle, Any]], precision: Precision,
             head: torch.nn.Module | None = None) -> dict[str, Any]:
    """name -> metrics (logits dropped: the run keeps metrics only)."""
    results = task_evaluate(task, backbone, module, sets, precision.device, precision.autocast,
                            head)
    return {name: r["metrics"] for name, r in results.items()}


def summarize(recipe: Recipe, evals: dict[str, dict[str, Any]],
              spec: TaskMetrics = CLASSIFICATION_METRICS,
              before: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per dataset metrics of each evaluated model, ``avg_ood_<m>``, the average over the OOD
    sets, of each metric the task averages (classification: accuracy and ECE), and with retention
    sets ``retain_accuracy`` and ``retain_change`` against ``before``, the pretrained model's
    metrics on them (:func:`tracer_cli.metric_spec.retention`)."""
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
