"""From per-run numbers to per-pretrained-model panels: rows, mean ± SE, paired differences,
WiSE-FT curves, the frontier gap and effective robustness.

A *record* is one run's numbers: ``{"name", "method", "group", "pretrained", "seed",
"zeroshot_key", "models": {MODEL: model_numbers(...)}, "wise": [WiSE entries], "wall_time_s"}``,
optionally ``"correct": {MODEL: {"id_accuracy" | "avg_ood_accuracy": [packed, ...]}}``, the
model's per-example correctness on each ID / OOD set (:func:`pack_correct`: records stay JSON).
``pretrained`` names the pretrained weights (the panel; runs from different weights are never
pooled); ``zeroshot_key`` tells apart the zero-shot models within a panel (the seed for randomly
initialised models, else nothing). ``tracer compare`` builds records from run directories and
``benchmarks/robustness.py`` from its own runs; both get their panels from :func:`analyse`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import numpy as np

from tracer_cli.analysis.stats import (
    average_binomial_var, binomial_var, ci95, curve_at, effective_robustness, frontier_gap,
    logit_fit, mean_se, paired_difference, shared_images_se)
from tracer_cli.sdk.task_metrics import RETAIN_KEYS

PRETRAINED_ROW = "zero-shot (pretrained)"
# Per-dataset counts: reported as they are, never averaged into a summary.
COUNTS = ("n", "n_images", "n_texts")


def model_numbers(ev: dict[str, Any], model: str) -> dict[str, Any] | None:
    """One model's numbers in a summary's ``eval`` block: per dataset its metrics, for every
    metric ``id_<m>`` / ``avg_ood_<m>`` (means over the ID / OOD sets, the summary's own value
    when it has one), with the binomial variance of the accuracy means in ``binom_var``, and the
    summary's retention keys (``retain_accuracy``, ``retain_change``) when it has retention
    sets."""
    metrics = ev["models"].get(model)
    if metrics is None:
        return None
    ids, oods, retain = list(ev["id"]), list(ev["ood"]), list(ev.get("retain", ()))
    datasets = {d: {k: v for k, v in metrics[d].items() if k != "accuracy_se"}
                for d in ids + oods + retain}
    names = [k for k, v in datasets[(ids + oods)[0]].items()
             if k not in COUNTS and isinstance(v, (int, float))] if ids + oods else []
    out: dict[str, Any] = {"datasets": datasets, "binom_var": {}}
    for prefix, sets in (("id", ids), ("avg_ood", oods)):
        for m in names:
            key = f"{prefix}_{m}"
            values = [datasets[d][m] for d in sets if datasets[d].get(m) is not None]
            out[key] = metrics.get(key, float(np.mean(values))) if values else None
            if m == "accuracy" and values and all("n" in datasets[d] for d in sets):
                out["binom_var"][key] = average_binomial_var(
                    values, [datasets[d]["n"] for d in sets])
    if retain:
        out.update({k: metrics.get(k) for k in RETAIN_KEYS})
        out["binom_var"]["retain_accuracy"] = average_binomial_var(
            [datasets[d]["accuracy"] for d in retain], [datasets[d]["n"] for d in retain])
    return out


def pair(values: tuple[float, float]) -> list[float]:
    return [values[0], values[1]]


def spread(values: Sequence[float]) -> list[float | None]:
    """Mean ± SE of a metric without a binomial term; one run has no SE (None)."""
    mean, se = mean_se(values)
    return [mean, se if len(values) > 1 else None]


def _dataset_cell(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    cell: dict[str, Any] = {}
    for m, value in rows[0].items():
        if m in COUNTS:
            cell[m] = value
            continue
        values = [x[m] for x in rows if x.get(m) is not None]
        if m == "accuracy" and all("n" in x for x in rows):
            cell[m] = pair(mean_se(values, [binomial_var(x[m], x["n"]) for x in rows]))
        else:
            cell[m] = spread(values) if values else None
    return cell


def aggregate(records: Sequence[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """Mean ± SE over runs of one model's numbers (accuracy with the binomial term)."""
    entries = [(r, r["models"].get(model)) for r in records]
    entries = [(r, e) for r, e in entries if e]
    if not entries:
        return None
    first = entries[0][1]
    out: dict[str, Any] = {"n_runs": len(entries), "datasets": {
        d: _dataset_cell([e["datasets"][d] for _, e in entries]) for d in first["datasets"]}}
    out["ci95"], out["shared_images"] = {}, []
    for key in [k for k in first if k.startswith(("id_", "avg_ood_", "retain_"))]:
        values = [e[key] for _, e in entries if e.get(key) is not None]
        binom = [e["binom_var"][key] for _, e in entries if key in e["binom_var"]]
        if not values:
            out[key] = None
        elif len(binom) == len(values):
            out[key] = pair(mean_se(values, binom))
            shared = _shared_images_se([r for r, _ in entries], model, key)
            if shared is not None:
                out[key][1] = shared
                out["shared_images"].append(key)
        else:
            out[key] = spread(values)
        if out[key] is not None:
            out["ci95"][key] = ci95(*out[key], len(values))
    walls = [r["wall_time_s"] for r, _ in entries if r.get("wall_time_s") is not None]
    out["wall_time_s"] = spread(walls) if walls and model != "zeroshot" else None
    return out


