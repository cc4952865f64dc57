"""``tracer compare`` as a library: read run directories, group them, and compare the groups.

:func:`compare` takes run directories (or glob patterns), reads each run's ``recipe.lock.toml``,
``summary.json`` and the ``tracer eval`` documents under ``eval/`` that carry WiSE-FT entries
(``tracer eval RUN --wise-alpha ... --output-dir RUN/eval/wise`` writes one), and returns the
document ``tracer compare --json`` prints (its shape is in docs/compare.md). Runs are grouped by
their recipe without its seed (or by the recipe keys given), split into one panel per pretrained
model, and compared with :func:`tracer_cli.analysis.tables.analyse`.
"""

from __future__ import annotations

import difflib
import glob
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from tracer_cli import rundir
from tracer_cli.analysis.tables import analyse, model_numbers, pack_correct, pooled_paired
from tracer_cli.errors import UsageError
from tracer_cli.sdk.task_metrics import RETAIN_KEYS

# The seed is what groups average over; the keys that cannot change training (where a run lives,
# what it logs and evaluates, how often it checkpoints: tracer_cli.recipe.training_free_keys)
# do not split groups either.
NOT_GROUPING = ("run.seed",)
# Which pretrained weights a run starts from: runs that differ here are never pooled.
PRETRAINED_KEYS = ("model.backbone", "model.arch", "model.pretrained", "model.embedded_seed")


@dataclass
class RunData:
    """One run directory's recipe (flattened to dotted keys), summary and WiSE-FT entries."""

    path: Path
    name: str
    tables: dict[str, Any]
    summary: dict[str, Any]
    wise: list[dict[str, Any]] = field(default_factory=list)

    @cached_property
    def trained(self) -> tuple[tuple[str, str], ...]:
        """The recipe keys that can change training, with their values: two runs with the same
        ``trained`` (seed included) are the same measurement."""
        from tracer_cli.recipe import resume_free, training_free_keys

        free = training_free_keys(self.tables)
        return tuple(sorted((k, _value(v)) for k, v in self.recipe.items()
                            if not resume_free(k, free)))

    @cached_property
    def recipe(self) -> dict[str, Any]:
        """The resolved recipe as dotted keys (``train.method``), without the lock table."""
        return flatten(self.tables)

    @property
    def seed(self) -> int:
        return int(self.recipe.get("run.seed", 0))

    @property
    def sets(self) -> tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(task, ID sets, OOD sets, retention sets): what runs must share to be compared."""
        ev = self.summary["eval"]
        return (str(self.recipe.get("task.name", "classification")), tuple(ev["id"]),
                tuple(ev["ood"]), tuple(ev.get("retain", ())))


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and other values are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def expand(patterns: Sequence[str]) -> list[Path]:
    """Run directories named by paths or glob patterns, in the order given, each once. A pattern
    that names no run directory is an error."""
    out: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        runs = [Path(m) for m in matches if rundir.is_run_dir(Path(m))]
        if not runs:
            what = ("matches no run directory" if glob.has_magic(pattern) else
                    "does not exist" if not Path(pattern).exists() else
                    f"is not a tracer run directory (no {rundir.RECIPE_LOCK})")
            raise UsageError(f"'{pattern}' {what}")
        out += [r for r in runs if r not in out]
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"'{path}' cannot be read as JSON: {exc}") from None


def unfinished(path: Path) -> str | None:
    """Why the run at ``path`` has nothing to compare yet (no summary.json, or no evaluation in
    it), or None when it has."""
    summary_path = rundir.summary_path(path)
    if not summary_path.is_file():
        return "has no summary.json (it has not finished)"
    summary = _read_json(summary_path)
    if not isinstance(summary, dict) or not summary.get("eval"):
        return "has no evaluation in summary.json (run.eval = false)"
    return None


def read_run(path: Path, notes: list[str]) -> RunData:
    """A finished run: its lock file, its summary with evaluations, its WiSE-FT entries."""
    tables, _ = rundir.read_recipe_lock(path)
    reason = unfinished(path)
    if reason is not None:
        raise UsageError(f"run '{path}' {reason}; evaluate it or leave it out")
    run = RunData(path, str(path), tables, _read_json(rundir.summary_path(path)))
    run.wise = _wise_entries(run, notes)
    return run


def read_runs(paths: Sequence[Path], notes: list[str]) -> list[RunData]:
    """The finished runs among ``paths``, each measurement once: a run whose recipe (seed
    included, keys that cannot change training left out) repeats an earlier one's is noted and
    dropped, or two copies of one seed would count as two seeds. Nothing finished: exit 2."""
    runs = []
    for path in paths:
        reason = unfinished(path)
        if reason is None:
            runs.append(read_run(path, notes))
        else:
            notes.append(f"run '{path}' {reason}: skipped")
    if not runs:
        raise UsageError(f"no finished run to compare among {len(paths)} run director"
                         f"{'y' if len(paths) == 1 else 'ies'}: " + "; ".join(notes))
    kept: dict[tuple, RunData] = {}
    for run in runs:
        # The same training measured on other sets is no duplicate: check_comparable refuses it.
        first = kept.setdefault((run.trained, run.sets), run)
        if first is not run:
            notes.append(f"runs {first.name} and {run.name} are the same recipe with the same "
                         f"seed {run.seed} (duplicates): counted once, as {first.name}")
    return list(kept.values())


def _wise_entries(run: RunData, notes: list[str]) -> list[dict[str, Any]]:
    """WiSE-FT entries of the student from ``eval/*.json`` and ``eval/*/eval.json``; an α given
    by two documents is taken from the first (in file-name order)."""
    entries: dict[float, dict[str, Any]] = {}
    for path in rundir.eval_files(run.path, nested=True):
        doc = _read_json(path)
        if not isinstance(doc, dict) or not doc.get("wise"):
            continue
        if (doc.get("model") or {}).get("which", "student") != "student":
            notes.append(f"{path}: WiSE-FT of the teacher, not used (curves mix the student)")
            continue
        if (tuple(doc.get("id", ())), tuple(doc.get("ood", ()))) != run.sets[1:3]:
            notes.append(f"{path}: WiSE-FT on other ID/OOD sets than the run's, not used")
            continue
        for entry in doc["wise"]:
            entries.setdefault(float(entry["alpha"]), entry)
    return [entries[a] for a in sorted(entries)]


def pretrained_of(recipe: dict[str, Any]) -> str:
    """A readable name of the run's pretrained weights: backbone, arch, weights, and the
    embedded model's seed when it has one."""
    weights = str(recipe.get("model.pretrained", ""))
    name = f"{recipe.get('model.backbone', '?')}:{recipe.get('model.arch', '?')}:{weights}"
    if weights == "embedded":
        name += f" (embedded_seed {int(recipe.get('model.embedded_seed', 0) or 0)})"
    return name


