"""``tracer eval`` as a library: which model, on which datasets, with which metrics and gates.

A request names the model (a run directory, a tracer checkpoint, a ``--model`` spec, or a recipe's
own pretrained model), optionally replaces the recipe's ID / OOD datasets by registry names, and
optionally asks for WiSE-FT mixes θ = (1 − α)·θ₀ + α·θ_ft. :func:`prepare` turns it into an
:class:`EvalPlan` (every check that needs no weights or data happens here, so typos fail in
milliseconds); :func:`run_plan` evaluates it into an :class:`EvalReport`, whose ``document`` is the
``--json`` output; :func:`write_outputs` stores ``eval.json``, plots and predictions;
:func:`check_gates` enforces ``--fail-under`` / ``--fail-over``.

The document (``datasets`` and the averages describe the reported model: the one model, or for
WiSE-FT the entry with α = 1, else the largest α asked for), for the ``classification`` task::

    {"datasets": {NAME: {"accuracy", "top5", "ece", "nll", "brier", "macro_f1",
                         "macro_f1_wilds", "n", "accuracy_se"}},
     "avg_ood_accuracy", "avg_ood_ece", "id_accuracy",   # null without OOD / ID sets
     "id": [NAME, ...], "ood": [NAME, ...],
     "retain": [NAME, ...], "retain_before": {NAME: {metrics of θ₀}},
     "retain_accuracy", "retain_change",                 # only with retention sets
     "model": {"source", "path", "spec", "checkpoint", "step", "which", "backbone", "arch",
               "pretrained", "wise_alpha"[, "head": true]},
     "wise": [{"alpha", "datasets", "avg_ood_accuracy", "avg_ood_ece", "id_accuracy"[,
               "retain_accuracy", "retain_change"]}, ...],
     "gates": [{"metric", "flag", "threshold", "value", "passed"}, ...],
     "runtime": {"device", "precision", "wall_time_s"}}

Other tasks fill ``datasets`` with their own metrics and the averages with their own keys, from
the task's :class:`~tracer_cli.sdk.contracts.TaskMetrics`: ``avg_ood_<m>`` for each averaged metric,
then ``id_<m>`` (the same keys in every ``wise`` entry). ``retrieval``: per dataset ``i2t_r1``,
``i2t_r5``, ``i2t_r10``, ``t2i_r1``, ``t2i_r5``, ``t2i_r10``, ``mean_recall``, ``n_images``,
``n_texts``; averages ``avg_ood_mean_recall``, ``avg_ood_i2t_r1``, ``avg_ood_t2i_r1``,
``id_mean_recall``, ``id_i2t_r1``, ``id_t2i_r1``. ``vqa``: per dataset ``accuracy``,
``vqa_score``, ``ece``, ``coverage``, ``n``, ``accuracy_se``; averages ``avg_ood_accuracy``,
``avg_ood_vqa_score``, ``avg_ood_ece``, ``id_accuracy``, ``id_vqa_score``. ``"head": true`` marks a
model read through the run's trained task head.

Retention sets (``data.retain`` / ``--retain``: datasets of other tasks) are scored with
classification's metrics through the zero-shot text head, never through a trained head, by the
model and by the pretrained model θ₀ (``retain_before``; a zero-shot model is its own), whatever
the run's task (:func:`tracer_cli.sdk.task_metrics.retention`).
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.sdk.contracts import (
    CLASSIFICATION_METRICS, Backbone, DatasetBundle, Task, TaskMetrics, task_metrics)
from tracer_cli.engine.run import pretrained_backbone
from tracer_cli.engine.precision import Precision
from tracer_cli.errors import GateError, RecipeError, UsageError
from tracer_cli.events import Reporter, current_reporter
from tracer_cli.sdk.task_metrics import RETAIN_KEYS, retention
from tracer_cli.recipe import Recipe
from tracer_cli.commands.finished_run import (
    WHICH, RunDir, build_head, checkpoint_head, checkpoint_weights, interpolate, load_weights,
    read_checkpoint)

MODEL_SPEC_GRAMMAR = ("BACKBONE:ARCH[:PRETRAINED], e.g. openclip:ViT-B-16:openai, "
                      "openclip:RN50:/path/to/weights.pt, openclip:local-dir:/path/to/folder")


# --------------------------------------------------------------------------- parsing user input


def parse_model_spec(text: str) -> dict[str, Any]:
    """``BACKBONE:ARCH[:PRETRAINED]`` as a ``[model]`` table.

    Only the first two colons split: PRETRAINED may contain more (paths). Archs the backbone's
    factory declares in ``location_archs`` take the rest as their location
    (``openclip:local-dir:/models/clip``), since their weights come with them; a factory that
    declares ``weights_required`` (what PRETRAINED may be) refuses a spec without weights.
    """
    from tracer_cli.sdk.host import declared

    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UsageError(f"--model '{text}': expected {MODEL_SPEC_GRAMMAR}")
    backbone, arch = parts[0], parts[1]
    pretrained = parts[2] if len(parts) == 3 else None
    if arch in declared("backbones", backbone, "location_archs", ()):
        if not pretrained:
            raise UsageError(f"--model '{text}': '{arch}' needs a location after it; expected "
                             f"{MODEL_SPEC_GRAMMAR}")
        return {"backbone": backbone, "arch": f"{arch}:{pretrained}"}
    weights = declared("backbones", backbone, "weights_required", None)
    if pretrained == "" or (weights and pretrained is None):
        raise UsageError(f"--model '{text}': say which weights ({weights or 'PRETRAINED'}); "
                         f"expected {MODEL_SPEC_GRAMMAR}")
    section = {"backbone": backbone, "arch": arch}
    if pretrained is not None:
        section["pretrained"] = pretrained
    return section


def parse_names(text: str | None, flag: str) -> list[str] | None:
    """``a,b,c`` → ["a", "b", "c"]; None when the flag was not given."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"{flag} '{text}': expected comma-separated dataset names, e.g. "
                         "imagenet-r,imagenet-sketch")
    return list(dict.fromkeys(names))