def pack_correct(vector: Any) -> dict[str, Any]:
    """A 0/1 correctness vector as ``{"n", "bits"}``: bit-packed, base64 (n/6 characters)."""
    import base64

    v = np.asarray(vector, dtype=bool)
    return {"n": int(v.size), "bits": base64.b64encode(np.packbits(v).tobytes()).decode()}


def unpack_correct(packed: dict[str, Any]) -> np.ndarray:
    """The boolean vector :func:`pack_correct` packed."""
    import base64

    bits = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(bits, count=packed["n"]).astype(bool)


def _shared_images_se(records: Sequence[dict[str, Any]], model: str, key: str) -> float | None:
    """The SE (:func:`~tracer_cli.analysis.stats.shared_images_se`) of the mean of ``key`` over
    runs evaluated on the same images, when every run stored its per-example correctness for it
    on equally long sets; else None."""
    packed = [(r.get("correct") or {}).get(model, {}).get(key) for r in records]
    if not packed or any(p is None for p in packed):
        return None
    if len({tuple(x["n"] for x in p) for p in packed}) != 1:
        return None
    return shared_images_se([[unpack_correct(x) for x in p] for p in packed])


@dataclass
class Row:
    """A line of a panel's table: one model (a group's student, its teacher, or the pretrained
    model) over the runs in ``records``."""

    label: str
    group: str | None
    model: str
    records: list[dict[str, Any]]

    def values(self, key: str) -> dict[Hashable, float]:
        """``key`` per run, by seed (what paired differences pair on)."""
        return {r["seed"]: r["models"][self.model][key] for r in self.records
                if r["models"].get(self.model) and r["models"][self.model].get(key) is not None}


def table_rows(records: Sequence[dict[str, Any]], groups: Sequence[str]) -> list[Row]:
    """The pretrained model (one run per zero-shot model; left out when a group's runs are
    zero-shot recipes, which are that model already), then each group's student and, when it has
    one, its teacher."""
    rows = []
    if not any(r["method"] == "zeroshot" for r in records):
        first: dict[Hashable, dict[str, Any]] = {}
        for r in records:
            if r["models"].get("zeroshot"):
                first.setdefault(r["zeroshot_key"], r)
        if first:
            rows.append(Row(PRETRAINED_ROW, None, "zeroshot", list(first.values())))
    for group in groups:
        mine = [r for r in records if r["group"] == group]
        if not mine:
            continue
        rows.append(Row(group, group, "student", mine))
        if any(r["models"].get("teacher") for r in mine):
            rows.append(Row(f"teacher of {group}", group, "teacher", mine))
    return rows


def paired_table(rows: Sequence[Row], references: Sequence[str], keys: Sequence[str]
                 ) -> list[dict[str, Any]]:
    """Each group's student against each reference group's student, paired by seed."""
    students = {r.group: r for r in rows if r.model == "student"}
    out, seen = [], set()
    for ref in references:
        if ref not in students:
            continue
        for row in rows:
            if row.model != "student" or row.group == ref or (ref, row.group) in seen:
                continue
            seen.add((row.group, ref))
            entry: dict[str, Any] = {"group": row.label, "reference": ref}
            for key in keys:
                entry[key] = paired_difference(row.values(key), students[ref].values(key))
            out.append(entry)
    return out


