"""Markdown of a comparison: the tables of ``tracer compare --markdown`` and the robustness
benchmark's report block in BENCHMARKS.md, both from the panels of
:func:`tracer_cli.analysis.tables.analyse`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from tracer_cli.analysis.stats import noise_verdict

# Summaries shown as plain numbers rather than in %.
NOT_PERCENT = ("nll", "brier")
HEADERS = {"id_accuracy": "ID acc", "avg_ood_accuracy": "avg OOD acc",
           "avg_ood_ece": "avg OOD ECE", "avg_ood_nll": "avg OOD NLL"}


def header(key: str) -> str:
    """A table heading for a summary key (``avg_ood_mean_recall`` -> ``avg OOD mean recall``)."""
    if key in HEADERS:
        return HEADERS[key]
    text = key.replace("avg_ood_", "avg OOD ").replace("id_", "ID ", 1)
    return text.replace("_", " ")


def percent(key: str) -> bool:
    return not key.endswith(NOT_PERCENT)


def fmt_pct(pair: Sequence[float | None] | None, signed: bool = False) -> str:
    """A fraction pair (mean, SE) in %."""
    if not pair or pair[0] is None or not math.isfinite(pair[0]):
        return "—"
    mean = f"{100 * pair[0]:+.2f}" if signed else f"{100 * pair[0]:.2f}"
    return mean if pair[1] is None else f"{mean} ± {100 * pair[1]:.2f}"


def fmt_plain(pair: Sequence[float | None] | None, digits: int = 3) -> str:
    if not pair or pair[0] is None:
        return "—"
    mean = f"{pair[0]:.{digits}f}"
    return mean if pair[1] is None else f"{mean} ± {pair[1]:.{digits}f}"


def fmt_key(key: str, pair: Sequence[float | None] | None) -> str:
    return fmt_pct(pair) if percent(key) else fmt_plain(pair)


def fmt_diff(entry: dict[str, Any]) -> str:
    """A paired difference in % points."""
    if entry.get("mean") is None:
        return "—"
    if entry.get("se") is None:
        return f"{100 * entry['mean']:+.2f}"
    return fmt_pct((entry["mean"], entry["se"]), signed=True)


def fmt_vs(new: Sequence[float], old: Sequence[float]) -> str:
    """An unpaired difference of two means with its combined SE and verdict."""
    diff, se = new[0] - old[0], math.hypot(new[1] or 0.0, old[1] or 0.0)
    return f"{fmt_pct((diff, se), signed=True)} ({noise_verdict(diff, se)})"


def main_table(panel: dict[str, Any], ids: Sequence[str], oods: Sequence[str], metric: str,
               keys: Sequence[str], robustness: bool) -> list[str]:
    """One row per model: ``metric`` on each set, the summaries ``keys``, effective robustness
    (when ``robustness``), wall time per run and the number of runs."""
    cols = [*ids, *oods]
    head = ("| model | " + " | ".join(f"{d} ({'ID' if d in ids else 'OOD'})" for d in cols)
            + "".join(f" | {header(k)}" for k in keys)
            + (" | eff. robustness" if robustness else "") + " | wall s/run | runs |")
    lines = [head, "|---" * (len(cols) + len(keys) + 3 + robustness) + "|"]
    for row in panel["rows"]:
        cells = [fmt_pct(row["datasets"][d].get(metric)) if d in row["datasets"] else "—"
                 for d in cols]
        cells += [fmt_key(k, row.get(k)) for k in keys]
        if robustness:
            er = row.get("effective_robustness")
            cells.append("—" if not er else fmt_pct((er["value"], er["se"]), signed=True))
        wall = row["wall_time_s"] if row["model"] == "student" else None
        cells += [fmt_plain(wall, 0), str(row["n_runs"])]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return lines


def paired_table(panel: dict[str, Any], keys: Sequence[str], first: str = "group"
                 ) -> list[str]:
    """Group − reference in % points, each with its verdict."""
    lines = [f"| {first} | reference | " + " | ".join(f"Δ {header(k)} | " for k in keys)
             + " pairs |", "|---" * (3 + 2 * len(keys)) + "|"]
    for e in panel["paired"]:
        cells = []
        for key in keys:
            cells += [fmt_diff(e[key]), e[key]["verdict"]]
        lines.append(f"| {e['group']} | {e['reference']} | " + " | ".join(cells)
                     + f" | {e[keys[1]]['n']} |")
    return lines


def frontier_table(panel: dict[str, Any]) -> list[str]:
    lines = ["| model | curve | ID | avg OOD | curve at that ID | gap | verdict |",
             "|---|---|---|---|---|---|---|"]
    for e in panel["frontier"]:
        curve = "—" if e["curve_ood"] is None else f"{100 * e['curve_ood']:.2f}"
        gap = "—" if e["gap"] is None else fmt_pct((e["gap"], e["se"]), signed=True)
        lines.append(f"| {e['row']} | WiSE-FT of {e['curve']} | {100 * e['id']:.2f} | "
                     f"{100 * e['ood']:.2f} | {curve} | {gap} | {e['verdict']} |")
    return lines


def _fit_line(panel: dict[str, Any]) -> str:
    fit = panel["fit"]
    if fit is None:
        return ("Effective robustness: no fit (it needs the zero-shot point and WiSE-FT points "
                "at two or more ID accuracies).")
    return (f"Effective robustness: average OOD minus the line logit(OOD) = "
            f"{fit['intercept']:.3f} + {fit['slope']:.3f} · logit(ID) fitted through "
            f"{fit['n_points']} zero-shot and WiSE-FT points; ± is the SE of the row's OOD mean.")


def compare_markdown(doc: dict[str, Any]) -> str:
    """The whole ``tracer compare --markdown`` text."""
    by = "recipe without its seed" if not doc["by"] else ", ".join(doc["by"])
    keys = doc["keys"][1:]
    lines = [f"## tracer compare: {len(doc['runs'])} run(s), {len(doc['groups'])} group(s)", "",
             f"Task {doc['task']}; ID {', '.join(doc['id']) or '—'}; OOD "
             f"{', '.join(doc['ood']) or '—'}; grouped by {by}. Values in %, mean ± SE over runs "
             "(SE = sqrt(var between runs / n + mean binomial variance / n) for accuracies); "
             "paired differences by seed, **within noise** when |mean| < 2 SE.", ""]
    for panel in doc["panels"]:
        lines += [f"### {panel['pretrained']}", "",
                  *main_table(panel, doc["id"], doc["ood"], doc["primary"], keys, True), "",
                  _fit_line(panel), ""]
        if panel["paired"]:
            lines += [f"Paired differences against {doc['baseline']}:", "",
                      *paired_table(panel, doc["keys"]), ""]
        if panel["frontier"]:
            lines += ["Against the WiSE-FT frontier at matched ID:", "",
                      *frontier_table(panel), ""]
    lines += [f"- Note: {note}" for note in doc["notes"]]
    return "\n".join(lines).rstrip() + "\n"