def _value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _distinguishing(keyed: dict[tuple, dict[str, Any]]) -> list[str]:
    """Few recipe keys whose values tell the groups apart: train.method first when it varies,
    then greedily the key that separates most groups."""
    recipes = list(keyed.values())
    varying = sorted({k for r in recipes for k in r
                      if len({_value(x.get(k)) for x in recipes}) > 1})
    varying.sort(key=lambda k: k != "train.method")
    chosen: list[str] = []
    while varying and len({tuple(_value(r.get(k)) for k in chosen) for r in recipes}) < len(
            recipes):
        best = max(varying, key=lambda k: len({tuple(_value(r.get(c)) for c in [*chosen, k])
                                              for r in recipes}))
        chosen.append(best)
        varying.remove(best)
    return chosen


def group_labels(runs: Sequence[RunData], by: Sequence[str] | None) -> list[str]:
    """Each run's group. ``by``: recipe keys (a single key labels by its value, several by
    ``key=value`` pairs); without it, the recipe without the seed, labelled by the keys that
    tell the groups apart (or by train.method when there is one group)."""
    if by:
        known = {k for r in runs for k in r.recipe}
        for key in by:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise UsageError(f"--by {key}: no run's recipe has this key{hint}")
        if len(by) == 1:
            return [_value(r.recipe.get(by[0], "(unset)")) for r in runs]
        return [", ".join(f"{k}={_value(r.recipe.get(k, '(unset)'))}" for k in by) for r in runs]
    skip = (*NOT_GROUPING, *PRETRAINED_KEYS)
    keys = [tuple((k, v) for k, v in r.trained if k not in skip) for r in runs]
    recipes = {k: dict(k) for k in dict.fromkeys(keys)}
    chosen = _distinguishing(recipes)
    if not chosen:
        return [str(r.recipe.get("train.method", "runs")) for r in runs]
    if chosen == ["train.method"]:
        return [recipes[k]["train.method"] for k in keys]
    return [", ".join(f"{c}={recipes[k].get(c, '(unset)')}" for c in chosen) for k in keys]


def check_comparable(runs: Sequence[RunData]) -> None:
    """Every run must measure the same task on the same ID, OOD and retention sets."""
    by_sets: dict[tuple, list[str]] = {}
    for run in runs:
        by_sets.setdefault(run.sets, []).append(run.name)
    if len(by_sets) > 1:
        parts = [f"{', '.join(names)}: task {task}, ID {', '.join(ids) or '-'}, OOD "
                 f"{', '.join(oods) or '-'}" + (f", retain {', '.join(retain)}" if retain else "")
                 for (task, ids, oods, retain), names in by_sets.items()]
        raise UsageError("runs cannot be compared (different tasks or ID/OOD/retention sets): "
                         + "; ".join(parts))