def pooled_paired(records: Sequence[dict[str, Any]], groups: Sequence[str],
                  references: Sequence[str], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Each group's student against each reference's, paired by (pretrained model, seed) over
    every pretrained model; [] with fewer than two pretrained models. A difference is only ever
    taken within one pretrained model, so pooling the pairs is sound, and their spread includes
    the spread over pretrained models (what a newcomer's fresh pretraining adds)."""
    if len({r["pretrained"] for r in records}) < 2:
        return []
    rows = []
    for group in groups:
        mine = [{**r, "seed": (r["pretrained"], r["seed"])} for r in records
                if r["group"] == group]
        if mine:
            rows.append(Row(group, group, "student", mine))
    return paired_table(rows, references, keys)


def wise_endpoints(asked: Sequence[float], zero: dict[str, Any] | None,
                   student: dict[str, Any] | None, keys: Sequence[str]) -> list[dict[str, Any]]:
    """α = 0 (the pretrained model's numbers ``zero``) and α = 1 (the run's own ``student``)
    for a WiSE-FT evaluation whose α list leaves them out, so neither is evaluated twice."""
    out = []
    done = {float(a) for a in asked}
    for alpha, numbers in ((0.0, zero), (1.0, student)):
        if alpha not in done and numbers:
            out.append({"alpha": alpha, **{k: numbers.get(k) for k in keys}})
    return out


def wise_curve(runs: Sequence[Sequence[dict[str, Any]]], keys: Sequence[str]
               ) -> list[dict[str, Any]]:
    """The WiSE-FT curve averaged over runs (each a list of entries): per α, mean ± SE."""
    by_alpha: dict[float, list[dict[str, Any]]] = {}
    for entries in runs:
        for entry in entries:
            by_alpha.setdefault(float(entry["alpha"]), []).append(entry)
    points = []
    for alpha in sorted(by_alpha):
        entries = by_alpha[alpha]
        point: dict[str, Any] = {"alpha": alpha, "n_runs": len(entries)}
        for key in keys:
            values = [e[key] for e in entries if e.get(key) is not None]
            point[key] = spread(values) if values else None
        points.append(point)
    return points


def frontier_table(rows: Sequence[dict[str, Any]], curves: dict[str, list[dict[str, Any]]],
                   x: str, y: str) -> list[dict[str, Any]]:
    """Every trained row's mean point against every WiSE-FT curve but its own group's."""
    out = []
    for curve_group, points in curves.items():
        curve = [(p[x][0], p[y][0]) for p in points if p.get(x) and p.get(y)]
        for row in rows:
            if (row["model"] == "zeroshot" or row["method"] == "zeroshot"
                    or row["group"] == curve_group or not row.get(x) or not row.get(y)):
                continue
            (id_m, _), (ood_m, ood_se) = row[x], row[y]
            out.append({"row": row["label"], "curve": curve_group, "id": id_m, "ood": ood_m,
                        **frontier_gap(curve, id_m, ood_m, ood_se)})
    return out


def _curve_at(points: Sequence[dict[str, Any]], x: str, y: str, id_acc: float
              ) -> tuple[list[tuple[float, float]], float]:
    """A curve's (ID, OOD) means in α order and the SE of its OOD mean at ``id_acc``, on the
    branch :func:`stats.curve_at` reads (0 when the curve does not reach that ID)."""
    pts = [(p[x][0], p[y][0], p[y][1] or 0.0) for p in points if p.get(x) and p.get(y)]
    at = curve_at(pts, id_acc)
    return [(i, o) for i, o, _ in pts], (at[1] if at else 0.0)


def headline_table(rows: Sequence[dict[str, Any]], curves: dict[str, list[dict[str, Any]]],
                   baselines: Sequence[str], x: str, y: str) -> list[dict[str, Any]]:
    """Each trained student's gap to the best baseline's WiSE-FT frontier at its mean ID
    accuracy: among the curves of ``baselines`` (every group with a curve when empty) but its
    own group's, the one highest at that ID. SE = sqrt(SE of the row's OOD mean² + SE of the
    curve's OOD mean there²); above / below beyond 2 SE, else within noise."""
    pool = {g: c for g, c in curves.items() if not baselines or g in baselines}
    out = []
    for row in rows:
        if (row["model"] != "student" or row["method"] == "zeroshot" or not row.get(x)
                or not row.get(y)):
            continue
        (id_m, _), (ood_m, ood_se) = row[x], row[y]
        best = None
        for group, points in pool.items():
            if group == row["group"]:
                continue
            curve, curve_se = _curve_at(points, x, y, id_m)
            at = frontier_gap(curve, id_m, ood_m, math.hypot(ood_se or 0.0, curve_se))
            if at["gap"] is not None and (best is None or at["curve_ood"] > best[1]["curve_ood"]):
                best = (group, at)
        if best is None and not any(g != row["group"] for g in pool):
            continue
        group, at = best if best else (None, frontier_gap([], id_m, ood_m, ood_se))
        er = row.get("effective_robustness")
        out.append({"row": row["label"], "curve": group, "id": id_m, "ood": ood_m, **at,
                    "ci95": ci95(at["gap"], at["se"], row["n_runs"])
                    if at["gap"] is not None else None, "effective_robustness": er})
    return out


def _zero_numbers(record: dict[str, Any], panel: Sequence[dict[str, Any]]
                  ) -> dict[str, Any] | None:
    """The pretrained model of a run: a zero-shot recipe's run on the same weights, else the
    run's own zero-shot evaluation."""
    twin = next((r["models"].get("student") for r in panel if r["method"] == "zeroshot"
                 and r["zeroshot_key"] == record["zeroshot_key"]), None)
    return twin or record["models"].get("zeroshot")


def group_curve(panel: Sequence[dict[str, Any]], group: str, keys: Sequence[str]
                ) -> list[dict[str, Any]]:
    """A group's WiSE-FT curve over its runs that carry WiSE-FT evaluations, with α = 0 and 1
    taken from the runs themselves when they were not evaluated."""
    runs = []
    for r in panel:
        if r["group"] != group or not r.get("wise"):
            continue
        ends = wise_endpoints([e["alpha"] for e in r["wise"]], _zero_numbers(r, panel),
                              r["models"].get("student"), keys)
        runs.append([*r["wise"], *ends])
    return wise_curve(runs, keys)


def _measured(row: Row) -> list[dict[str, Any]]:
    """The runs that are separate measurements. A group of zero-shot recipe runs evaluates the
    same pretrained model whatever the seed (nothing is trained): it counts once per zero-shot
    model, as the pretrained-model row does, or its binomial error would shrink by the square
    root of the number of seeds. Pairing by seed still sees every run (:meth:`Row.values`)."""
    if row.model != "student" or any(r["method"] != "zeroshot" for r in row.records):
        return row.records
    first: dict[Hashable, dict[str, Any]] = {}
    for r in row.records:
        first.setdefault(r["zeroshot_key"], r)
    return list(first.values())


def _row_doc(row: Row) -> dict[str, Any] | None:
    measured = _measured(row)
    agg = aggregate(measured, row.model)
    if agg is None:
        return None
    method = "zeroshot" if row.model == "zeroshot" else row.records[0]["method"]
    return {"label": row.label, "group": row.group, "model": row.model, "method": method,
            "runs": [r["name"] for r in measured if r["models"].get(row.model)], **agg}


def _fit_points(rows: Sequence[dict[str, Any]], curves: dict[str, list[dict[str, Any]]],
                x: str, y: str) -> list[tuple[float, float]]:
    """The zero-shot point(s) and every WiSE-FT point (α = 0 of a curve only when no zero-shot
    row stands for it)."""
    zero = [(r[x][0], r[y][0]) for r in rows if r["method"] == "zeroshot"
            and r.get(x) and r.get(y)]
    points = list(zero)
    for curve in curves.values():
        points += [(p[x][0], p[y][0]) for p in curve if p.get(x) and p.get(y)
                   and (p["alpha"] > 0 or not zero)]
    return points


def analyse(records: Sequence[dict[str, Any]], groups: Sequence[str],
            references: Sequence[str], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One panel per pretrained model: its rows (mean ± SE of every metric, effective
    robustness), paired differences against ``references``, WiSE-FT curves, the frontier gap of
    each row and the logit fit. ``keys`` are the headline summaries, ID then average OOD of the
    primary metric first (``id_accuracy``, ``avg_ood_accuracy``, ...)."""
    x, y = keys[0], keys[1]
    panels = []
    for name in dict.fromkeys(r["pretrained"] for r in records):
        mine = [r for r in records if r["pretrained"] == name]
        rows = table_rows(mine, groups)
        docs = [d for d in (_row_doc(row) for row in rows) if d]
        curves = {g: group_curve(mine, g, keys) for g in groups
                  if any(r["group"] == g and r.get("wise") for r in mine)}
        fit = logit_fit(_fit_points(docs, curves, x, y))
        for doc in docs:
            er = (effective_robustness(fit, doc[x][0], doc[y][0])
                  if doc.get(x) and doc.get(y) else None)
            doc["effective_robustness"] = (None if er is None else
                                           {"value": er, "se": doc[y][1]})
        panels.append({"pretrained": name, "rows": docs,
                       "headline": headline_table(docs, curves, references, x, y),
                       "paired": paired_table(rows, references, keys), "wise": curves,
                       "frontier": frontier_table(docs, curves, x, y), "fit": fit})
    return panels
