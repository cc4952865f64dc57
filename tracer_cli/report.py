"""Result tables for people: zero-shot vs finetuned accuracy per dataset and the OOD average."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def accuracy_table(summary: dict[str, Any], title: str = "accuracy (%)") -> Table:
    """Rows: datasets (ID first, then OOD, then the OOD average); columns: evaluated models."""
    models = summary.get("models", {})
    table = Table(title=title)
    table.add_column("dataset")
    table.add_column("role")
    for model in models:
        table.add_column(model, justify="right")
    for role in ("id", "ood"):
        for name in summary.get(role, []):
            table.add_row(name, role.upper(),
                          *(_pct(models[m].get(name, {}).get("accuracy")) for m in models))
    if summary.get("ood"):
        table.add_row("average OOD", "", *(_pct(models[m].get("avg_ood_accuracy")) for m in models),
                      style="bold")
    return table