def parse_alphas(text: str | None) -> list[float] | None:
    """``0,0.5,1`` → sorted distinct mixing coefficients in [0, 1]; None when not given."""
    if text is None:
        return None
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"--wise-alpha '{text}': '{part}' is not a number; expected a list "
                             "such as 0,0.25,0.5,0.75,1") from None
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"--wise-alpha '{text}': {part} is outside [0, 1] (0 is the "
                             "pretrained model, 1 the finetuned one)")
        values.append(value)
    return sorted(set(values))


@dataclass(frozen=True)
class Gate:
    """``--fail-under KEY=VALUE`` (kind ``under``) or ``--fail-over KEY=VALUE`` (kind ``over``).

    KEY is a summary metric (``avg_ood_accuracy``, ``avg_ood_mean_recall``: no dot) or
    ``DATASET.METRIC`` (``imagenet-r.ece``; the last dot splits, so dataset labels may hold dots).
    """

    key: str
    threshold: float
    kind: str

    @property
    def flag(self) -> str:
        return f"--fail-{self.kind}"

    @property
    def summary(self) -> bool:
        return "." not in self.key

    @property
    def metric(self) -> str:
        return self.key if self.summary else self.key.rsplit(".", 1)[-1]

    def failed(self, value: float) -> bool:
        return value < self.threshold if self.kind == "under" else value > self.threshold


def parse_gates(fail_under: Sequence[str] = (), fail_over: Sequence[str] = ()) -> list[Gate]:
    """The gates of both flags, each ``KEY=VALUE`` with a numeric VALUE."""
    gates = []
    for kind, texts in (("under", fail_under), ("over", fail_over)):
        for text in texts:
            key, sep, value = text.partition("=")
            try:
                threshold = float(value)
            except ValueError:
                threshold = None
            if not sep or not key.strip() or threshold is None:
                raise UsageError(f"--fail-{kind} '{text}': expected METRIC=VALUE, e.g. "
                                 "avg_ood_accuracy=0.55 or imagenet-r.accuracy=0.7")
            gates.append(Gate(key.strip(), threshold, kind))
    return gates


