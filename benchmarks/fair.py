"""A fair benchmark: every method tuned alike, judged on the WiSE-FT frontier, and persistence.

    python benchmarks/fair.py --quick --dry-run   # the quick plan (57 min measured on 2 idle cores)
    python benchmarks/fair.py --quick             # run it (resumable: rerun to continue)
    python benchmarks/fair.py --dry-run           # the full plan, with its estimate
    python benchmarks/fair.py                     # run it (~5.5 h and more; resumable)
    python benchmarks/fair.py --task vqa --quick --dry-run        # VQA (50 min measured)
    python benchmarks/fair.py --task retrieval --quick --dry-run  # retrieval (35 min measured)
    python benchmarks/fair.py --task retrieval    # its full plan: 166 min measured, 3 invocations

Estimates (--dry-run) use robustness.py's model, calibrated on BENCHMARKS.md's robustness run
(VQA and retrieval: on its tasks block).

benchmarks/robustness.py tunes TRACER alone (β and λ_sd on synth-mono); this script tunes every
finetuning method the same way and is built on its machinery (runs through the real CLI, results
cached by command next to each run in ``OUT/runs``, an interrupted benchmark resumes).

Selection rule (the same for every method)
  Each method has a grid of its main hyperparameters with the same number of trials: FT and FLYP
  train.lr x train.weight_decay, LP-FT train.lr x train.lp_steps (as a share of train.steps),
  CaRot distill.lambda_sd x distill.lambda_orth x teacher.momentum_end, TRACER teacher.beta x
  distill.lambda_sd. The grid is coordinate-wise through the recipe's own point (one axis moves,
  the others stay at the recipe's values): 7 points per method in the full plan (4 values on each
  of two axes, 3 on each of CaRot's three), 5 in the quick plan (3 and 3; CaRot 3, 2, 2). Every
  point runs with the same two finetuning seeds (the first two of --seeds) on the first
  pretrained model. Per axis, the value with the best mean validation score wins; ties go to the
  recipe's own value. When two or more winners are off the recipe's values, their combination
  is a point the sweep never ran: it runs at the same two seeds and is chosen only if its mean
  validation score is at least the best sweep point's, else the best sweep point is (so every
  choice is a validated point; at most one such point per method and protocol, the same for
  every method). Axes can interact: lr x weight decay is AdamW's per-step shrinkage, and a
  large rate with a large decay, each best on its own, collapsed retrieval's FLYP (2026-12-07).

Two selection protocols, side by side (one ``tracer eval`` per sweep run scores both):
  id   held-out ID validation: synth-photo, colour_bias 0.99, world seed 1 (the reported ID test
       set is world seed 0's test split and the training set its train split, so the images are
       disjoint draws of the same task). The FLYP / WiSE-FT papers' protocol.
  ood  the OOD validation domain synth-mono: greyscale photos. It removes colour, the very
       shortcut (colour_bias 0.99) that the reported OOD domains punish, so selecting on it is
       close to selecting on the test shift: read its results as an upper bound.
  A validation set that is a reported test set (same dataset and world seed, or the same label)
  is refused.

Grid extension: a winner on its axis's edge adds one value beyond it (the edge value times the
ratio of the two outermost values; for the momentum in 1 - m) and the sweep runs again with the
new point, until the winner is interior, the edge is a hard limit (train.lp_steps in [1,
steps - 1], teacher.momentum_end in [0, 1); lr, weight decay, β and the λ are > 0 on a geometric
grid, so they never reach their limit) or MAX_EXTENSIONS values (3; --quick 1) were added
on that side.

Phases: 1. the sweep (its extension rounds, then the combinations to validate), 2. every
method x pretraining seed x seed at each protocol's chosen point, with WiSE-FT (``tracer eval
RUN --wise-alpha``) on every run of every method, TRACER and CaRot included; 3. persistence
(--lengths, full plan only by default): FLYP,
FLYP + WiSE-FT, CaRot (EMA teacher at its recipe's update interval, and a control with the
interval scaled with the length), TRACER (WMA) at the id protocol's chosen points, on the first two
pretrained models, with ``tracer distill-check --run RUN --json`` beside every teacher run.
Warm-up and the LP-FT split scale with the length (robustness.steps_overrides); CaRot's
momentum warm-up is a share of training already; its update interval does not scale in the main
arm (a recipe's interval is a number of steps: CaRot's paper uses 500 at 25k steps), so a longer
run has more updates and a teacher that trails by a fixed number of steps, the effect persistence
is about; the scaled control (interval ∝ length, 50 updates per run) separates that from length.

Headline per method and protocol: the gap of its mean (ID, avg OOD) point to the best other
baseline's WiSE-FT curve at its ID accuracy (TRACER's curve is never a baseline), with SE and
verdict, from tracer_cli.analysis (``analyse`` -> ``frontier_table``). Outputs:
``OUT/fair.json``, ``FIGURES/fair_{frontier,persistence}.png`` and the block between
``<!-- fair:begin -->`` and ``<!-- fair:end -->`` of --report. The block states the plan's time:
``OUT/fair-time.json`` records each invocation that ran tasks (wall time, tasks, jobs, the load
average at its start), so a plan resumed across invocations reports their sum.

Tasks (--task; everything above is ``classification``, the default)
  vqa        recipes/vqa_{zeroshot,ft,flyp,carot}.toml and recipes/quickstart_vqa.toml (tracer):
             the quickstart's questions and schedule (500 steps at batch 128) for every method.
             ft is the head path (an answer head on fused image and question features, trained
             with the backbone; its WiSE-FT mixes the head from its fresh initialisation);
             flyp, carot and tracer score each image against "{question} {answer}" texts.
             Validation: id = synth-vqa photos at world seed 1 with the ID test set's kinds
             (``vqa-photo-val``); ood = synth-vqa monochrome photos (``vqa-mono``, colour not
             asked), the world's validation domain as synth-mono is classification's.
             Score: ``accuracy``; analysis keys id_accuracy, avg_ood_accuracy, avg_ood_ece.
  retrieval  recipes/retrieval_{zeroshot,flyp,carot}.toml and recipes/quickstart_retrieval.toml
             (tracer). No ft: retrieval has no task head (the engine refuses lp, ft and lpft),
             so its plain finetuning is FLYP, the contrastive loss on captions: an ft row
             would only repeat it.
             Validation: id = synth-captions photos, colour_bias 0.95, world seed 1
             (``captions-photo-val``); ood = synth-captions monochrome photos
             (``captions-mono``): no colour, the tie the finetuning photos carry. Score:
             ``mean_recall`` (R@1/5/10 both ways); keys id_mean_recall, avg_ood_mean_recall
             (no ECE: retrieval has no class probabilities).
  The methods, grids, seeds, selection rule, extension and headline are classification's
  (without LP-FT). Two sets of one dataset and world seed that share a synthetic domain are one
  set to the refusal above (the domain is an option of synth-vqa / synth-captions, not a name),
  and a recipe of another task, or a head method on retrieval, is refused. Persistence is
  classification's question: no --lengths by default. Outputs: ``OUT/fair-<task>.json`` (OUT
  defaults to runs/fair-<task>: one folder per task, or run names would collide),
  ``FIGURES/fair_<task>_{frontier,persistence}.png`` and the ``fair-<task>`` block.
  Plan sizes on 2 idle cores (~20 s + 0.25 s a step a run at 1 thread: BENCHMARKS.md's tasks
  block, 500 steps at batch 128 took 116-155 s a run): ``--quick`` (200 steps, seeds 0 1, one
  pretrained model) ~34 min for VQA (42 finetunes) and ~25 min for retrieval (32), plus up to
  ~27 / ~21 min per grid-extension round (one at most); the full plan (500 steps, seeds 0 1 2,
  the three shipped pretrained models) ~2.1 h (93 finetunes) and ~1.6 h (72), plus up to ~50 /
  ~39 min per round (three at most). Start with ``--quick``; the full plan fits an idle night.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import robustness as rb  # noqa: E402  (sibling scripts: this folder is on sys.path)

from _plots import save  # noqa: E402
from _report import ROBUSTNESS_KEYS  # noqa: E402
from tracer_cli.analysis.tables import analyse, headline_table  # noqa: E402
from tracer_cli.recipe import HEAD_METHODS  # noqa: E402

METHODS = ("zeroshot", "ft", "lpft", "flyp", "carot", "tracer")
DEFAULT_RECIPES = [f"recipes/synth_{m}.toml" for m in METHODS]
PROTOCOLS = {
    "id": {"name": "synth-photo", "seed": 1, "colour_bias": 0.99, "label": "synth-photo-val"},
    "ood": {"name": "synth-mono", "label": "synth-mono"}}
VQA_KINDS = ["shape", "colour", "size", "position", "count"]  # quickstart_vqa.toml's
QUICK_STEPS = 200
LENGTHS = [500, 2000, 8000]
PERSISTENCE = ("flyp", "carot", "tracer")
SCALED = "carot-scaled"  # CaRot with its EMA update interval scaled with the length
MAX_EXTENSIONS, QUICK_MAX_EXTENSIONS = 3, 1
WISE_ALPHAS = [0.25, 0.5, 0.75]
PROPOSED = "tracer"
RECIPE_ROW = f"{PROPOSED} (recipe)"  # TRACER at its recipe's (the paper's) loss weights
NOT_BASELINES = (PROPOSED, RECIPE_ROW)  # curves never used as the headline's baseline


@dataclass(frozen=True)
class Axis:
    """One swept hyperparameter: its recipe key, its values and how to step beyond them.

    ``scale`` "log": geometric; "log1m": geometric in 1 - v (a momentum, in [0, 1)); "steps":
    geometric shares of train.steps, planned as whole steps in [1, steps - 1]."""

    key: str
    values: tuple[float, ...]
    scale: str = "log"


LR = (3e-5, 1e-4, 3e-4, 1e-3)
WD = (0.01, 0.03, 0.1, 0.3)
FULL_GRIDS = {
    "ft": (Axis("train.lr", LR), Axis("train.weight_decay", WD)),
    "lpft": (Axis("train.lr", LR), Axis("train.lp_steps", (0.05, 0.1, 0.2, 0.4), "steps")),
    "flyp": (Axis("train.lr", LR), Axis("train.weight_decay", WD)),
    "carot": (Axis("distill.lambda_sd", (0.5, 1.5, 4.5)),
              Axis("distill.lambda_orth", (0.05, 0.2, 0.8)),
              Axis("teacher.momentum_end", (0.7, 0.9, 0.97), "log1m")),
    "tracer": (Axis("teacher.beta", (0.1, 0.2, 0.5, 1.0)),
               Axis("distill.lambda_sd", (0.3, 0.9, 3.0, 9.0)))}
QUICK_GRIDS = {
    "ft": (Axis("train.lr", LR[:3]), Axis("train.weight_decay", WD[1:])),
    "lpft": (Axis("train.lr", LR[:3]), Axis("train.lp_steps", (0.1, 0.2, 0.4), "steps")),
    "flyp": (Axis("train.lr", LR[:3]), Axis("train.weight_decay", WD[1:])),
    "carot": (Axis("distill.lambda_sd", (0.5, 1.5, 4.5)),
              Axis("distill.lambda_orth", (0.2, 0.8)),
              Axis("teacher.momentum_end", (0.9, 0.97), "log1m")),
    "tracer": (Axis("teacher.beta", (0.2, 0.5, 1.0)), Axis("distill.lambda_sd", (0.3, 0.9, 3.0)))}




@dataclass(frozen=True)
class FairTask:
    """What differs between the tasks the fair benchmark runs: the methods and their recipes,
    the validation sets, the metric chosen on and reported, and where the results go.

    ``primary`` is the per-dataset metric of ``tracer eval --json`` that selection maximises;
    ``keys`` the summaries given to ``analyse`` (ID and average OOD of ``primary`` first, then
    ECE where the task has it). ``domain_key`` names the dataset option that picks a synthetic
    domain (None: the dataset's name does, as synth-photo / synth-mono), with the dataset's
    default; two sets of one name and world seed whose domains meet are the same set for
    :func:`check_validation`. ``step_s`` is the estimate's cost of one training step at 1
    thread (robustness.py's model), ``calibration`` where it comes from."""

    name: str
    recipes: tuple[str, ...]
    protocols: dict[str, dict[str, Any]]
    primary: str
    keys: tuple[str, ...]
    metric: str  # the primary metric in words, for figures and the report
    marker: str  # report block, results JSON stem and figure prefix
    title: str = "The fair benchmark"
    lengths: tuple[int, ...] = ()
    domain_key: str | None = None
    domain_default: tuple[str, ...] = ()
    head_methods: bool = True  # False: the task has no head (the head methods are refused)
    step_s: float = rb.EST_STEP_S
    calibration: str = "BENCHMARKS.md's robustness run on 2 idle cores"
    notes: tuple[str, ...] = ()

    @property
    def default_out(self) -> Path:
        return Path("runs") / self.marker

    def figure(self, kind: str) -> str:
        return f"{self.marker.replace('-', '_')}_{kind}.png"


# BENCHMARKS.md's tasks block: 500-step runs of the quickstarts (batch 128) took 116 s (VQA ft)
# to 155 s (retrieval TRACER) a run at 1 thread, two at a time on 2 cores: ~20 s + 0.25 s a step.
TASK_STEP_S = 0.25
TASK_CALIBRATION = "BENCHMARKS.md's tasks block (batch 128) on 2 idle cores"
TASKS = {
    "classification": FairTask(
        "classification", tuple(DEFAULT_RECIPES), PROTOCOLS, "accuracy", ROBUSTNESS_KEYS,
        "accuracy", "fair", lengths=tuple(LENGTHS)),
    "vqa": FairTask(
        "vqa", tuple(f"recipes/vqa_{m}.toml" for m in ("zeroshot", "ft", "flyp", "carot"))
        + ("recipes/quickstart_vqa.toml",),
        {"id": {"name": "synth-vqa", "seed": 1, "domains": ["photo"], "kinds": VQA_KINDS,
                "label": "vqa-photo-val"},
         "ood": {"name": "synth-vqa", "domains": ["mono"],
                 "kinds": [k for k in VQA_KINDS if k != "colour"], "label": "vqa-mono"}},
        "accuracy", ("id_accuracy", "avg_ood_accuracy", "avg_ood_ece"), "accuracy",
        "fair-vqa", "The fair benchmark: VQA", domain_key="domains", domain_default=("photo",),
        step_s=TASK_STEP_S, calibration=TASK_CALIBRATION),
    "retrieval": FairTask(
        "retrieval", tuple(f"recipes/retrieval_{m}.toml" for m in ("zeroshot", "flyp", "carot"))
        + ("recipes/quickstart_retrieval.toml",),
        {"id": {"name": "synth-captions", "seed": 1, "domain": "photo", "colour_bias": 0.95,
                "label": "captions-photo-val"},
         "ood": {"name": "synth-captions", "domain": "mono", "label": "captions-mono"}},
        "mean_recall", ("id_mean_recall", "avg_ood_mean_recall"), "mean recall",
        "fair-retrieval", "The fair benchmark: retrieval", domain_key="domain",
        domain_default=("photo",), head_methods=False, step_s=TASK_STEP_S,
        calibration=TASK_CALIBRATION,
        notes=("no ft: retrieval has no task head, so its plain finetuning is FLYP (the "
               "contrastive loss on captions); the head methods (lp, ft, lpft) are refused",)),
}


class FairUsage(Exception):
    """Bad options, recipes or grids: exit 2 with one line."""


# --------------------------------------------------------------------------- grids


def bounds(axis: Axis, steps: int) -> tuple[float, float]:
    """The hard limits of an axis's domain (inclusive)."""
    if axis.scale == "steps":
        return 1.0, float(steps - 1)
    return (0.0, 1.0 - 1e-12) if axis.scale == "log1m" else (0.0, math.inf)


def beyond(axis: Axis, values: Sequence[float], low: bool, steps: int) -> float | None:
    """One value past the low (or high) edge of ``values`` by the ratio of its two outermost
    values; None when that crosses a hard limit already reached (the edge is the limit)."""
    vals = sorted(values)
    edge, inner = (vals[0], vals[1]) if low else (vals[-1], vals[-2])
    if axis.scale == "log1m":
        new = 1.0 - (1.0 - edge) ** 2 / (1.0 - inner)
    else:
        new = edge * edge / inner
    if axis.scale == "steps":
        new = float(round(new))
    lo, hi = bounds(axis, steps)
    new = min(max(new, lo), hi)
    return None if any(math.isclose(new, v) for v in vals) else new


def in_steps(axis: Axis, steps: int) -> list[float]:
    """The axis's values as planned: shares of train.steps become whole steps."""
    if axis.scale != "steps":
        return list(axis.values)
    return list(dict.fromkeys(float(max(1, min(steps - 1, round(v * steps))))
                              for v in axis.values))


def coordinate_points(own: dict[str, float], grid: dict[str, list[float]]
                      ) -> list[dict[str, float]]:
    """The recipe's own point, then each axis's other values with the rest at their own."""
    points = [dict(own)]
    for key, values in grid.items():
        points += [{**own, key: v} for v in values if not math.isclose(v, own[key])]
    return points


# --------------------------------------------------------------------------- configuration


@dataclass
class Fair:
    """The plan: robustness's runs and tasks, the grids (growing by extension) and the phases."""

    cfg: rb.Config
    plan: rb.Plan
    axes: dict[str, tuple[Axis, ...]]
    own: dict[str, dict[str, float]]
    grid: dict[str, dict[str, list[float]]]
    lengths: list[int]
    max_extensions: int = MAX_EXTENSIONS
    extended: dict[tuple[str, str, bool], int] = field(default_factory=dict)
    task: FairTask = TASKS["classification"]

    def recipe(self, method: str) -> rb.RecipeInfo:
        return next(r for r in self.cfg.recipes if r.name == method)


def _own_value(path: str, sets: Sequence[str], key: str, steps: int) -> float:
    from tracer_cli import recipe as recipe_mod

    raw = recipe_mod.read_toml(Path(path))
    recipe = recipe_mod.from_dict(recipe_mod.apply_overrides(raw, list(sets)), path)
    section, name = key.split(".")
    value = getattr(getattr(recipe, section), name)
    if key == "train.lp_steps":  # 0 means half of train.steps
        value = max(1, min(steps - 1, round(recipe.train.resolved_lp_steps() * steps
                                            / recipe.train.steps)))
    if key == "teacher.update_every":  # 0 means the teacher kind's default
        value = recipe.teacher.resolved_update_every()
    return float(value)


def _grids(cfg: rb.Config, axes: dict[str, tuple[Axis, ...]]
           ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, list[float]]]]:
    """Each tuned method's own point and planned grid; refuses a grid without the own value."""
    own, grid = {}, {}
    for method, method_axes in axes.items():
        info = next((r for r in cfg.recipes if r.name == method), None)
        if info is None:
            raise FairUsage(f"no recipe named {method} (train.method) among --recipes; the fair "
                            f"benchmark tunes {', '.join(axes)}")
        steps = cfg.steps_of(info)
        own[method], grid[method] = {}, {}
        for axis in method_axes:
            value = _own_value(info.path, cfg.user_sets, axis.key, steps)
            values = in_steps(axis, steps)
            if not any(math.isclose(value, v) for v in values):
                raise FairUsage(f"{info.path}: {axis.key} = {value:g} is not in its grid "
                                f"{', '.join(f'{v:g}' for v in values)}; the grid must hold the "
                                "recipe's own value")
            own[method][axis.key], grid[method][axis.key] = value, values
    return own, grid


