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
    heads = [part for k in keys for part in (f"Δ {header(k)}", "")]
    lines = ["| " + " | ".join([first, "reference", *heads, "pairs"]) + " |",
             "|---" * (3 + 2 * len(keys)) + "|"]
    for e in panel["paired"]:
        cells = []
        for key in keys:
            cells += [fmt_diff(e[key]), e[key]["verdict"]]
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
             + f"; grouped by {by}. Values in %, mean ± SE over runs "
             "(SE = sqrt(var between runs / n + mean binomial variance / n) for accuracies); "
             "paired differences by seed, **within noise** when |mean| < 2 SE.", ""]
    for panel in doc["panels"]:
        lines += [f"### {panel['pretrained']}", "",
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


# --------------------------------------------------------------------------- the robustness block

BEGIN, END = "<!-- robustness:begin -->", "<!-- robustness:end -->"
INTERPRETATION = ("\n### Robustness: interpretation (hand-written)\n\n"
                  "_Add the reading of the generated section above here. benchmarks/robustness.py "
                  "rewrites only the text between the robustness markers._\n")
# The summaries of the benchmark's tables (classification).
ROBUSTNESS_KEYS = ("id_accuracy", "avg_ood_accuracy", "avg_ood_ece")
TABLE_KEYS = ("avg_ood_accuracy", "avg_ood_ece", "avg_ood_nll")


def insert_block(text: str, block: str) -> str:
    """``text`` with the robustness block replaced, or appended (followed by a place for a
    hand-written interpretation) when the markers are absent."""
    from tracer_cli.errors import UsageError

    begin, end = text.find(BEGIN), text.find(END)
    if begin != -1 and end > begin:
        return text[:begin] + block + text[end + len(END):]
    if begin != -1 or end != -1:
        raise UsageError(f"the report has an unmatched {BEGIN} / {END} pair; fix it by hand")
    sep = "" if not text else "\n" if text.endswith("\n\n") else "\n\n" if not text.endswith(
        "\n") else "\n"
    return text + sep + block + "\n" + INTERPRETATION


def _header(res: dict[str, Any]) -> list[str]:
    m, ex = res["machine"], res["execution"]
    return [
        "## Robustness: TRACER against its baselines", "",
        f"Generated by `{res['command']}` on {res['date']}. Machine: {m['cpu_count']} CPU cores, "
        f"torch {m['torch']}, {m['jobs']} run(s) in parallel with {m['threads_per_job']} "
        f"thread(s) each; the benchmark took {ex['wall_s'] / 60:.1f} min "
        f"({ex['finetunes_run']} finetune(s) and {ex['evals_run']} "
        f"evaluation(s) run, {ex['finetunes_cached']} finetune(s) reused from "
        f"`{res['setting']['out']}`). Everything between the robustness markers is rewritten by "
        f"the script; every number is in `{res['setting']['out']}/results.json`.", ""]


def _setting(res: dict[str, Any]) -> list[str]:
    st = res["setting"]
    recipes = ", ".join(f"`{r['path']}` ({r['name']}, {r['steps']} steps)" for r in st["recipes"])
    sets = ", ".join(f"{d} ({'ID' if d in st['id'] else 'OOD'}, n = {n:,})"
                     for d, n in st["eval_sizes"].items())
    lines = ["### Setting", "",
             f"- Recipes: {recipes}.",
             f"- Finetuning seeds {st['seeds']}; pretraining seeds of the tiny CLIP "
             f"{st['pretrain_seeds']}; every method runs at every (pretraining seed, seed) pair.",
             f"- Evaluation sets: {sets}. Binomial SE of one accuracy: "
             f"{st['binomial_se_at_half']:.2f}% at 50%, {st['binomial_se_at_id']:.2f}% at the mean "
             "ID accuracy.",
             "- Errors: mean ± SE over runs, SE = sqrt(var between runs / n + mean binomial "
             "variance / n) (for an average over K sets the binomial variance is "
             "Σ p(1−p)/n_k / K²); ECE, NLL and wall time use the spread over runs only. Results "
             "are reported per pretrained model (one table per pretraining seed): runs from "
             "different pretrained weights are never pooled.",
             "- Paired differences: per seed within a pretrained model, mean ± SE "
             "(std / sqrt(pairs)) of the paired differences; **within noise** when |mean| < 2 SE."]
    lines += [f"- Note: {note}" for note in res["notes"]]
    return lines + [""]


def _choice(res: dict[str, Any]) -> list[str]:
    sweep, choice = res["sweep"], res.get("choice")
    if not sweep or not choice:
        return ["### Hyperparameters", "", "No validation sweep was run (no sweep recipe, or "
                "no β / λ_sd values): the tuned recipe ran with its own values.", ""]
    own, st = res["sweep_recipe_values"], res["setting"]
    lines = ["### Hyperparameter choice", "",
             f"Validation domain: {', '.join(st['val'])} (not a reported test "
             f"domain). Sweep recipe `{st['sweep_recipe']}`, pretraining seed "
             f"{st['pretrain_seeds'][0]}, seeds {st['sweep_seeds']}. "
             "Rule: β is chosen on the β sweep (λ_sd at the recipe's value) and λ_sd on the "
             "λ_sd sweep (β at the recipe's value), each as the value with the highest mean "
             "validation accuracy; a tie goes to the recipe's own value. The ID and OOD columns "
             "are the test domains, shown for the plots; they did not enter the choice.", ""]
    for axis, symbol in (("beta", "β"), ("lambda_sd", "λ_sd")):
        rows = sweep.get(axis)
        if not rows:
            continue
        lines += [f"| {symbol} | validation acc | ID acc | avg OOD acc | runs |",
                  "|---|---|---|---|---|"]
        for r in rows:
            mark = " **(chosen)**" if math.isclose(r["value"], choice[axis]) else ""
            mark += " (recipe)" if math.isclose(r["value"], own[axis]) else ""
            lines.append(f"| {r['value']:g}{mark} | {fmt_pct(r['val_accuracy'])} | "
                         f"{fmt_pct(r['id_accuracy'])} | {fmt_pct(r['avg_ood_accuracy'])} | "
                         f"{len(r['runs'])} |")
        lines.append("")
    lines += [f"Chosen: β = {choice['beta']:g} (recipe {own['beta']:g}), λ_sd = "
              f"{choice['lambda_sd']:g} (recipe {own['lambda_sd']:g}).", ""]
    return lines


def _per_panel(res: dict[str, Any], title: str, intro: Sequence[str], table: Any,
               empty: str | None = None) -> list[str]:
    """A section with one table per pretrained model (``table(panel)`` lines, [] to skip)."""
    parts = [(p["pretrained"], table(p)) for p in res["panels"]]
    parts = [(name, lines) for name, lines in parts if lines]
    if not parts:
        return [] if empty is None else [f"### {title}", "", empty, ""]
    out = [f"### {title}", "", *intro]
    for name, lines in parts:
        out += [f"#### {name}", "", *lines, ""]
    return out


def _main_table(res: dict[str, Any]) -> list[str]:
    st = res["setting"]
    return _per_panel(res, "Main table", ["Accuracy and ECE in %, mean ± SE over runs.", ""],
                      lambda p: main_table(p, st["id"], st["ood"], "accuracy", TABLE_KEYS,
                                           False))


def _paired(res: dict[str, Any]) -> list[str]:
    intro = ["Method − reference in % points, paired by seed.", ""]
    out = _per_panel(res, "Paired differences", intro, lambda p: paired_table(
        p, ROBUSTNESS_KEYS, "method") if p["paired"] else [])
    if res.get("paired_pooled"):
        out += [f"#### Pooled over the {len(res['panels'])} pretrained models", "",
                "Paired by (pretrained model, seed): each difference is taken within one "
                "pretrained model, and the SE holds the spread over pretrained models.", "",
                *paired_table({"paired": res["paired_pooled"]}, ROBUSTNESS_KEYS, "method"), ""]
    return out


def _frontier(res: dict[str, Any]) -> list[str]:
    intro = ["Each model's mean (ID, avg OOD) point against the WiSE-FT curve "
             "(1 − α)·θ₀ + α·θ_ft of a baseline, averaged over its runs and interpolated at the "
             "model's mean ID accuracy; above / below when the gap exceeds 2 SE of the model's "
             "avg OOD accuracy.", ""]
    return _per_panel(res, "ID vs OOD against WiSE-FT", intro, lambda p: frontier_table(
        p, *ROBUSTNESS_KEYS[:2]) if p["frontier"] else [], "No WiSE-FT curve was measured.")


def _kl(res: dict[str, Any]) -> list[str]:
    kl = res["kl"]
    if not kl:
        return []
    info = res["kl_setting"]
    lines = ["### Teacher-student KL: WMA vs EMA", "",
             f"`{info['recipe']}` at its own β and λ_sd (WMA teacher) against the same recipe "
             "with an EMA teacher (`teacher.kind=ema`, "
             f"`teacher.update_every={info['update_every']}` = max(1, {info['steps']} // "
             f"{info['updates_per_run']}): as many teacher updates per run as CaRot's 500 of 25k "
             f"steps), pretraining seed {info['pretrain_seed']}, seed {info['seed']}, one run "
             "each.", "",
             "| run | KL image→text, mean over the last quarter | ‖θ−φ‖/‖θ−θ₀‖ at the end |",
             "|---|---|---|"]
    for label, c in kl.items():
        tail = "—" if c["kl_i2t_last_quarter"] is None else f"{c['kl_i2t_last_quarter']:.3g}"
        ratio = "—" if c["param_ratio_end"] is None else f"{c['param_ratio_end']:.3g}"
        lines.append(f"| {label} (`{c['run']}`) | {tail} | {ratio} |")
    return lines + [""]


def _figures(res: dict[str, Any], report: Any) -> list[str]:
    import os
    from pathlib import Path

    titles = {"id_vs_ood": "ID vs OOD with the WiSE-FT curves (one panel per pretrained model)",
              "beta": "β sweep", "lambda_sd": "λ_sd sweep",
              "kl": "teacher-student KL, EMA vs WMA"}
    lines = ["### Figures", ""]
    for key, path in res["figures"].items():
        rel = Path(os.path.relpath(Path(path).resolve(), Path(report).resolve().parent))
        lines.append(f"- {titles[key]}: [{rel.as_posix()}]({rel.as_posix()})")
    return lines + [""]


def _choice_facts(res: dict[str, Any]) -> list[str]:
    out, choice, own = [], res.get("choice"), res.get("sweep_recipe_values")
    if not choice or not res["sweep"]:
        return out
    for axis, symbol in (("beta", "β"), ("lambda_sd", "λ_sd")):
        d, values = choice["vs_own"].get(axis), [r["value"] for r in res["sweep"].get(axis, [])]
        if not values:
            continue
        tried = ", ".join(f"{v:g}" for v in values)
        if math.isclose(choice[axis], own[axis]):
            out.append(f"Validation kept the recipe's {symbol} = {own[axis]:g} (highest mean "
                       f"validation accuracy among {tried}).")
        elif d and d["n"]:
            out.append(f"Validation chose {symbol} = {choice[axis]:g} over the recipe's "
                       f"{own[axis]:g} (tried {tried}): validation accuracy {fmt_diff(d)} "
                       f"({d['verdict']}).")
        else:
            out.append(f"Validation chose {symbol} = {choice[axis]:g} (tried {tried}; the "
                       f"recipe's {own[axis]:g} was not among them).")
    return out


def _ranking_facts(panel: dict[str, Any]) -> list[str]:
    rows = {r["label"]: r for r in panel["rows"]}
    students = [r["label"] for r in panel["rows"] if r["model"] == "student"
                and r.get("avg_ood_accuracy")]
    out = []
    if students:
        ranked = sorted(students, key=lambda s: -rows[s]["avg_ood_accuracy"][0])
        eces = [s for s in students if rows[s].get("avg_ood_ece")]
        line = (f"Highest mean avg OOD accuracy: {ranked[0]} "
                f"({fmt_pct(rows[ranked[0]]['avg_ood_accuracy'])})")
        if len(ranked) > 1:
            top, nxt = (rows[r]["avg_ood_accuracy"] for r in ranked[:2])
            line += f"; next {ranked[1]}, difference {fmt_vs(top, nxt)} unpaired"
        if eces:
            low = min(eces, key=lambda s: rows[s]["avg_ood_ece"][0])
            line += f". Lowest mean avg OOD ECE: {low} ({fmt_pct(rows[low]['avg_ood_ece'])})"
        out.append(line + ".")
    zero = next((r for r in panel["rows"] if r["method"] == "zeroshot"), None)
    if zero and zero.get("avg_ood_accuracy"):
        parts = [f"{s} {fmt_vs(rows[s]['avg_ood_accuracy'], zero['avg_ood_accuracy'])}"
                 for s in students if rows[s]["method"] != "zeroshot"]
        if parts:
            out.append("Avg OOD accuracy against zero-shot (unpaired): " + "; ".join(parts) + ".")
    return out


def _panel_facts(panel: dict[str, Any]) -> list[str]:
    """Statements read off one pretrained model's numbers."""
    out = _ranking_facts(panel)
    for e in panel["paired"]:
        ood, ida, ece = e["avg_ood_accuracy"], e["id_accuracy"], e["avg_ood_ece"]
        out.append(f"{e['group']} vs {e['reference']}: avg OOD {fmt_diff(ood)} "
                   f"({ood['verdict']}), ID {fmt_diff(ida)} ({ida['verdict']}), avg OOD ECE "
                   f"{fmt_diff(ece)} ({ece['verdict']}); {ood['n']} pair(s).")
    for e in panel["frontier"]:
        if e["gap"] is None:
            out.append(f"{e['row']} is outside the ID range of the WiSE-FT curve of {e['curve']}.")
        else:
            out.append(f"{e['row']} against the WiSE-FT curve of {e['curve']} at matched ID "
                       f"accuracy: {fmt_pct((e['gap'], e['se']), signed=True)} ({e['verdict']}).")
    return [f"{panel['pretrained']}: {fact}" for fact in out]


def robustness_facts(res: dict[str, Any]) -> list[str]:
    """Statements read off the numbers; no hand-written claims."""
    out = _choice_facts(res)
    for panel in res["panels"]:
        out += _panel_facts(panel)
    kl = res["kl"]
    if kl:
        parts = [f"{k} {v['kl_i2t_last_quarter']:.3g}" for k, v in kl.items()
                 if v["kl_i2t_last_quarter"] is not None]
        if parts:
            out.append("Teacher-student KL (image→text), mean over the last quarter of training: "
                       + ", ".join(parts) + " (one run each).")
    return out


def robustness_block(res: dict[str, Any], report: Any) -> str:
    """The block between the robustness markers, from the benchmark's results."""
    lines = [BEGIN, *_header(res), *_setting(res), *_choice(res), *_main_table(res),
             *_paired(res), *_frontier(res), *_kl(res), *_figures(res, report),
             "### What this shows (generated from the numbers above)", ""]
    lines += [f"- {fact}" for fact in robustness_facts(res)] + ["", END]
    return "\n".join(lines)


def write_robustness_report(res: dict[str, Any], report: Any) -> None:
    """Replace (or append) the robustness block of the ``report`` file, atomically."""
    from pathlib import Path

    from tracer_cli.io import atomic_write_text

    path = Path(report)
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    atomic_write_text(path, insert_block(text, robustness_block(res, path)))