def _close(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}? " if close else ""


def validate_gates(gates: Sequence[Gate], id_names: Sequence[str], ood_names: Sequence[str],
                   spec: TaskMetrics = CLASSIFICATION_METRICS,
                   retain_names: Sequence[str] = ()) -> None:
    """Check gate keys, directions and thresholds against the task's metrics (``spec``; the
    retention sets and summaries against classification's) before any evaluation runs."""
    datasets = [*id_names, *ood_names]
    summary = (*spec.summary_keys, *RETAIN_KEYS)
    available = [k for k in spec.summary_keys if _summary_defined(k, id_names, ood_names, spec)]
    available += list(RETAIN_KEYS) if retain_names else []
    keys = available + [f"{d}.{m}" for d in datasets for m in spec.dataset_metrics]
    keys += [f"{d}.{m}" for d in retain_names for m in CLASSIFICATION_METRICS.dataset_metrics]
    for gate in gates:
        if gate.key in RETAIN_KEYS and not retain_names:
            raise UsageError(f"{gate.flag} {gate.key}: there are no retention datasets (give "
                             "--retain or data.retain)")
        if gate.key not in keys:
            if gate.key in summary:
                role = "ID" if gate.key in spec.id_keys else "OOD"
                raise UsageError(f"{gate.flag} {gate.key}: there are no {role} datasets to "
                                 "average")
            raise UsageError(f"{gate.flag} '{gate.key}': unknown metric; {_close(gate.key, keys)}"
                             f"use one of {', '.join(summary)} or DATASET.METRIC with "
                             f"METRIC in {', '.join(spec.dataset_metrics)} and DATASET in "
                             f"{', '.join(datasets)}")
        judge = CLASSIFICATION_METRICS if gate.key.rsplit(".", 1)[0] in retain_names else spec
        # Both retention summaries are accuracies (retain_change a difference of two, so it may
        # be negative: --fail-under retain_change=-0.02 allows two points of forgetting).
        higher = gate.key in RETAIN_KEYS or judge.higher(gate.metric)
        if higher != (gate.kind == "under"):
            other = "under" if higher else "over"
            better = "higher" if higher else "lower"
            raise UsageError(f"{gate.flag} {gate.key}: {gate.metric} is better when {better}; "
                             f"use --fail-{other} {gate.key}={gate.threshold:g}")
        low = -1.0 if gate.key == "retain_change" else 0.0
        fraction = gate.key in RETAIN_KEYS or judge.fraction(gate.metric)
        if fraction and not low <= gate.threshold <= 1.0:
            raise UsageError(f"{gate.flag} {gate.key}={gate.threshold:g}: {gate.metric} is a "
                             f"fraction in [{low:g}, 1] (write 0.7 for 70%)")


def _summary_defined(key: str, id_names: Sequence[str], ood_names: Sequence[str],
                     spec: TaskMetrics) -> bool:
    return bool(id_names) if key in spec.id_keys else bool(ood_names)


# --------------------------------------------------------------------------- the request and plan


@dataclass
class EvalRequest:
    """What the user asked for, in the terms of the command line."""

    run_dir: Path | None = None
    checkpoint: Path | None = None
    model: str | None = None
    recipe: Path | None = None
    which: str | None = None
    id_names: list[str] | None = None
    ood_names: list[str] | None = None
    retain_names: list[str] | None = None
    overrides: list[str] = field(default_factory=list)
    wise_alphas: list[float] | None = None
    gates: list[Gate] = field(default_factory=list)


@dataclass
class Loaded:
    """Finetuned weights, their step, and (trained head, head at θ₀) when the run has a head;
    for a run, the network its lock file says it was trained in (``[lock.backbone]``)."""

    weights: dict[str, torch.Tensor]
    step: int | None
    head: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
    locked: tuple[Path, dict[str, Any]] | None = None