def _domains(spec: dict[str, Any], task: FairTask) -> frozenset[str]:
    """The synthetic domains a dataset table draws from (empty when its name is the domain)."""
    if task.domain_key is None:
        return frozenset()
    value = spec.get(task.domain_key, list(task.domain_default))
    return frozenset([value] if isinstance(value, str) else value)


def check_validation(recipes: Sequence[rb.RecipeInfo], sets: Sequence[str],
                     task: FairTask = TASKS["classification"]) -> None:
    """Refuse a recipe of another task, a head method on a task without a head, and a
    validation set that is a reported test set: the same label, or the same dataset at the same
    world seed with a domain in common (its test split then holds the very images reported)."""
    from tracer_cli import recipe as recipe_mod

    for info in recipes:
        raw = recipe_mod.read_toml(Path(info.path))
        recipe = recipe_mod.from_dict(recipe_mod.apply_overrides(raw, list(sets)), info.path)
        if recipe.task.name != task.name:
            raise FairUsage(f"{info.path}: task.name = '{recipe.task.name}', but this is the "
                            f"{task.name} benchmark (--task {task.name})")
        if not task.head_methods and info.method in HEAD_METHODS:
            raise FairUsage(f"{info.path}: train.method = '{info.method}' trains a task head, "
                            f"and {task.name} has none; its plain finetuning is flyp")
        world = recipe.data.options.get("seed", 0)
        for protocol, val in task.protocols.items():
            for spec in [*recipe.data.id, *recipe.data.ood]:
                label = spec.get("label") or spec["name"]
                same = (spec["name"] == val["name"]
                        and spec.get("seed", world) == val.get("seed", world)
                        and (task.domain_key is None
                             or bool(_domains(spec, task) & _domains(val, task))))
                if same or label == val["label"]:
                    raise FairUsage(f"validation set {val['label']} (protocol {protocol}) is the "
                                    f"reported test set {label} of {info.path}; choose on data "
                                    "that is not reported")


