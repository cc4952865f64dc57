"""Result tables for people: zero-shot vs finetuned results per dataset and the OOD average, in
the task's headline metric (accuracy for classification, mean recall for retrieval)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from tracer_cli.sdk.task_metrics import CLASSIFICATION_METRICS, TaskMetrics


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def accuracy_table(summary: dict[str, Any], title: str | None = None,
                   metrics: TaskMetrics = CLASSIFICATION_METRICS) -> Table:
    """Rows: datasets (ID first, then OOD, then the OOD average); columns: evaluated models;
    cells: the task's primary metric (``metrics.primary``), in % when it is a percentage."""
    primary = metrics.primary
    percent = primary in metrics.percent
    show = _pct if percent else _num
    words = primary.replace("_", " ")
    models = summary.get("models", {})
    table = Table(title=title or (f"{words} (%)" if percent else words))
    table.add_column("dataset")
    table.add_column("role")
    for model in models:
        table.add_column(model, justify="right")
    for role in ("id", "ood"):
        for name in summary.get(role, []):
            table.add_row(name, role.upper(),
                          *(show(models[m].get(name, {}).get(primary)) for m in models))
    if summary.get("ood") and primary in metrics.averaged:
        table.add_row("average OOD", "",
                      *(show(models[m].get(f"avg_ood_{primary}")) for m in models), style="bold")
    return table


def _signed_pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.2f}"


def retention_table(names: list[str], models: dict[str, dict[str, Any]],
                    title: str = "retention: zero-shot accuracy on other tasks (%)") -> Table:
    """Rows: the retention sets, their mean (``retain_accuracy``) and its change from the
    pretrained model (``retain_change``, after minus before); columns: ``models``, each a
    summary entry (per-dataset metrics plus the two retention keys)."""
    table = Table(title=title)
    table.add_column("dataset")
    for model in models:
        table.add_column(model, justify="right")
    for name in names:
        table.add_row(name, *(_pct(m.get(name, {}).get("accuracy")) for m in models.values()))
    table.add_row("retained (mean)", *(_pct(m.get("retain_accuracy")) for m in models.values()),
                  style="bold")
    table.add_row("change vs pretrained",
                  *(_signed_pct(m.get("retain_change")) for m in models.values()), style="bold")
    return table