def task_keys(runs: Sequence[RunData]) -> tuple[str, list[str]]:
    """The task's primary metric and headline summaries, ID and average OOD of the primary
    first (from the task's declared TaskMetrics)."""
    from tracer_cli.sdk.contracts import task_metrics
    from tracer_cli.sdk.host import get_host

    # The task alone, from the lock's [task] table (its keys besides the name are the task's
    # options): comparing runs must not depend on the rest of a recipe still validating.
    table = dict(runs[0].tables.get("task") or {})
    name = str(table.pop("name", "classification"))
    spec = task_metrics(get_host().tasks.get(name).factory(table))
    first = [f"id_{spec.primary}", f"avg_ood_{spec.primary}"]
    return spec.primary, [*first, *(k for k in spec.summary_keys if k not in first)]


def _check_pairs(records: Sequence[dict[str, Any]]) -> None:
    """Paired differences need at most one run per seed in each group of a panel."""
    seen: dict[tuple, str] = {}
    for r in records:
        key = (r["pretrained"], r["group"], r["seed"])
        if key in seen:
            raise UsageError(f"runs {seen[key]} and {r['name']} are in group '{r['group']}' with "
                             f"the same seed {r['seed']}: pairing by seed needs one run per seed "
                             "(group them apart with --by)")
        seen[key] = r["name"]


# The eval tag whose per-example correctness backs each evaluated model of a summary.
_CORRECT_TAGS = {"zeroshot": "zeroshot", "student": "final_student", "teacher": "final_teacher"}


def correctness(run: RunData, model: str) -> dict[str, list[dict[str, Any]]]:
    """``id_accuracy`` / ``avg_ood_accuracy`` -> the model's per-example correctness on each of
    the ID / OOD sets, when the run stored it (``eval/<tag>.correct.npz``) for every set and it
    agrees with the summary's accuracy; {} otherwise (the SE then treats the sets as drawn anew
    for each run)."""
    tag = _CORRECT_TAGS.get(model)
    if model == "student" and run.recipe.get("train.method") == "zeroshot":
        tag = "zeroshot"  # a zero-shot recipe's student is its pretrained model, evaluated once
    stored = rundir.read_correct(run.path, tag) if tag else None
    if not stored:
        return {}
    ev = run.summary["eval"]
    out = {}
    for key, sets in (("id_accuracy", ev["id"]), ("avg_ood_accuracy", ev["ood"])):
        metrics = ev["models"][model]
        vectors = [stored.get(d) for d in sets]
        if sets and all(v is not None and v.size and metrics[d].get("accuracy") is not None
                        and abs(v.mean() - metrics[d]["accuracy"]) < 0.5 / v.size
                        for v, d in zip(vectors, sets)):
            out[key] = [pack_correct(v) for v in vectors]
    return out


def record(run: RunData, group: str) -> dict[str, Any]:
    """The numbers :func:`tracer_cli.analysis.tables.analyse` reads, for one run."""
    pretrained = pretrained_of(run.recipe)
    ev = run.summary["eval"]
    return {"name": run.name, "method": str(run.recipe.get("train.method", "tracer")),
            "group": group, "pretrained": pretrained, "seed": run.seed,
            # A randomly initialised model is its own "pretrained" model at every seed.
            "zeroshot_key": run.seed if run.recipe.get("model.pretrained") == "none" else None,
            "models": {m: model_numbers(ev, m) for m in ev["models"]}, "wise": run.wise,
            "correct": {m: correctness(run, m) for m in ev["models"]},
            "wall_time_s": run.summary.get("wall_time_s"), "steps": run.summary.get("steps")}


def compare(patterns: Sequence[str], by: Sequence[str] | None = None,
            baseline: str | None = None) -> dict[str, Any]:
    """The comparison document of the runs named by ``patterns`` (see docs/compare.md)."""
    notes: list[str] = []
    runs = read_runs(expand(patterns), notes)
    check_comparable(runs)
    labels = group_labels(runs, by)
    groups = list(dict.fromkeys(labels))
    if baseline is not None and baseline not in groups:
        raise UsageError(f"--baseline '{baseline}' is not a group; the groups are: "
                         + ", ".join(f"'{g}'" for g in groups))
    records = [record(run, label) for run, label in zip(runs, labels)]
    if baseline is not None:
        _check_pairs(records)
    primary, keys = task_keys(runs)
    task, ids, oods, retain = runs[0].sets
    keys += list(RETAIN_KEYS) if retain else []  # retention's summaries follow the task's
    return {
        "task": task, "primary": primary, "keys": keys, "id": list(ids), "ood": list(oods),
        "retain": list(retain),
        "by": list(by) if by else None, "baseline": baseline, "groups": groups,
        "runs": [{"name": r["name"], "group": r["group"], "pretrained": r["pretrained"],
                  "seed": r["seed"], "method": r["method"], "steps": r["steps"],
                  "wise_alphas": [e["alpha"] for e in r["wise"]]} for r in records],
        "panels": analyse(records, groups, [baseline] if baseline else [], keys),
        "paired_pooled": pooled_paired(records, groups, [baseline] if baseline else [], keys),
        "notes": notes, "plot": None}