def build(args: argparse.Namespace) -> Fair:
    task = TASKS[args.task]
    infos = rb.distinct_names([rb._recipe(p, args.sets)
                               for p in (args.recipes or task.recipes)])
    seeds = list(dict.fromkeys(args.seeds or ([0, 1] if args.quick else [0, 1, 2])))
    pseeds = list(dict.fromkeys(args.pretrain_seeds or ([0] if args.quick else [0, 1, 2])))
    methods = {r.name for r in infos}
    cfg = rb.Config(
        recipes=infos, sweep=None, seeds=seeds, pseeds=pseeds, sweep_seeds=seeds[:2],
        steps=args.steps if args.steps is not None else (QUICK_STEPS if args.quick else None),
        user_sets=list(args.sets), val=[v["label"] for v in task.protocols.values()], betas=[],
        lambdas=[], wise=[m for m in methods if m != "zeroshot"],
        wise_alphas=args.wise_alphas or WISE_ALPHAS, kl_steps=0,
        out=args.out if args.out is not None else task.default_out,
        jobs=max(1, args.jobs), keep_weights=args.keep_weights)
    lengths = list(args.lengths if args.lengths is not None else
                   ([] if args.quick else task.lengths))
    if lengths and (len(pseeds) < 2 or min(lengths) < 1):
        raise FairUsage("--lengths needs two pretraining seeds (--pretrain-seeds) and lengths "
                        ">= 1")
    check_validation(infos, args.sets, task)
    axes = {m: a for m, a in (QUICK_GRIDS if args.quick else FULL_GRIDS).items() if m in methods}
    own, grid = _grids(cfg, axes)
    return Fair(cfg, rb.Plan(cfg), axes, own, grid, lengths,
                QUICK_MAX_EXTENSIONS if args.quick else MAX_EXTENSIONS, task=task)