@dataclass
class _Source:
    """Where the model comes from: base recipe tables, finetuned weights, description."""

    kind: str
    raw: dict[str, Any]
    recipe_source: str
    load_weights: Callable[[], Loaded] | None
    info: dict[str, Any]


@dataclass
class EvalPlan:
    """A checked request: the recipe to evaluate with and how to get the finetuned weights."""

    recipe: Recipe
    model: dict[str, Any]
    load_weights: Callable[[], Loaded] | None
    alphas: list[float] | None
    gates: list[Gate]
    metrics: TaskMetrics = CLASSIFICATION_METRICS  # the task's, read by gates and tables

    @property
    def id_names(self) -> list[str]:
        return [_display(s) for s in self.recipe.data.id]

    @property
    def ood_names(self) -> list[str]:
        return [_display(s) for s in self.recipe.data.ood]

    @property
    def retain_names(self) -> list[str]:
        return [_display(s) for s in self.recipe.data.retain]

    @property
    def reported_alpha(self) -> float | None:
        """The α whose results fill the top level: 1 when asked for, else the largest."""
        if not self.alphas:
            return None
        return 1.0 if 1.0 in self.alphas else max(self.alphas)


def _display(spec: dict[str, Any]) -> str:
    return spec.get("label") or spec["name"]


def default_recipe() -> dict[str, Any]:
    """The recipe tables used when no recipe or run is given (``--model`` alone).

    Loader workers pay off when a GPU waits for decoded images; on CPU the model itself is the
    bottleneck and workers would only compete with it for cores.
    """
    workers = min(8, os.cpu_count() or 1) if torch.cuda.is_available() else 0
    return {"run": {"name": "eval", "device": "auto", "precision": "auto"},
            "data": {"eval_batch_size": 256, "num_workers": workers},
            "task": {"name": "classification"}}


def read_recipe(path: Path) -> dict[str, Any]:
    """A recipe file's tables; a run's ``recipe.lock.toml`` works too (its ``[lock]`` table of
    versions is dropped)."""
    return rundir.strip_lock_table(recipe_mod.read_toml(path))


def _run_source(req: EvalRequest, which: str) -> _Source:
    run = RunDir(req.run_dir, checkpoint=req.checkpoint)
    raw = copy.deepcopy(run.tables)

    def load() -> Loaded:
        return Loaded(run.weights(which), run.checkpoint.get("step"),
                      checkpoint_head(run.checkpoint),
                      (run.path, run.trained_with.get("backbone") or {}))

    return _Source("run", raw, str(run.lock_path), load,
                   {"path": str(run.path), "checkpoint": str(run.checkpoint_path), "which": which})


def _checkpoint_source(req: EvalRequest, which: str) -> _Source:
    state = read_checkpoint(req.checkpoint)
    if req.recipe is not None:
        raw, origin = read_recipe(req.recipe), str(req.recipe)
    elif isinstance(state.get("recipe"), dict):
        raw = recipe_mod.resolved_tables(copy.deepcopy(state["recipe"]))
        origin = f"{req.checkpoint} (embedded recipe)"
    else:
        raise UsageError(f"checkpoint '{req.checkpoint}' carries no recipe; pass --recipe FILE "
                         "with the recipe it was trained with")

    def load() -> Loaded:
        return Loaded(checkpoint_weights(state, which, f"checkpoint '{req.checkpoint}'"),
                      state.get("step"), checkpoint_head(state))

    return _Source("checkpoint", raw, origin, load,
                   {"path": str(req.checkpoint), "checkpoint": str(req.checkpoint),
                    "which": which})


