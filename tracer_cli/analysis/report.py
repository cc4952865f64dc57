"""Markdown of a comparison: the tables of ``tracer compare --markdown``, from the panels of
:func:`tracer_cli.analysis.tables.analyse`. The robustness benchmark's block in BENCHMARKS.md is
built from these tables by ``benchmarks/_report.py``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

# Summaries shown as plain numbers rather than in %: ECE is a fraction, as `tracer eval` shows it
# (its TaskMetrics.percent holds the accuracies only).
NOT_PERCENT = ("nll", "brier", "ece")
HEADERS = {"id_accuracy": "ID acc", "avg_ood_accuracy": "avg OOD acc",
           "avg_ood_ece": "avg OOD ECE", "avg_ood_nll": "avg OOD NLL",
           "retain_accuracy": "retained acc", "retain_change": "retained change"}


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


def fmt_key(key: str, pair: Sequence[float | None] | None,
            ci: Sequence[float] | None = None) -> str:
    """A mean ± SE in the key's unit, with its 95% interval ``ci`` when given."""
    text = fmt_pct(pair) if percent(key) else fmt_plain(pair)
    return text if not ci or text == "—" else f"{text} {fmt_ci(key, ci)}"


def fmt_ci(key: str, ci: Sequence[float]) -> str:
    """A 95% interval in the key's unit: ``[lo, hi]``."""
    scale, digits = (100, 2) if percent(key) else (1, 3)
    return f"[{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"


def fmt_diff(entry: dict[str, Any], key: str = "accuracy") -> str:
    """A paired difference in the key's unit (% points for accuracies)."""
    if entry.get("mean") is None:
        return "—"
    if not percent(key):
        mean = f"{entry['mean']:+.4f}"
        return mean if entry.get("se") is None else f"{mean} ± {entry['se']:.4f}"
    if entry.get("se") is None:
        return f"{100 * entry['mean']:+.2f}"
    return fmt_pct((entry["mean"], entry["se"]), signed=True)


def main_table(panel: dict[str, Any], ids: Sequence[str], oods: Sequence[str], metric: str,
               keys: Sequence[str], robustness: bool, retain: Sequence[str] = ()) -> list[str]:
    """One row per model: ``metric`` on each set (the retention sets' accuracy), the summaries
    ``keys``, effective robustness (when ``robustness``), wall time per run and the number of
    runs."""
    cols = [*ids, *oods, *retain]
    role = {**{d: "ID" for d in ids}, **{d: "OOD" for d in oods}, **{d: "retain" for d in retain}}
    head = ("| model | " + " | ".join(f"{d} ({role[d]})" for d in cols)
            + "".join(f" | {header(k)}" for k in keys)
            + (" | eff. robustness" if robustness else "") + " | wall s/run | runs |")
    lines = [head, "|---" * (len(cols) + len(keys) + 3 + robustness) + "|"]
    for row in panel["rows"]:
        cells = [fmt_pct(row["datasets"][d].get("accuracy" if d in retain else metric))
                 if d in row["datasets"] else "—" for d in cols]
        cells += [fmt_key(k, row.get(k), row.get("ci95", {}).get(k)) for k in keys]
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
    heads = [part for k in keys for part in (f"Δ {header(k)}", "")]
    lines = ["| " + " | ".join([first, "reference", *heads, "pairs"]) + " |",
             "|---" * (3 + 2 * len(keys)) + "|"]
    for e in panel["paired"]:
        cells = []
        for key in keys:
            cells += [fmt_diff(e[key], key), e[key]["verdict"]]
        lines.append(f"| {e['group']} | {e['reference']} | " + " | ".join(cells)
                     + f" | {e[keys[1]]['n']} |")
    return lines


def frontier_table(panel: dict[str, Any], x: str, y: str) -> list[str]:
    """Each row's mean point against the WiSE-FT curves of the other groups."""
    lines = [f"| model | curve | {header(x)} | {header(y)} | curve at that ID | gap | verdict |",
             "|---|---|---|---|---|---|---|"]
    for e in panel["frontier"]:
        curve = "—" if e["curve_ood"] is None else f"{100 * e['curve_ood']:.2f}"
        gap = "—" if e["gap"] is None else fmt_pct((e["gap"], e["se"]), signed=True)
        lines.append(f"| {e['row']} | WiSE-FT of {e['curve']} | {100 * e['id']:.2f} | "
                     f"{100 * e['ood']:.2f} | {curve} | {gap} | {e['verdict']} |")
    return lines


def headline_table(panel: dict[str, Any], x: str, y: str) -> list[str]:
    """Each method's gap to the best baseline's WiSE-FT frontier at its mean ID accuracy."""
    lines = [f"| model | {header(x)} | gap to best WiSE-FT frontier | 95% CI | verdict | "
             "best curve | eff. robustness |", "|---|---|---|---|---|---|---|"]
    for e in panel["headline"]:
        gap = "—" if e["gap"] is None else fmt_pct((e["gap"], e["se"]), signed=True)
        ci = fmt_ci(y, e["ci95"]) if e.get("ci95") else "—"
        er = e.get("effective_robustness")
        er = "—" if not er else fmt_pct((er["value"], er["se"]), signed=True)
        curve = f"WiSE-FT of {e['curve']}" if e["curve"] else "—"
        lines.append(f"| {e['row']} | {100 * e['id']:.2f} | {gap} | {ci} | {e['verdict']} | "
                     f"{curve} | {er} |")
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
             f"{', '.join(doc['ood']) or '—'}"
             + (f"; retention {', '.join(doc['retain'])}" if doc.get("retain") else "")
             + f"; grouped by {by}. Accuracies in %, ECE as a "
             "fraction; mean ± SE over runs [95% CI, t with n − 1 degrees of freedom] "
             "(docs/compare.md: the SE of accuracies counts the shared test images); paired "
             "differences by seed, **within noise** when |mean| < 2 SE.", ""]
    for panel in doc["panels"]:
        lines += [f"### {panel['pretrained']}", ""]
        if panel.get("headline"):
            lines += ["Headline: each method against the best baseline's WiSE-FT frontier at "
                      "its ID accuracy (above / below beyond 2 SE):", "",
                      *headline_table(panel, *doc["keys"][:2]), ""]
        lines += [
                  *main_table(panel, doc["id"], doc["ood"], doc["primary"], keys, True,
                              doc.get("retain", ())), "",
                  _fit_line(panel), ""]
        if panel["paired"]:
            lines += [f"Paired differences against {doc['baseline']}:", "",
                      *paired_table(panel, doc["keys"]), ""]
        if panel["frontier"]:
            lines += ["Against the WiSE-FT frontier at matched ID:", "",
                      *frontier_table(panel, *doc["keys"][:2]), ""]
    if doc.get("paired_pooled"):
        lines += [f"### Pooled over the {len(doc['panels'])} pretrained models", "",
                  f"Paired differences against {doc['baseline']}, paired by (pretrained model, "
                  "seed):", "", *paired_table({"paired": doc["paired_pooled"]}, doc["keys"]), ""]
    lines += [f"- Note: {note}" for note in doc["notes"]]
    return "\n".join(lines).rstrip() + "\n"