# --------------------------------------------------------------------------- the phases


def _value_text(key: str, value: float) -> str:
    return str(int(value)) if key == "train.lp_steps" else rb._float(value)


def point_run(fair: Fair, method: str, point: dict[str, float], pseed: int, seed: int,
              role: str, extra: Sequence[str] = (), suffix: str = "") -> rb.Run:
    """The run of ``method`` at ``point``: only the keys off the recipe's values are set, so the
    recipe's own point is the plain recipe's run (shared with every phase that runs it)."""
    moved = _moved_items(fair, method, point)
    variant = [f"{k}={_value_text(k, v)}" for k, v in moved] + list(extra)
    return fair.plan.run(fair.recipe(method), pseed, seed, variant,
                         _tag(moved, suffix), role)


def _moved_items(fair: Fair, method: str, point: dict[str, float]) -> list[tuple[str, float]]:
    own = fair.own.get(method, {})
    return [(k, v) for k, v in point.items() if not math.isclose(v, own[k])]


def _tag(moved: Sequence[tuple[str, float]], suffix: str = "") -> str:
    return "-".join([f"{k.split('.')[-1]}{v:g}" for k, v in moved] + ([suffix] if suffix else []))


def val_task(fair: Fair, run: rb.Run) -> rb.Task:
    """One ``tracer eval`` scoring a run on both protocols' validation sets."""
    name = f"{run.name}.fairval"
    if name not in fair.plan.tasks:
        tables = ", ".join("{" + ", ".join(f"{k} = {v!r}".replace("'", '"') for k, v in s.items())
                           + "}" for s in fair.task.protocols.values())
        argv = ["eval", str(run.run_dir), "--set", f"data.ood=[{tables}]", "--json"]
        fair.plan.tasks[name] = rb.Task(name, argv, fair.cfg.runs_dir / f"{name}.json", run,
                                        "val", deps=(run.name,))
    return fair.plan.tasks[name]


def sweep(fair: Fair) -> list[rb.Run]:
    """Phase 1: every grid point of every tuned method x the sweep seeds, on the first
    pretrained model, each with its validation task (asking again adds only new points)."""
    runs = []
    for method, grid in fair.grid.items():
        for point in coordinate_points(fair.own[method], grid):
            for seed in fair.cfg.sweep_seeds:
                run = point_run(fair, method, point, fair.cfg.pseeds[0], seed, "sweep")
                val_task(fair, run)
                runs.append(run)
    return runs


def scores(fair: Fair, method: str, protocol: str) -> dict[str, dict[float, list[float]]]:
    """Per axis and value, the validation scores (the task's primary metric, one per sweep seed
    measured so far)."""
    own = fair.own[method]
    return {key: {value: point_scores(fair, method, {**own, key: value}, protocol)
                  for value in values} for key, values in fair.grid[method].items()}


def choose_point(fair: Fair, method: str, protocol: str) -> dict[str, float]:
    """Per axis the value with the best mean validation score (ties: the recipe's value): the
    axes' winners combined, which the coordinate sweep has run only when at most one of them
    is off the recipe's value (see :func:`final_point`)."""
    point = dict(fair.own[method])
    for key, by_value in scores(fair, method, protocol).items():
        done = {v: float(np.mean(a)) for v, a in by_value.items() if a}
        if done:
            point[key] = rb.choose_value(list(done), list(done.values()), fair.own[method][key])
    return point


def point_scores(fair: Fair, method: str, point: dict[str, float], protocol: str
                 ) -> list[float]:
    """The validation scores of ``point``'s sweep-seed runs measured so far (none when the
    point was never planned or has not run)."""
    label = fair.task.protocols[protocol]["label"]
    tag = _tag(_moved_items(fair, method, point))
    accs = []
    for seed in fair.cfg.sweep_seeds:  # point_run's names, looked up (planning nothing)
        name = fair.plan.run_name(method, fair.cfg.pseeds[0], seed, tag)
        task = fair.plan.tasks.get(f"{name}.fairval")
        if task is not None and task.result:
            accs.append(task.result["datasets"][label][fair.task.primary])
    return accs


def combined_runs(fair: Fair) -> list[rb.Run]:
    """Phase 1b: per method and protocol, the axes' winners combined when two or more of them
    are off the recipe's values (a point the coordinate sweep never ran), at the sweep seeds
    with its validation task, so that no choice goes unvalidated."""
    runs = []
    for method in fair.grid:
        for protocol in fair.task.protocols:
            point = choose_point(fair, method, protocol)
            if len(_moved_items(fair, method, point)) < 2:
                continue
            for seed in fair.cfg.sweep_seeds:
                run = point_run(fair, method, point, fair.cfg.pseeds[0], seed, "sweep")
                val_task(fair, run)
                runs.append(run)
    return runs


def final_point(fair: Fair, method: str, protocol: str
                ) -> tuple[dict[str, float], dict[str, Any] | None]:
    """The protocol's choice for ``method``, always a point with measured validation scores:
    the axes' winners combined when that is a sweep point, or when its own runs
    (:func:`combined_runs`) score at least the best sweep point's mean; otherwise the best
    sweep point (ties: the recipe's point, else the first in the sweep's order). The second
    item says what was compared when the combination was not a sweep point."""
    combined = choose_point(fair, method, protocol)
    if len(_moved_items(fair, method, combined)) < 2:
        return combined, None
    means = []
    for point in coordinate_points(fair.own[method], fair.grid[method]):
        accs = point_scores(fair, method, point, protocol)
        if accs:
            means.append((float(np.mean(accs)), point))
    accs = point_scores(fair, method, combined, protocol)
    if not means or not accs:  # not run yet (a dry run): the combination stands
        return combined, None
    top = max(m for m, _ in means)
    best = next(p for m, p in means if m >= top - 1e-12)  # the recipe's point comes first
    score = float(np.mean(accs))
    kept = score >= top - 1e-12
    return (combined if kept else best), {
        "combined": combined, "combined_score": score, "best_sweep": best,
        "best_sweep_score": top, "kept": "combined" if kept else "best sweep point"}