def _source(req: EvalRequest) -> _Source:
    """Pick the model source; conflicting ones are usage errors that say what to drop."""
    if req.model and (req.run_dir or req.checkpoint):
        raise UsageError("--model evaluates a backbone as it is: drop it, or drop RUN_DIR / "
                         "--checkpoint")
    if req.run_dir and req.recipe:
        raise UsageError("a run directory brings its own recipe (recipe.lock.toml): drop --recipe "
                         "and change keys with --set")
    weighted = bool(req.run_dir or req.checkpoint)
    if req.which is not None and not weighted:
        raise UsageError("--which picks the student or teacher of a run or checkpoint; give "
                         "RUN_DIR or --checkpoint")
    if weighted:
        which = req.which or "student"
        if which not in WHICH:
            raise UsageError(f"--which '{which}': allowed: {', '.join(WHICH)}")
        return _run_source(req, which) if req.run_dir else _checkpoint_source(req, which)
    if req.model:
        raw = read_recipe(req.recipe) if req.recipe else default_recipe()
        raw["model"] = parse_model_spec(req.model)
        origin = str(req.recipe) if req.recipe else "--model"
        return _Source("model", raw, origin, None, {"path": None, "spec": req.model})
    if req.recipe:
        return _Source("recipe", read_recipe(req.recipe), str(req.recipe), None,
                       {"path": str(req.recipe)})
    raise UsageError("nothing to evaluate: give a RUN_DIR, --checkpoint PATH, --model "
                     f"{MODEL_SPEC_GRAMMAR.split(',')[0]} or --recipe FILE")


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, dict)) else list(value)


def _specs_for(names: Sequence[str], data: dict[str, Any]) -> list[Any]:
    """Dataset specs for ``names``: a dataset the recipe already evaluates (matched by label or
    name) keeps its table; any other name is a fresh spec that inherits ``data.options``."""
    known = {}
    for spec in [s for role in recipe_mod.EVAL_ROLES for s in _as_list(data.get(role))]:
        if isinstance(spec, str):
            known.setdefault(spec, spec)
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
            known.setdefault(spec.get("label") or spec["name"], spec)
    return [copy.deepcopy(known.get(name, name)) for name in names]


def _recipe_for(source: _Source, req: EvalRequest) -> Recipe:
    # ``--set data.ood[0].root=...`` (what a missing-root error suggests) indexes the datasets
    # being evaluated, so indexed data.id / data.ood / data.retain keys apply after --id / --ood /
    # --retain chose them.
    late = [o for o in req.overrides if re.match(r"\s*data\.(id|ood|retain)\[", o)]
    early = [o for o in req.overrides if o not in late]
    raw = recipe_mod.apply_overrides(source.raw, early)
    data = raw.setdefault("data", {})
    if not isinstance(data, dict):
        raise RecipeError("data", f"expected a table, got {data!r}")
    if req.id_names is not None:
        data["id"] = _specs_for(req.id_names, data)
    if req.ood_names is not None:
        data["ood"] = _specs_for(req.ood_names, data)
    if req.retain_names is not None:
        data["retain"] = _specs_for(req.retain_names, data)
    evaluated = [s for role in recipe_mod.EVAL_ROLES for s in _as_list(data.get(role))]
    if not evaluated:
        raise UsageError("no datasets to evaluate: give --id, --ood and/or --retain "
                         "(comma-separated dataset names; `tracer plugins list` shows them), or a "
                         "recipe with data.id / data.ood / data.retain")
    # Recipes require a training set; eval never builds it, so any evaluated spec will do.
    data.setdefault("train", copy.deepcopy(evaluated[0]))
    return recipe_mod.from_dict(recipe_mod.apply_overrides(raw, late), source=source.recipe_source)


def prepare(req: EvalRequest) -> EvalPlan:
    """Resolve the source, the recipe and the datasets, and check names, gates and α."""
    from tracer_cli.sdk.host import get_host

    source = _source(req)
    if req.wise_alphas is not None and source.load_weights is None:
        raise UsageError("--wise-alpha mixes pretrained and finetuned weights: give RUN_DIR or "
                         "--checkpoint")
    recipe = _recipe_for(source, req)
    host = get_host()
    host.backbones.get(recipe.model.backbone)
    for spec in recipe.data.id + recipe.data.ood + recipe.data.retain:
        host.datasets.get(spec["name"])  # unknown names fail here, listing close matches
    # The run's task decides what is measured (and so which gate keys exist); building it also
    # checks the [task] options before any weights are read.
    task = host.tasks.get(recipe.task.name).factory(dict(recipe.task.options))
    plan = EvalPlan(recipe, _describe(source, recipe), source.load_weights, req.wise_alphas,
                    list(req.gates), task_metrics(task))
    validate_gates(plan.gates, plan.id_names, plan.ood_names, plan.metrics, plan.retain_names)
    return plan