def extend(fair: Fair) -> list[tuple[str, str, float]]:
    """Add one value beyond every edge that a protocol's winner sits on (see the module's
    docstring); returns the (method, key, value) added, none when every winner is interior."""
    added = []
    for method, axes in fair.axes.items():
        steps = fair.cfg.steps_of(fair.recipe(method))
        winners = [choose_point(fair, method, p) for p in fair.task.protocols]
        for axis in axes:
            values = fair.grid[method][axis.key]
            for low in (True, False):
                edge = min(values) if low else max(values)
                side = (method, axis.key, low)
                if (not any(math.isclose(w[axis.key], edge) for w in winners)
                        or fair.extended.get(side, 0) >= fair.max_extensions):
                    continue
                new = beyond(axis, values, low, steps)
                if new is not None:
                    values.append(new)
                    fair.extended[side] = fair.extended.get(side, 0) + 1
                    added.append((method, axis.key, new))
    return added


def main_runs(fair: Fair, choices: dict[str, dict[str, dict[str, float]]]) -> list[rb.Run]:
    """Phase 2: every recipe x pretraining seed x seed at each protocol's chosen point (the
    zero-shot recipe as it is), with WiSE-FT on every finetuned run; TRACER also at its
    recipe's point (role main-recipe)."""
    runs = []
    for protocol, chosen in choices.items():
        for info in fair.cfg.recipes:
            for pseed in fair.cfg.pseeds_of(info):
                for seed in fair.cfg.seeds:
                    run = point_run(fair, info.name, chosen.get(info.name, {}), pseed, seed,
                                    f"main-{protocol}")
                    if info.method != "zeroshot":
                        fair.plan.evaluation(run, "wise")
                    runs.append(run)
    if PROPOSED in fair.own:  # the recipe's (the paper's) weights beside the tuned point
        for pseed in fair.cfg.pseeds_of(fair.recipe(PROPOSED)):
            for seed in fair.cfg.seeds:
                run = point_run(fair, PROPOSED, fair.own[PROPOSED], pseed, seed, "main-recipe")
                fair.plan.evaluation(run, "wise")
                runs.append(run)
    return runs


def lag_task(fair: Fair, run: rb.Run) -> rb.Task:
    """``tracer distill-check --run RUN --json``: the teacher's lag, analytic and measured."""
    name = f"{run.name}.lag"
    if name not in fair.plan.tasks:
        argv = ["distill-check", "--run", str(run.run_dir), "--json"]
        fair.plan.tasks[name] = rb.Task(name, argv, fair.cfg.runs_dir / f"{name}.json", run,
                                        "lag", deps=(run.name,))
    return fair.plan.tasks[name]


def persistence_runs(fair: Fair, chosen: dict[str, dict[str, float]]
                     ) -> list[tuple[str, int, rb.Run]]:
    """Phase 3: (group, length, run) for FLYP (with WiSE-FT), CaRot, CaRot with its update
    interval scaled to the length, and TRACER at each length, on the first two pretrained
    models and the sweep seeds; distill-check beside every teacher run."""
    out = []
    for length in fair.lengths:
        for method in [m for m in PERSISTENCE if m in fair.own]:
            info = fair.recipe(method)
            arms = [(method, [])]
            if method == "carot":
                every = _update_every(fair, info, length)
                arms.append((SCALED, [] if every is None else
                             [f"teacher.update_every={every}"]))
            for group, scaled in arms:
                base = fair.cfg.steps_of(info)
                extra = [*rb.steps_overrides(info, length, always=length != base), *scaled]
                parts = ([f"n{length}"] if length != base else [])
                suffix = "-".join(parts + [f"k{s.split('=')[1]}" for s in scaled])
                for pseed in fair.cfg.pseeds[:2]:
                    for seed in fair.cfg.sweep_seeds:
                        run = point_run(fair, method, chosen[method], pseed, seed,
                                        "persistence", extra, suffix)
                        if method == "flyp":
                            fair.plan.evaluation(run, "wise")
                        else:
                            lag_task(fair, run)
                        out.append((group, length, run))
    return out


def _update_every(fair: Fair, info: rb.RecipeInfo, length: int) -> int | None:
    """CaRot's EMA update interval scaled from its recipe's length to ``length`` (the same
    number of updates per run); None when that is the recipe's own interval."""
    own = int(_own_value(info.path, fair.cfg.user_sets, "teacher.update_every", info.steps))
    every = max(1, round(own * length / info.steps))
    return None if every == own else every


# --------------------------------------------------------------------------- the plan, dry


def _commands(title: str, tasks: Sequence[rb.Task]) -> None:
    print(f"# {title}")
    for t in tasks:
        print(f"{'(cached) ' if t.cached else ''}python -m tracer_cli {shlex.join(t.argv)}")


def _minutes(fair: Fair, tasks: Sequence[rb.Task]) -> float:
    finetunes = [t for t in rb._pending(tasks) if t.kind == "finetune"]
    builds = len({(t.run.recipe.arch, t.run.pseed) for t in finetunes
                  if t.run.recipe.embedded
                  and not rb.embedded_cached((t.run.recipe.arch, t.run.pseed))})
    return rb.estimate_s(tasks, fair.cfg, builds, fair.task.step_s)[0] / 60


def plan_all(fair: Fair) -> dict[str, list[rb.Task]]:
    """Every phase planned with each method at its recipe's point (what a dry run can show
    before the sweep has chosen), tasks by phase; the cache resolved."""
    phases: dict[str, list[rb.Task]] = {}
    seen: set[str] = set()
    own = {**fair.own, **{r.name: {} for r in fair.cfg.recipes if r.name not in fair.own}}
    for phase, make in (("sweep", lambda: sweep(fair)),
                        ("main", lambda: main_runs(fair, {p: own for p in fair.task.protocols})),
                        ("persistence", lambda: persistence_runs(fair, own))):
        make()
        phases[phase] = [t for n, t in fair.plan.tasks.items() if n not in seen]
        seen |= set(fair.plan.tasks)
    rb.resolve_cache(list(fair.plan.tasks.values()))
    return phases


def trial_counts(fair: Fair) -> dict[str, tuple[int, int]]:
    """(grid points, seeds) per tuned method in the sweep as planned now."""
    return {m: (len(coordinate_points(fair.own[m], g)), len(fair.cfg.sweep_seeds))
            for m, g in fair.grid.items()}