def _describe(source: _Source, recipe: Recipe) -> dict[str, Any]:
    options = recipe.model.options
    return {"source": source.kind, "path": source.info.get("path"),
            "spec": source.info.get("spec"), "checkpoint": source.info.get("checkpoint"),
            "step": None, "which": source.info.get("which"), "backbone": recipe.model.backbone,
            "arch": options.get("arch"), "pretrained": options.get("pretrained"),
            "wise_alpha": None}


# --------------------------------------------------------------------------- running


@dataclass
class EvalReport:
    """The JSON document plus the reported model's logits and labels per dataset."""

    document: dict[str, Any]
    predictions: dict[str, tuple[torch.Tensor, torch.Tensor]]
    metrics: TaskMetrics = CLASSIFICATION_METRICS


def summarize(metrics: dict[str, dict[str, Any]], id_names: Sequence[str],
              ood_names: Sequence[str],
              spec: TaskMetrics = CLASSIFICATION_METRICS) -> dict[str, Any]:
    """Per-dataset metrics plus the task's averages: ``avg_ood_<m>`` over the OOD sets, then
    ``id_<m>`` over the ID sets (None without such sets); classification: the mean OOD accuracy
    and ECE and the mean ID accuracy."""

    def mean(names: Sequence[str], key: str) -> float | None:
        return float(np.mean([metrics[n][key] for n in names])) if names else None

    out: dict[str, Any] = {"datasets": metrics}
    for key in spec.summary_keys:
        out[key] = mean(id_names if key in spec.id_keys else ood_names, spec.base(key))
    return out


def run_plan(plan: EvalPlan, reporter: Reporter | None = None) -> EvalReport:
    """Evaluate the plan's model (or each WiSE-FT mix) on every dataset of the plan."""
    from tracer_cli.engine.precision import resolve_device, resolve_precision
    from tracer_cli.engine.build import build_task, eval_sets

    reporter = reporter or current_reporter()
    start = time.time()
    recipe, model = plan.recipe, dict(plan.model)
    device = resolve_device(recipe.run.device)
    precision = resolve_precision(recipe.run.precision, device)
    loaded = plan.load_weights() if plan.load_weights else None
    tuned = loaded.weights if loaded is not None else None
    model["step"] = loaded.step if loaded is not None else None
    backbone = pretrained_backbone(recipe)
    if loaded is not None and loaded.locked is not None:
        notice = rundir.check_built_as_locked(*loaded.locked, backbone.describe())
        if notice:
            reporter.notice(notice)
    module = backbone.model
    theta0 = ({k: v.detach().clone() for k, v in module.state_dict().items()}
              if plan.alphas or (plan.retain_names and tuned is not None) else None)
    if tuned is not None:  # also for WiSE-FT: a foreign checkpoint fails before data is read
        load_weights(module, tuned, model["checkpoint"])
    task = build_task(recipe)
    # A run that trained a head (lp/ft/lpft, vqa) is read through it; WiSE-FT mixes the head too,
    # from its θ₀ initialisation (the zero-shot head for classification) to the trained one.
    head_states = loaded.head if loaded is not None else None
    head = build_head(task, head_states[0], model["checkpoint"]) if head_states else None
    if head is not None:
        model["head"] = True
        head.to(device)
    scorer = _Scorer(task, backbone, module, precision, eval_sets(recipe, backbone),
                     eval_sets(recipe, backbone, ("retain",)), reporter)
    module.to(device)
    before = _retain_before(scorer, theta0, tuned, model["checkpoint"], reporter)
    reported = plan.reported_alpha
    entries, predictions = [], {}
    for alpha in plan.alphas or [None]:
        if alpha is not None:
            load_weights(module, interpolate(theta0, tuned, alpha), model["checkpoint"])
            if head is not None:
                head.load_state_dict(interpolate(head_states[1], head_states[0], alpha))
        reporter.notice(f"evaluating {_what(model, alpha)} on {', '.join(scorer.names)}")
        results = scorer.score(head, "model" if alpha is None else f"α={alpha:g}")
        metrics = {name: r["metrics"] for name, r in results.items()}
        entries.append({"alpha": alpha, **summarize(metrics, plan.id_names, plan.ood_names,
                                                    plan.metrics),
                        **retention(metrics, plan.retain_names, before or metrics)})
        if alpha == reported:  # tasks without logits and labels (retrieval) have no predictions
            predictions = {n: (r["logits"], r["labels"]) for n, r in results.items()
                           if r.get("logits") is not None and r.get("labels") is not None}
        del results
    top = next(e for e in entries if e["alpha"] == reported)
    document = {**{k: v for k, v in top.items() if k != "alpha"},
                "id": plan.id_names, "ood": plan.ood_names,
                **_retain_block(plan.retain_names, before or top["datasets"]),
                "model": {**model, "wise_alpha": reported},
                "wise": entries if plan.alphas else [], "gates": [],
                "runtime": {"device": str(device), "precision": precision.name,
                            "wall_time_s": round(time.time() - start, 2)}}
    document["gates"] = gate_results(plan.gates, document)
    return EvalReport(document, predictions, plan.metrics)