def dry_run(fair: Fair) -> int:
    """Print the plan by phase, the trials per method and an estimate; run nothing."""
    phases = plan_all(fair)
    for phase, tasks in phases.items():
        _commands(f"phase {phase}", tasks)
    print()
    for method, (points, seeds) in trial_counts(fair).items():
        axes = ", ".join(f"{k} {' '.join(f'{v:g}' for v in vals)}"
                         for k, vals in fair.grid[method].items())
        print(f"sweep {method}: {points} points x {seeds} seeds ({axes})")
    everything = [t for tasks in phases.values() for t in tasks]
    finetunes = [t for t in everything if t.kind == "finetune"]
    print(f"finetune runs: {len(finetunes)} ({len(finetunes) - len(rb._pending(finetunes))} "
          f"cached); evaluations: {len(everything) - len(finetunes)}")
    for phase, tasks in phases.items():
        print(f"estimate {phase}: {_minutes(fair, tasks):.0f} min")
    worst = sum(2 * len(a) * len(fair.cfg.sweep_seeds) for a in fair.axes.values())
    sweep_runs = sum(t.kind == "finetune" for t in phases["sweep"])
    round_min = _minutes(fair, phases["sweep"]) * worst / max(1, sweep_runs)
    print(f"estimate: {_minutes(fair, everything):.0f} min with --jobs {fair.cfg.jobs} "
          f"(~{rb.EST_OVERHEAD_S:.0f} s + {fair.task.step_s} s/step a run at 1 thread, calibrated "
          f"on {fair.task.calibration}), every method at its recipe's "
          f"point; each grid-extension round adds at most {worst} runs (~{round_min:.0f} min; "
          f"at most {fair.max_extensions} per grid edge), a combination of two or more axes' "
          f"winners adds {len(fair.cfg.sweep_seeds)} runs per method and protocol, and phases "
          "2-3 grow when a protocol chooses a point off the recipe's")
    for note in fair.task.notes:
        print(f"note: {note}")
    return 0


# --------------------------------------------------------------------------- running it


class _Pruner(rb.Pruner):
    """robustness's pruner, but a sweep run keeps last.pt until the choice is made: it may be
    a main run (the same command) that WiSE-FT still evaluates."""

    def __call__(self, task: rb.Task) -> None:
        if self.final or "sweep" not in task.run.roles:
            super().__call__(task)
        elif not self.cfg.keep_weights:
            rb.prune_weights([task.run], keep_last=True)


def _execute_pending(fair: Fair, ui: rb.Ui, ex: rb.Executor) -> None:
    """Run every planned task not yet done (cached ones are taken), pretrained model by model."""
    tasks = list(fair.plan.tasks.values())
    rb.resolve_cache(tasks)
    todo = rb.model_major(rb._pending(tasks))
    rb.add_build_barriers(todo)
    ui.set_total(ui.done + len(todo))
    ex.execute(todo)
    rb._finish_wave(tasks)


def execute(fair: Fair, ui: rb.Ui, ex: rb.Executor, pruner: _Pruner
            ) -> dict[str, dict[str, dict[str, float]]]:
    """The sweep and its extension rounds, then phases 2 and 3 at the chosen points; the
    choices by protocol and method."""
    sweep(fair)
    _execute_pending(fair, ui, ex)
    while extend(fair):
        sweep(fair)
        _execute_pending(fair, ui, ex)
    combined_runs(fair)
    _execute_pending(fair, ui, ex)
    choices = {p: {m: final_point(fair, m, p)[0] for m in fair.own}
               for p in fair.task.protocols}
    main_runs(fair, choices)
    persistence_runs(fair, choices["id"])
    pruner.final = True
    _execute_pending(fair, ui, ex)
    return choices


# --------------------------------------------------------------------------- the numbers


def headline(panel: dict[str, Any], x: str = "id_accuracy", y: str = "avg_ood_accuracy"
             ) -> list[dict[str, Any]]:
    """Per finetuned student row, its gap to the best baseline's WiSE-FT curve at its own ID
    score ``x`` (the task's ID and average OOD keys: ``x``, ``y``): ``tracer compare``'s
    headline (:func:`tables.headline_table`: the highest curve there but the row's own, SE of
    the row's and the curve's OOD means combined) with every curve but TRACER's as a baseline."""
    baselines = [g for g in panel.get("wise", {}) if g not in NOT_BASELINES]
    if not baselines:
        return []
    out = []
    for e in headline_table(panel["rows"], panel["wise"], baselines, x, y):
        found = e["gap"] is not None
        out.append({"row": e["row"], "id": e["id"], "ood": e["ood"],
                    "curve": e["curve"] if found else None,
                    "curve_ood": e["curve_ood"] if found else None,
                    "gap": e["gap"], "se": e["se"],
                    "verdict": e["verdict"] if found else "outside every baseline curve"})
    return out


def _records(fair: Fair, role: str, group: dict[str, str] | None = None
             ) -> list[dict[str, Any]]:
    recs = []
    for run in fair.plan.runs.values():
        if role in run.roles:
            rec = rb.run_record(run, fair.plan)
            recs.append({**rec, "group": (group or {}).get(run.name, rec["group"])})
    return recs


def protocol_results(fair: Fair, protocol: str, chosen: dict[str, dict[str, float]]
                     ) -> dict[str, Any]:
    """One protocol's choice, sweep scores, panels (tracer compare's analysis) and headline;
    TRACER at its recipe's point is the row ``tracer (recipe)``."""
    recipe_runs = {r.name: RECIPE_ROW for r in fair.plan.runs.values()
                   if "main-recipe" in r.roles}
    records = _records(fair, f"main-{protocol}") + _records(fair, "main-recipe", recipe_runs)
    groups = [r.name for r in fair.cfg.recipes] + sorted(set(recipe_runs.values()))
    keys = fair.task.keys
    panels = analyse(records, groups, rb.REFERENCES, keys)
    combined = {m: note for m in fair.own
                for note in [final_point(fair, m, protocol)[1]] if note}
    return {"validation": fair.task.protocols[protocol], "choice": chosen,
            "combined": combined,
            "scores": {m: {k: {f"{v:g}": a for v, a in by.items()}
                           for k, by in scores(fair, m, protocol).items()} for m in fair.own},
            "panels": panels, "headline": [headline(p, *keys[:2]) for p in panels]}


def _lag(task: rb.Task | None) -> dict[str, Any] | None:
    doc = task.result if task else None
    if not doc:
        return None
    measured = ((doc.get("empirical") or {}).get("param_ratio") or {}).get("tail")
    return {"relative_lag_final": doc.get("relative_lag_final"), "param_ratio_tail": measured}