@dataclass
class _Scorer:
    """The model's evaluation on the plan's sets: the task's on the ID and OOD sets (through the
    run's head when it has one), the zero-shot classification head's on the retention sets."""

    task: Task
    backbone: Backbone
    module: torch.nn.Module
    precision: Precision
    sets: dict[str, tuple[DatasetBundle, Any]]
    retain: dict[str, tuple[DatasetBundle, Any]]
    reporter: Reporter | None = None  # each dataset's progress, as ``eval <what> <dataset>``

    @property
    def names(self) -> list[str]:
        return [*self.sets, *self.retain]

    def score(self, head: torch.nn.Module | None = None, what: str = "model"
              ) -> dict[str, dict[str, Any]]:
        from tracer_cli.engine.scoring import task_evaluate

        results = task_evaluate(self.task, self.backbone, self.module, self.sets,
                                self.precision.device, self.precision.autocast, head, what,
                                self.reporter) if self.sets else {}
        return {**results, **self.score_retention(what)}

    def score_retention(self, what: str = "model") -> dict[str, dict[str, Any]]:
        """Never through a head: a trained head has only the finetuning task's classes."""
        from tracer_cli.engine.build import retain_task
        from tracer_cli.engine.scoring import task_evaluate

        if not self.retain:
            return {}
        return task_evaluate(retain_task(), self.backbone, self.module, self.retain,
                             self.precision.device, self.precision.autocast, None, what,
                             self.reporter)


def _retain_before(scorer: _Scorer, theta0: dict[str, torch.Tensor] | None,
                   tuned: dict[str, torch.Tensor] | None, checkpoint: str | None,
                   reporter: Reporter) -> dict[str, Any] | None:
    """The pretrained model's (θ₀) metrics on the retention sets, for finetuned weights; None
    for a zero-shot model, whose own metrics are "before" too. The module ends up holding the
    finetuned weights again."""
    if not scorer.retain or tuned is None:
        return None
    reporter.notice(f"evaluating the pretrained model on {', '.join(scorer.retain)} "
                    "(retention before finetuning)")
    load_weights(scorer.module, theta0, checkpoint)
    before = {n: r["metrics"] for n, r in scorer.score_retention("pretrained").items()}
    load_weights(scorer.module, tuned, checkpoint)
    return before


def _retain_block(names: list[str], before: dict[str, Any]) -> dict[str, Any]:
    """The document's retention entries: the sets' names and the pretrained model's metrics on
    them (``retain_before``)."""
    return {"retain": names, "retain_before": {n: before[n] for n in names}}


def _what(model: dict[str, Any], alpha: float | None) -> str:
    if model["source"] in ("model", "recipe"):
        name = model.get("spec") or f"{model.get('arch')} ({model.get('pretrained')})"
        return f"{name} zero-shot"
    what = f"the {model['which']} of {model['path']}"
    return what if alpha is None else f"WiSE-FT α={alpha:g} ({what})"


# --------------------------------------------------------------------------- gates


def _value(document: dict[str, Any], gate: Gate) -> float:
    if gate.summary:
        return document[gate.key]
    dataset, metric = gate.key.rsplit(".", 1)
    return document["datasets"][dataset][metric]


def gate_results(gates: Sequence[Gate], document: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per gate: the metric, the flag, threshold, measured value and whether it held."""
    out = []
    for gate in gates:
        value = _value(document, gate)
        out.append({"metric": gate.key, "flag": gate.flag, "threshold": gate.threshold,
                    "value": value, "passed": not gate.failed(value)})
    return out


def check_gates(document: dict[str, Any]) -> None:
    """Raise :class:`GateError` naming every failed gate of ``document["gates"]``."""
    failed = [g for g in document.get("gates", []) if not g["passed"]]
    if failed:
        parts = [f"{g['metric']} = {g['value']:.4g} is "
                 f"{'below' if g['flag'] == '--fail-under' else 'above'} {g['threshold']:g} "
                 f"({g['flag']})" for g in failed]
        raise GateError(f"gate{'s' if len(failed) > 1 else ''} failed: {'; '.join(parts)}")


# --------------------------------------------------------------------------- files


def safe_filename(name: str) -> str:
    """A dataset label as a file name (labels are free text; file names are not)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset"


def write_outputs(report: EvalReport, output_dir: Path, save_predictions: bool = False
                  ) -> list[Path]:
    """``eval.json`` (written last, so its presence means the folder is complete), one
    reliability diagram per dataset whose task returned logits and labels (classification, vqa;
    not retrieval), the WiSE-FT curve of the task's primary metric, and optionally the predictions
    (vqa: a label of -1 is an answer outside the scored vocabulary)."""
    from tracer_cli.results import figures as plots
    from tracer_cli.io import atomic_path, atomic_write_json
    from tracer_cli.results.metrics import ece as expected_calibration_error
    from tracer_cli.results.metrics import reliability_bins, softmax

    output_dir = Path(output_dir)
    doc, written, spec = report.document, [], report.metrics
    for name, (logits, labels) in report.predictions.items():
        probs = softmax(logits)
        ece = doc["datasets"][name].get("ece")
        if ece is None:
            ece = expected_calibration_error(probs, labels)
        written.append(plots.reliability_diagram(
            reliability_bins(probs, labels),
            output_dir / f"reliability_{safe_filename(name)}.png", f"{name}: ECE {ece:.3f}"))
        if save_predictions:
            path = output_dir / "predictions" / f"{safe_filename(name)}.npz"
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, logits=logits.float().numpy().astype(np.float32),
                         labels=labels.numpy().astype(np.int64))
            written.append(path)
    wise = doc.get("wise") or []
    primary = spec.primary
    curve = f"id_{primary}" in spec.id_keys and f"avg_ood_{primary}" in spec.ood_keys
    if wise and doc["id"] and doc["ood"] and curve:
        written.append(plots.wise_curve([e["alpha"] for e in wise],
                                        [e[f"id_{primary}"] for e in wise],
                                        [e[f"avg_ood_{primary}"] for e in wise],
                                        output_dir / "wise_curve.png",
                                        metric=primary.replace("_", " ")))
    atomic_write_json(output_dir / "eval.json", doc)
    written.append(output_dir / "eval.json")
    return written