def persistence_results(fair: Fair, chosen: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Per length and pretrained model, each group's gap to FLYP's WiSE-FT curve of the same
    length (the headline's: SE of the row's and the curve's OOD means combined), with the
    teacher's lag (mean over runs) from distill-check."""
    out = []
    zero = [r for r in _records(fair, "main-id") if r["method"] == "zeroshot"]
    for length in fair.lengths:
        runs = [(g, r, {**rb.run_record(r, fair.plan), "group": g})
                for g, n, r in persistence_runs(fair, chosen) if n == length]
        groups = ["zeroshot", *dict.fromkeys(g for g, _, _ in runs)]
        for panel in analyse(zero + [rec for _, _, rec in runs], groups, ("flyp",),
                             fair.task.keys):
            for entry in panel["headline"]:
                if entry["curve"] not in ("flyp", None) or entry["row"] not in groups:
                    continue
                lags = [_lag(fair.plan.tasks.get(f"{r.name}.lag")) for g, r, rec in runs
                        if g == entry["row"] and rec["pretrained"] == panel["pretrained"]]
                out.append({"length": length, "pretrained": panel["pretrained"],
                            "group": entry["row"], **entry, "lag": _mean_lag(lags)})
    return out


def _mean_lag(lags: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The mean of each lag number over the runs that have it."""
    present = [lag for lag in lags if lag]
    if not present:
        return None
    out = {}
    for key in ("relative_lag_final", "param_ratio_tail"):
        values = [lag[key] for lag in present if lag.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


def sweep_points(fair: Fair) -> list[dict[str, Any]]:
    """Every sweep point's test numbers (mean over the sweep seeds), for the frontier plot:
    shown, never used for choosing."""
    out = []
    for method, grid in fair.grid.items():
        points = coordinate_points(fair.own[method], grid)
        for protocol in fair.task.protocols:  # the combinations that ran (combined_runs)
            note = final_point(fair, method, protocol)[1]
            if note and note["combined"] not in points:
                points.append(note["combined"])
        for point in points:
            runs = [point_run(fair, method, point, fair.cfg.pseeds[0], seed, "sweep")
                    for seed in fair.cfg.sweep_seeds]
            students = [rb.run_record(r, fair.plan)["models"]["student"] for r in runs]
            out.append({"method": method, "point": point, "runs": [r.name for r in runs],
                        **{k: float(np.mean([s[k] for s in students]))
                           for k in fair.task.keys[:2]}})
    return out


def plot_frontier(res: dict[str, Any], path: Path) -> Path:
    """Per protocol (first pretrained model): every method's WiSE-FT curve and chosen point,
    TRACER at its recipe's point, and every sweep point (small), on the task's ID and average
    OOD keys."""
    from matplotlib.figure import Figure

    task = TASKS[res.get("task", "classification")]
    x, y = task.keys[:2]
    protocols = res["protocols"]
    figure = Figure(figsize=(7.5 * len(protocols), 5.5))
    for ax, (protocol, doc) in zip(figure.subplots(1, len(protocols), squeeze=False)[0],
                                   protocols.items()):
        panel = doc["panels"][0]
        colors = {}
        for i, (group, curve) in enumerate(panel["wise"].items()):
            colors[group] = f"C{i % 10}"
            curve = [p for p in curve if p.get(x) and p.get(y)]
            ax.plot([100 * p[x][0] for p in curve], [100 * p[y][0] for p in curve], "-",
                    color=colors[group], alpha=0.6, label=f"{group} WiSE-FT")
        for row in panel["rows"]:
            if (row["model"] == "student" and row["method"] != "zeroshot"
                    and row.get(x) and row.get(y)):
                xy = (100 * row[x][0], 100 * row[y][0])
                ax.plot(*xy, "s" if row["group"] == RECIPE_ROW else "o",
                        color=colors.get(row["group"], "k"), markersize=8)
                ax.annotate(row["label"], xy, fontsize=7, xytext=(4, 4),
                            textcoords="offset points")
        for point in res["sweep_points"]:
            ax.plot(100 * point[x], 100 * point[y], ".", color=colors.get(point["method"], "k"),
                    alpha=0.5)
        ax.set_title(f"selected on {doc['validation']['label']} ({protocol})")
        ax.set_xlabel(f"ID {task.metric} (%)")
        ax.set_ylabel(f"average OOD {task.metric} (%)")
        ax.legend(fontsize=7)
    return save(figure, path)


def plot_persistence(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Gap to FLYP's WiSE-FT curve against training length, one panel per pretrained model
    (a group outside the curve's ID range at a length has no point there)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    models = list(dict.fromkeys(r["pretrained"] for r in rows))
    figure = Figure(figsize=(6.5 * max(1, len(models)), 4.5))
    for ax, model in zip(figure.subplots(1, max(1, len(models)), squeeze=False)[0], models):
        for group in dict.fromkeys(r["group"] for r in rows):
            mine = [r for r in rows if r["pretrained"] == model and r["group"] == group
                    and r["gap"] is not None]
            ax.errorbar([r["length"] for r in mine], [100 * r["gap"] for r in mine],
                        yerr=[200 * r["se"] for r in mine], marker="o", capsize=3, label=group)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        lengths = sorted({r["length"] for r in rows})
        ax.set_xticks(lengths, [f"{n:,}" for n in lengths])
        ax.xaxis.set_minor_formatter(NullFormatter())  # no overprinted 3x10^2 labels
        ax.set_xlabel("training steps")
        ax.set_ylabel("gap to FLYP's WiSE-FT curve (pp, ± 2 SE)")
        ax.set_title(model, fontsize=9)
        ax.legend(fontsize=7)
    return save(figure, path)


def _pct(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{100 * value:+.2f}" + (f" ± {100 * se:.2f}" if se is not None else "")


def report_block(res: dict[str, Any]) -> str:
    """The Markdown between the task's fair markers: choices, headline per protocol,
    persistence."""
    task = TASKS[res.get("task", "classification")]
    lines = [f"## {task.title}", "", f"Generated by `{res['command']}` on {res['date']} "
             f"({time_text(res)}). Every number is in `{res['out']}/{task.marker}.json`;"
             " the selection rule, grids and protocols are in benchmarks/fair.py's docstring.",
             *[f"Note: {note}." for note in task.notes], ""]
    for protocol, doc in res["protocols"].items():
        lines += [f"### Selected on {doc['validation']['label']} ({protocol})", "",
                  "| method | chosen | recipe |", "|---|---|---|"]
        for method, point in doc["choice"].items():
            own = res["own"][method]
            lines.append(f"| {method} | {', '.join(f'{k} {v:g}' for k, v in point.items())} | "
                         f"{', '.join(f'{k} {v:g}' for k, v in own.items())} |")
        notes = [f"- {method}: the axes' winners combined "
                 f"({', '.join(f'{k} {v:g}' for k, v in note['combined'].items())}) scored "
                 f"{100 * note['combined_score']:.2f} on {doc['validation']['label']} against "
                 f"{100 * note['best_sweep_score']:.2f} for the best sweep point; the "
                 f"{note['kept']} is used."
                 for method, note in doc.get("combined", {}).items()]
        if notes:
            lines += ["", *notes]
        for panel, rows in zip(doc["panels"], doc["headline"]):
            lines += ["", f"{panel['pretrained']}: gap (pp) of avg OOD to the best baseline's "
                      f"WiSE-FT curve at the row's ID {task.metric}", "",
                      "| row | ID | avg OOD | best baseline curve | gap ± SE | verdict |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {r['row']} | {100 * r['id']:.2f} | {100 * r['ood']:.2f} | "
                      f"{r['curve'] or '—'} | {_pct(r['gap'], r['se'])} | {r['verdict']} |"
                      for r in rows]
        lines.append("")
    if res["persistence"]:
        lines += ["### Persistence over training length", "",
                  "| steps | model | row | gap to FLYP WiSE-FT ± SE | verdict | ρ(T) | measured "
                  "‖θ − φ‖/‖θ − θ₀‖ (tail) |", "|---|---|---|---|---|---|---|"]
        for r in res["persistence"]:
            lag = r["lag"] or {}
            lines.append(f"| {r['length']} | {r['pretrained']} | {r['group']} | "
                         f"{_pct(r['gap'], r['se'])} | {r['verdict']} | "
                         f"{_num(lag.get('relative_lag_final'))} | "
                         f"{_num(lag.get('param_ratio_tail'))} |")
    lines += ["", *[f"![{k}]({v})" for k, v in res["figures"].items()]]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def assemble(fair: Fair, choices: dict[str, dict[str, dict[str, float]]], argv: Sequence[str],
             wall_s: float) -> dict[str, Any]:
    """Everything fair.json holds and the report is made from."""
    import datetime

    return {"date": datetime.date.today().isoformat(),
            "command": "python benchmarks/fair.py " + shlex.join(argv), "wall_min": wall_s / 60,
            "out": str(fair.cfg.out), "own": fair.own,
            "grids": {m: {k: sorted(v) for k, v in g.items()} for m, g in fair.grid.items()},
            "extensions": [{"method": m, "key": k, "low_side": low, "added": n}
                           for (m, k, low), n in fair.extended.items()],
            "task": fair.task.name,
            "protocols": {p: protocol_results(fair, p, choices[p]) for p in fair.task.protocols},
            "sweep_points": sweep_points(fair),
            "persistence": persistence_results(fair, choices["id"]),
            "runs": [rb.run_record(r, fair.plan) for r in fair.plan.runs.values()]}


def finish(fair: Fair, args: argparse.Namespace, res: dict[str, Any]) -> None:
    """Figures, fair.json and the report block (each written atomically)."""
    from cli_runs import replace_block

    task = fair.task
    res["figures"] = {"frontier": str(plot_frontier(res, args.figures / task.figure("frontier")))}
    if res["persistence"]:
        res["figures"]["persistence"] = str(plot_persistence(
            res["persistence"], args.figures / task.figure("persistence")))
    rb._write_json(fair.cfg.out / f"{task.marker}.json", res)
    replace_block(args.report, report_block(res), task.marker)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=list(TASKS), default="classification",
                   help="the benchmark's task: its recipes, validation sets, metric and report "
                        "block (default classification)")
    p.add_argument("--quick", action="store_true",
                   help=f"quick grids, {QUICK_STEPS}-step runs, one pretraining seed, no "
                        "persistence phase (unless --lengths)")
    p.add_argument("--recipes", nargs="+", metavar="FILE",
                   help="one recipe per method (default: recipes/synth_<method>.toml; --task "
                        "vqa: recipes/vqa_<method>.toml and quickstart_vqa.toml; --task "
                        "retrieval: recipes/retrieval_<method>.toml and quickstart_retrieval.toml)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="finetuning seeds (default 0 1 2; --quick 0 1); the first two are the "
                        "sweep's")
    p.add_argument("--pretrain-seeds", type=int, nargs="+", metavar="P",
                   help="pretraining seeds of the embedded tiny CLIP (default 0 1 2; --quick 0)")
    p.add_argument("--steps", type=int, help=f"train.steps of every run (--quick {QUICK_STEPS})")
    p.add_argument("--lengths", type=int, nargs="*", metavar="N",
                   help="persistence lengths (default 500 2000 8000 for classification, none "
                        "for vqa and retrieval; --quick none)")
    p.add_argument("--wise-alphas", type=float, nargs="+", metavar="A",
                   help="WiSE-FT mixing coefficients (default 0.25 0.5 0.75)")
    p.add_argument("--out", type=Path,
                   help="runs, caches and results (default runs/fair, runs/fair-vqa, "
                        "runs/fair-retrieval: one per task)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    p.add_argument("--set", dest="sets", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE", help="override a recipe key in every run")
    p.add_argument("--report", type=Path, default=Path("BENCHMARKS.md"))
    p.add_argument("--figures", type=Path, default=Path("benchmarks/figures"))
    p.add_argument("--keep-weights", action="store_true")
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned commands, the trials per method and an estimate")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        fair = build(args)
    except (FairUsage, rb.BenchmarkUsage) as exc:
        print(f"fair: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(fair)
    started, pruner = time.time(), _Pruner(fair.cfg, fair.plan)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with rb.Ui(0) as ui:
        ex = rb.Executor(fair.cfg, ui, pruner)
        try:
            choices = execute(fair, ui, ex, pruner)
        except rb.BenchmarkFailed as exc:
            print(f"fair: a run failed; finished runs stay cached in {fair.cfg.out}\n{exc}",
                  file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"fair: interrupted after {ui.done} tasks; finished runs stay cached in "
                  f"{fair.cfg.out}: rerun the same command to resume", file=sys.stderr)
            return rb.INTERRUPTED_EXIT
        finally:  # an interrupted invocation's time counts towards the plan's too
            ledger = record_time(fair, started, time.time() - started, ui.done, load)
    if not fair.cfg.keep_weights:
        rb.prune_weights(fair.plan.runs.values())
    argv_used = list(sys.argv[1:] if argv is None else argv)
    res = assemble(fair, choices, argv_used, time.time() - started)
    res["time"] = ledger
    finish(fair, args, res)
    print(f"fair: {fair.cfg.out / f'{fair.task.marker}.json'}, {args.report}, figures in "
          f"{args.figures}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- time across resumes

def record_time(fair: Fair, started: float, wall_s: float, tasks_run: int,
                load: float | None) -> dict[str, Any]:
    """Append this invocation to ``OUT/<marker>-time.json`` (atomically) when it ran any task,
    and return the ledger: a plan that is resumed across invocations (and sessions) states the
    sum of their wall times, each with the 1-minute load average at its start, so a reader can
    tell an idle machine's time from a shared one's. An unreadable ledger starts afresh, with
    a warning (it holds timings only, never results)."""
    import datetime

    path = fair.cfg.out / f"{fair.task.marker}-time.json"
    ledger: dict[str, Any] = {"invocations": []}
    if path.exists():
        try:
            ledger = json.loads(path.read_text())
            if not isinstance(ledger.get("invocations"), list):
                raise ValueError("no 'invocations' list")
        except (OSError, ValueError, AttributeError) as exc:
            print(f"fair: {path} is unreadable ({exc}); timing starts afresh", file=sys.stderr)
            ledger = {"invocations": []}
    if tasks_run:
        ledger["invocations"].append({
            "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
            "wall_s": round(wall_s, 1), "tasks_run": tasks_run, "jobs": fair.cfg.jobs,
            "load_at_start": None if load is None else round(load, 2)})
        rb._write_json(path, ledger)
    return ledger


def time_text(res: dict[str, Any]) -> str:
    """How long the plan took: this invocation alone, or the sum over the invocations that ran
    its tasks when it was resumed."""
    runs = (res.get("time") or {}).get("invocations") or []
    if not runs:  # no ledger (older results) or nothing ran
        return f"{res['wall_min']:.0f} min"
    if len(runs) == 1:
        return f"{runs[0]['wall_s'] / 60:.0f} min"
    total = sum(r["wall_s"] for r in runs) / 60
    tasks = sum(r["tasks_run"] for r in runs)
    loads = [r["load_at_start"] for r in runs if r.get("load_at_start") is not None]
    load = f", load average at their starts {min(loads):.1f}-{max(loads):.1f}" if loads else ""
    return f"{total:.0f} min over {len(runs)} invocations, {tasks} tasks{load}"


if __name__ == "__main__":
    sys.exit(main())
