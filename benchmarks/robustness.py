"""Is TRACER more robust than its baselines? Methods x seeds through the real CLI, with statistics.

Runs every recipe (one per method: zero-shot, LP, FT, LP-FT, FLYP, CaRot, TRACER) for several
finetuning seeds and pretraining seeds through the real CLI, evaluates ID and every OOD domain,
and writes a results JSON, four figures and a Markdown section of BENCHMARKS.md.

    python benchmarks/robustness.py               # recipes/synth_*.toml, seeds 0 1 2, pretrain 0 1 2
    python benchmarks/robustness.py --quick       # short runs, one pretraining seed
    python benchmarks/robustness.py --dry-run     # the plan: commands, number of runs, estimate
    python benchmarks/robustness.py --recipes my_ft.toml my_flyp.toml my_tracer.toml \\
        --sweep-recipe my_tracer.toml --val my-val-set --pretrain-seeds 0

Methods and datasets come from the recipes: a method's name is the recipe's ``train.method``, else
the file stem; the ID and OOD sets are the recipe's ``data.id`` / ``data.ood``.

Phases
  1. Validation sweep: the sweep recipe over the β values (λ_sd at the recipe's value) and the λ_sd
     values (β at the recipe's value), on the first pretraining seed and the first two finetuning
     seeds (one with --quick); each run is evaluated on the validation set(s) (``--val``, which
     must not be a reported test domain) with ``tracer eval RUN --ood VAL``. β and λ_sd are each
     chosen to maximise the mean validation accuracy; ties go to the recipe's own value.
  2. Main table: every recipe x pretraining seed x finetuning seed; the sweep recipe runs with the
     chosen β and λ_sd. A run with the same command as one already made is reused. The zero-shot
     runs go with phase 1 (they build every pretrained model while the sweep runs); the rest
     runs pretrained model by pretrained model, so an interrupted benchmark leaves whole models
     behind, which ``--pretrain-seeds`` naming them reports from the cache.
  3. WiSE-FT: ``tracer eval RUN --wise-alpha ...`` on every run of the methods in ``--wise``; the
     curve is averaged over runs.
  4. Teacher-student KL: the sweep recipe as it is (WMA teacher) against the same recipe with an
     EMA teacher updated every max(1, steps // 50) steps (as many updates per run as CaRot's 500
     of 25k steps), one seed, plus the CaRot run of that seed when there is one.

Each finetune child gets OMP_NUM_THREADS = MKL_NUM_THREADS = max(1, cpu_count // jobs). Every
result is cached next to its run (``OUT/runs/NAME.robustness.json``, ``NAME.val.json``,
``NAME.wise.json``, keyed by the full command, the recipe file's hash and, for the embedded CLIP, the
file name of its weights, which carries their digest), so a second invocation
resumes instead of recomputing. Finished runs keep their numbers but, unless --keep-weights, lose
their checkpoints once every evaluation that needs them is done (about 190 MB per tiny run).

Statistics, tables and the ID-vs-OOD figure come from tracer_cli.analysis, the code behind
``tracer compare`` (this script plans and runs; docs/compare.md describes the numbers; the report
block and the sweep and KL figures are this folder's ``_report.py`` and ``_plots.py``): per method
and dataset, the mean over runs with standard error sqrt(var_between_runs / n + mean binomial
variance / n); one table per pretrained model (pretraining seed), never pooled across them;
differences between methods paired by seed within a pretrained model, within noise when |mean| <
2 SE; each model against the WiSE-FT curves at its mean ID accuracy.

Outputs: ``OUT/results.json``; ``FIGURES/robustness_{id_vs_ood,beta_sweep,lambda_sweep,
kl_ema_vs_wma}.png``; the block between ``<!-- robustness:begin -->`` and
``<!-- robustness:end -->`` of ``--report`` (replaced when present, else appended with a place for
a hand-written interpretation after it; the rest of the file is left untouched).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import numpy as np

from tracer_cli import rundir
from tracer_cli.rundir import checksums
from tracer_cli.analysis.groups import read_run
from tracer_cli.analysis.groups import record as compare_record
from tracer_cli.analysis.plots import plot_id_vs_ood
from tracer_cli.analysis.stats import (
    average_binomial_var, binomial_var, mean_se, noise_verdict, paired_difference)
from tracer_cli.analysis.tables import aggregate, analyse, pair, pooled_paired
from tracer_cli.errors import TracerError
from tracer_cli.recipe import METHODS

# The benchmark's own report block and figures live beside this script; when it is imported by
# path (the tests, fair.py) rather than run, this folder is not on sys.path yet.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _plots import plot_kl, plot_sweep  # noqa: E402
from _report import ROBUSTNESS_KEYS, write_robustness_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPES = [f"recipes/synth_{m}.toml" for m in METHODS]
DEFAULT_SWEEP = "recipes/synth_tracer.toml"
BETAS = [0.2, 0.5, 1.0]
LAMBDAS = [0.1, 0.9, 5.0]
QUICK_LAMBDAS = [0.1, 0.9, 5.0]
QUICK_STEPS = 150
# Interior points only: α = 1 is the run itself (its summary) and α = 0 the pretrained model (the
# zeroshot recipe's run of the same pretraining seed), so neither is evaluated again.
WISE_ALPHAS = [0.25, 0.5, 0.75]
QUICK_WISE_ALPHAS = [0.5]
REFERENCES = ("flyp", "tracer")
# CaRot updates its EMA teacher every 500 of 25k steps: 50 updates per run.
EMA_UPDATES_PER_RUN = 50
# Single-thread cost of one tiny-CLIP run on the embedded world when no cached run says better,
# calibrated on the robustness benchmark of BENCHMARKS.md (2 idle cores, 2 runs at 1 thread):
# zeroshot 20 s a run (start-up and the evaluations of 4 x 7,000 images), 500-step runs 67 s
# (FLYP) to 104 s (TRACER), so ~20 s + ~0.15 s a step; its 74 finetunes and 28 evaluations took
# 58 min, which this model puts at 60-61. On a busy machine a run took up to 3x longer. Building an
# embedded CLIP in one job slot (1 thread; build version 5, only when its weights are not
# shipped): ~22 min (768,000 images at ~580 img/s).
EST_OVERHEAD_S, EST_STEP_S = 20.0, 0.15
EST_EVAL_S, EST_EVAL_PER_MODEL_S, EST_BUILD_S = 8.0, 13.0, 1320.0


# --------------------------------------------------------------------------- choosing


def choose_value(values: Sequence[float], means: Sequence[float], own: float) -> float:
    """The value with the highest mean; among ties the recipe's own value, else the first."""
    best = max(means)
    tied = [v for v, m in zip(values, means) if abs(m - best) <= 1e-12]
    return own if any(math.isclose(v, own) for v in tied) else tied[0]


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class RecipeInfo:
    """What the benchmark needs to know about one recipe (after the user's --set overrides)."""

    path: str
    name: str
    sha256: str
    embedded: bool
    embedded_seed: int
    steps: int
    warmup_steps: int
    lp_steps: int
    beta: float
    lambda_sd: float
    datasets: tuple[str, ...]
    arch: str
    method: str = "tracer"  # the engine's train.method (its default when the recipe has none)


def read_recipe(path: str, overrides: Sequence[str]) -> RecipeInfo:
    """Read and validate a recipe with tracer's own loader (raises tracer's UsageError); the name
    is ``train.method`` or the file stem."""
    from tracer_cli import recipe as recipe_mod

    raw = recipe_mod.read_toml(Path(path))
    recipe = recipe_mod.from_dict(recipe_mod.apply_overrides(raw, list(overrides)), path)
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    options = recipe.model.options
    names = tuple(s.get("label") or s["name"] for s in recipe.data.id + recipe.data.ood)
    return RecipeInfo(
        path=path, name=str(train.get("method") or Path(path).stem),
        sha256=checksums.file_sha256(Path(path)),
        embedded=options.get("pretrained") == "embedded",
        embedded_seed=int(options.get("embedded_seed", 0) or 0), steps=recipe.train.steps,
        warmup_steps=recipe.train.warmup_steps, lp_steps=recipe.train.lp_steps,
        beta=recipe.teacher.beta, lambda_sd=recipe.distill.lambda_sd, datasets=names,
        arch=str(options.get("arch")), method=str(getattr(recipe.train, "method", "tracer")))


def distinct_names(infos: list[RecipeInfo]) -> list[RecipeInfo]:
    """Recipes sharing a method name are told apart by their file stems (then by position)."""
    counts: dict[str, int] = {}
    for info in infos:
        counts[info.name] = counts.get(info.name, 0) + 1
    out, seen = [], set()
    for i, info in enumerate(infos):
        name = info.name if counts[info.name] == 1 else Path(info.path).stem
        if name in seen:
            name = f"{name}-{i}"
        seen.add(name)
        out.append(RecipeInfo(**{**info.__dict__, "name": name}))
    return out


def steps_overrides(info: RecipeInfo, steps: int | None, always: bool = False) -> list[str]:
    """``train.steps=N`` plus the warm-up and LP-phase lengths scaled to it (the same schedule,
    shorter), so a recipe's own warm-up never exceeds the shortened run. Nothing when ``steps``
    is the recipe's own (unless ``always``)."""
    if steps is None or (steps == info.steps and not always):
        return []
    out = [f"train.steps={steps}"]
    if info.warmup_steps:
        warmup = min(steps, round(info.warmup_steps * steps / info.steps))
        out.append(f"train.warmup_steps={warmup}")
    if info.lp_steps:
        lp = max(1, min(steps - 1, round(info.lp_steps * steps / info.steps)))
        out.append(f"train.lp_steps={lp}")
    return out


def _float(value: float) -> str:
    """A float as TOML reads it back as a float (1 -> 1.0)."""
    return repr(float(value))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "run"


# --------------------------------------------------------------------------- the plan


@dataclass
class Run:
    """One finetune: a recipe at a pretraining seed, a seed and a variant of overrides."""

    name: str
    recipe: RecipeInfo
    pseed: int
    seed: int
    variant: tuple[str, ...]
    argv: list[str]
    run_dir: Path
    roles: set[str] = field(default_factory=set)
    summary: dict[str, Any] | None = None


@dataclass
class Task:
    """One CLI call (a finetune or an evaluation) with the record that caches its result."""

    name: str
    argv: list[str]
    record: Path
    run: Run
    kind: str  # "finetune" | "val" | "wise" | "lag"
    deps: tuple[str, ...] = ()
    result: Any = None
    cached: bool = False

    def key(self) -> dict[str, Any]:
        key = {"argv": self.argv, "recipe_sha256": self.run.recipe.sha256}
        if self.run.recipe.embedded:
            # The embedded weights' file name carries their digest (arch config, pretraining
            # recipe, build version): a run finetuned from an older build is not this run.
            from tracer_plugins.backbones.embedded import embedded_path

            key["embedded_weights"] = embedded_path(self.run.recipe.arch, self.run.pseed).name
        if self.kind != "finetune":
            summary = rundir.summary_path(self.run.run_dir)
            key["summary_sha256"] = (checksums.file_sha256(summary) if summary.is_file()
                                     else None)
        return key

    def load_cached(self) -> bool:
        """Take the cached result when its record matches this exact command."""
        try:
            record = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if record.get("key") != self.key():
            return False
        if self.kind == "finetune":
            summary = rundir.summary_path(self.run.run_dir)
            if not summary.is_file():
                return False
            self.result = json.loads(summary.read_text(encoding="utf-8"))
        else:
            self.result = record.get("result")
        self.cached = True
        return True


@dataclass
class Config:
    recipes: list[RecipeInfo]
    sweep: RecipeInfo | None
    seeds: list[int]
    pseeds: list[int]
    sweep_seeds: list[int]
    steps: int | None
    user_sets: list[str]
    val: list[str]
    betas: list[float]
    lambdas: list[float]
    wise: list[str]
    wise_alphas: list[float]
    kl_steps: int | None
    out: Path
    jobs: int
    keep_weights: bool
    notes: list[str] = field(default_factory=list)

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    def pseeds_of(self, recipe: RecipeInfo) -> list[int]:
        """Pretraining seeds only vary the embedded tiny CLIP; other models run at the first."""
        return self.pseeds if recipe.embedded else self.pseeds[:1]

    def steps_of(self, recipe: RecipeInfo) -> int:
        return self.steps or recipe.steps

    def tuned(self, recipe: RecipeInfo) -> bool:
        """Whether ``recipe`` is the one the sweep tunes (it runs with the chosen β and λ_sd)."""
        if self.sweep is None:
            return False
        same = Path(recipe.path).resolve() == Path(self.sweep.path).resolve()
        return same or (recipe.name == self.sweep.name and not any(
            Path(r.path).resolve() == Path(self.sweep.path).resolve() for r in self.recipes))


class Plan:
    """Runs and tasks by name; asking twice for the same run returns the same object."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.runs: dict[str, Run] = {}
        self.tasks: dict[str, Task] = {}

    @staticmethod
    def run_name(recipe_name: str, pseed: int, seed: int, tag: str) -> str:
        """The name :meth:`run` gives (and looks a run up by)."""
        return f"{_slug(recipe_name)}{'-' + tag if tag else ''}_p{pseed}_s{seed}"

    def run(self, recipe: RecipeInfo, pseed: int, seed: int, variant: Sequence[str], tag: str,
            role: str) -> Run:
        name = self.run_name(recipe.name, pseed, seed, tag)
        if name not in self.runs:
            sets = [f"run.name={name}", f"run.seed={seed}", "train.checkpoint_every=0",
                    *self.cfg.user_sets, *steps_overrides(recipe, self.cfg.steps)]
            if recipe.embedded and pseed != recipe.embedded_seed:
                sets.append(f"model.embedded_seed={pseed}")
            if recipe.method != "zeroshot" and any(r.method == "zeroshot"
                                                   for r in self.cfg.recipes):
                # The zeroshot recipe's run evaluates the pretrained model once per pretraining
                # seed; every other run would only repeat that evaluation.
                sets.append("run.eval_zeroshot=false")
            sets += variant
            argv = ["finetune", recipe.path, "--output-dir", str(self.cfg.runs_dir),
                    "--overwrite", "--json", *[a for s in sets for a in ("--set", s)]]
            run = Run(name, recipe, pseed, seed, tuple(variant), argv, self.cfg.runs_dir / name)
            self.runs[name] = run
            self.tasks[name] = Task(name, argv, self.cfg.runs_dir / f"{name}.robustness.json",
                                    run, "finetune")
        self.runs[name].roles.add(role)
        return self.runs[name]

    def evaluation(self, run: Run, kind: str) -> Task:
        name = f"{run.name}.{kind}"
        if name not in self.tasks:
            extra = (["--ood", ",".join(self.cfg.val)] if kind == "val" else
                     ["--wise-alpha", ",".join(f"{a:g}" for a in self.cfg.wise_alphas)])
            argv = ["eval", str(run.run_dir), *extra, "--json"]
            self.tasks[name] = Task(name, argv, self.cfg.runs_dir / f"{name}.json", run, kind,
                                    deps=(run.name,))
        return self.tasks[name]

    # ----- the phases

    def tracer_variant(self, beta: float, lam: float) -> tuple[list[str], str]:
        return ([f"teacher.beta={_float(beta)}", f"distill.lambda_sd={_float(lam)}"],
                f"b{beta:g}-l{lam:g}")

    def sweep(self) -> list[tuple[str, float, Run]]:
        """Phase 1: (axis, value, run) for every sweep run, each with its validation task."""
        cfg, rec = self.cfg, self.cfg.sweep
        if rec is None:
            return []
        points = [("beta", b, b, rec.lambda_sd) for b in cfg.betas]
        points += [("lambda_sd", lam, rec.beta, lam) for lam in cfg.lambdas]
        out = []
        for axis, value, beta, lam in points:
            variant, tag = self.tracer_variant(beta, lam)
            for seed in cfg.sweep_seeds:
                run = self.run(rec, cfg.pseeds[0], seed, variant, tag, "sweep")
                self.evaluation(run, "val")
                out.append((axis, value, run))
        return out

    def main(self, choice: dict[str, float] | None, tuned: bool,
             methods: Collection[str] | None = None) -> list[Run]:
        """Phase 2 (and 3 for the runs it adds): the untuned recipes when ``tuned`` is False,
        the tuned one at ``choice`` when True; only the recipes of ``methods`` when given."""
        cfg, out = self.cfg, []
        for recipe in cfg.recipes:
            if cfg.tuned(recipe) != tuned or (methods is not None
                                              and recipe.method not in methods):
                continue
            variant, tag = ([], "") if choice is None else self.tracer_variant(
                choice["beta"], choice["lambda_sd"])
            for pseed in cfg.pseeds_of(recipe):
                for seed in cfg.seeds:
                    run = self.run(recipe, pseed, seed, variant, tag, "main")
                    if recipe.name in cfg.wise:
                        self.evaluation(run, "wise")
                    out.append(run)
        return out

    def kl(self) -> KlPlan | None:
        """Phase 4: the sweep recipe with its own WMA teacher and with an EMA teacher."""
        cfg = self.cfg
        rec = cfg.sweep or next((r for r in cfg.recipes if r.name == "tracer"), None)
        if rec is None or cfg.kl_steps == 0:
            return None
        steps = cfg.kl_steps or cfg.steps_of(rec)
        extra, suffix = [], ""
        if steps != cfg.steps_of(rec):
            extra, suffix = steps_overrides(rec, steps, always=True), f"-n{steps}"
        every = max(1, steps // EMA_UPDATES_PER_RUN)
        pseed, seed = cfg.pseeds[0], cfg.seeds[0]
        variant, tag = self.tracer_variant(rec.beta, rec.lambda_sd) if cfg.sweep else ([], "")
        wma = self.run(rec, pseed, seed, [*variant, *extra], f"{tag}{suffix}".strip("-"), "kl")
        ema_variant = [f"distill.lambda_sd={_float(rec.lambda_sd)}", "teacher.kind=ema",
                       f"teacher.update_every={every}", *extra]
        ema = self.run(rec, pseed, seed, ema_variant, f"ema-k{every}{suffix}", "kl")
        return KlPlan(rec, wma, ema, every, steps)


@dataclass
class KlPlan:
    """The two runs of phase 4 and the EMA teacher's update interval."""

    recipe: RecipeInfo
    wma: Run
    ema: Run
    update_every: int
    steps: int


# --------------------------------------------------------------------------- execution


# An interrupted benchmark exits as a death by SIGINT reads in the shell (128 + 2), the same
# convention as an interrupted finetune (tracer_cli.errors.Interrupted).
INTERRUPTED_EXIT = 128 + signal.SIGINT


class BenchmarkFailed(Exception):
    """A child command failed; the message has its command and the tail of its stderr."""


# Task kinds that read a run directory's metrics.jsonl and summary, never its weights: a pruned
# run (no last.pt) can still do them, so they alone never make it run again.
WEIGHTLESS_KINDS = ("lag",)


def resolve_cache(tasks: Sequence[Task]) -> None:
    """Mark every pending task whose result is cached for exactly its command.

    A finished run whose weights were pruned is run again when an evaluation of it that loads
    the model (any kind but :data:`WEIGHTLESS_KINDS`) is still to do, and its cached
    evaluations with it: they describe the old run directory.
    """
    fresh = [t for t in tasks if not t.cached and t.result is None]
    for task in fresh:
        if task.kind == "finetune":
            task.load_cached()
    finished = {t.name for t in tasks if t.kind == "finetune" and t.result is not None}
    for task in fresh:
        if task.kind != "finetune" and task.run.name in finished:
            task.load_cached()
    for task in tasks:
        if task.kind != "finetune" or task.result is None:
            continue
        evals = [t for t in tasks if t.kind != "finetune" and t.run is task.run]
        loads = [t for t in evals if t.kind not in WEIGHTLESS_KINDS]
        pruned = not rundir.last_path(task.run.run_dir).is_file()
        if pruned and any(t.result is None for t in loads):
            for t in [task, *evals]:
                t.cached, t.result = False, None


def embedded_cached(arch_seed: tuple[str, int]) -> bool:
    """Whether the embedded tiny CLIP of this pretraining seed is already built, or shipped with
    tracer (unpacked in seconds, no build); False when tracer cannot tell."""
    try:
        from tracer_plugins.backbones.embedded import embedded_path, shipped_path
    except ImportError:
        return False
    try:
        return embedded_path(*arch_seed).is_file() or shipped_path(*arch_seed).is_file()
    except Exception:  # an engine older or newer than this script: assume a build
        return False


def add_build_barriers(tasks: Sequence[Task]) -> list[tuple[str, int]]:
    """Two children must not build the same embedded CLIP at once: the first pending finetune of
    each unbuilt (architecture, pretraining seed) runs before the others. Returns those builds."""
    pending = [t for t in tasks if t.kind == "finetune" and not t.cached and t.run.recipe.embedded]
    builds = []
    for build in sorted({(t.run.recipe.arch, t.run.pseed) for t in pending}):
        group = [t for t in pending if (t.run.recipe.arch, t.run.pseed) == build]
        if embedded_cached(build):
            continue
        builds.append(build)
        for task in group[1:]:
            task.deps = (*task.deps, group[0].name)
    return builds


class Ui:
    """A rich progress bar on stderr (runs done / total, running names, elapsed, ETA), plus one
    line per finished command; only the lines when stderr is not a terminal or CI is set."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import (
            BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
            TimeRemainingColumn)

        self.console = Console(stderr=True)
        plain = not self.console.is_terminal or bool(os.environ.get("CI"))
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=self.console, disable=plain)
        self.bar = self.progress.add_task("starting", total=max(total, 1))
        self.running: dict[str, float] = {}
        self.done = 0

    def __enter__(self) -> "Ui":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def set_total(self, total: int) -> None:
        self.progress.update(self.bar, total=max(total, self.done, 1))

    def started(self, task: Task) -> None:
        self.running[task.name] = time.time()
        self._describe()

    def finished(self, task: Task) -> None:
        took = time.time() - self.running.pop(task.name, time.time())
        self.done += 1
        self.progress.update(self.bar, advance=1)
        total = int(self.progress.tasks[0].total or 0)
        self.console.print(f"[{self.done}/{total}] {task.name} ({took:.0f} s)")
        self._describe()

    def _describe(self) -> None:
        self.progress.update(self.bar, description=", ".join(self.running) or "waiting")


def threads_per_job(jobs: int) -> int:
    """max(1, cpu_count // jobs), never above an OMP_NUM_THREADS the caller already set (a
    shared machine's limit)."""
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    try:
        return max(1, min(threads, int(os.environ.get("OMP_NUM_THREADS", threads))))
    except ValueError:
        return threads


class Executor:
    """Runs tasks as child processes, ``jobs`` at a time, in dependency order."""

    def __init__(self, cfg: Config, ui: Ui, on_done: Any = None):
        threads = str(threads_per_job(cfg.jobs))
        self.on_done = on_done or (lambda task: None)
        self.env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                    "CI": "1"}
        self.jobs, self.ui = cfg.jobs, ui
        self.procs: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.stopping = False
        self.counts = {"finetune": 0, "val": 0, "wise": 0, "lag": 0}

    def execute(self, tasks: Sequence[Task]) -> None:
        todo = {t.name: t for t in tasks if not t.cached and t.result is None}
        running: dict[cf.Future, Task] = {}
        with cf.ThreadPoolExecutor(self.jobs) as pool:
            try:
                self._loop(todo, running, pool)
            except KeyboardInterrupt:  # stop the children rather than wait for them
                self._stop(running)
                raise

    def _loop(self, todo: dict[str, Task], running: dict[cf.Future, Task],
              pool: cf.ThreadPoolExecutor) -> None:
        while todo or running:
            busy = set(todo) | {t.name for t in running.values()}
            ready = [t for t in todo.values() if not any(d in busy for d in t.deps)]
            ready.sort(key=lambda t: t.kind == "finetune")  # evaluations first
            if not ready and not running:
                raise BenchmarkFailed(f"nothing can start: {', '.join(todo)} wait on each "
                                      "other")
            for task in ready[: self.jobs - len(running)]:
                del todo[task.name]
                self.ui.started(task)
                running[pool.submit(self._call, task)] = task
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                error = future.result()
                if error:
                    self._stop(running)
                    raise BenchmarkFailed(error)
                self.counts[task.kind] += 1
                self.ui.finished(task)
                self.on_done(task)

    def _stop(self, running: dict[cf.Future, Task]) -> None:
        """Stop the other children (SIGTERM: a finetune checkpoints and exits) and wait."""
        with self.lock:
            self.stopping = True
            for proc in self.procs.values():
                proc.terminate()
        cf.wait(running)

    def _call(self, task: Task) -> str | None:
        cmd = [sys.executable, "-m", "tracer_cli", *task.argv]
        log = task.record.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if self.stopping:
                return None
            with open(log, "w", encoding="utf-8") as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                        env=self.env)
            self.procs[task.name] = proc
        out, _ = proc.communicate()
        with self.lock:
            self.procs.pop(task.name, None)
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
        if proc.returncode != 0:
            return f"{shlex.join(cmd)}\nfailed with exit code {proc.returncode}:\n{tail}"
        try:
            task.result = json.loads(out)
        except ValueError:
            return f"{shlex.join(cmd)}\nprinted no JSON document; stderr:\n{tail}"
        _write_json(task.record, {"key": task.key(), "result": task.result})
        return None


def prune_weights(runs: Iterable[Run], keep_last: bool = False) -> None:
    """Delete a finished run's checkpoints (its numbers, metrics and lock file stay);
    ``keep_last`` keeps last.pt, which evaluations read."""
    for run in runs:
        rundir.remove_checkpoints(run.run_dir, keep_last)


class Pruner:
    """Deletes a run's weights as soon as nothing planned (or still to be planned) reads them."""

    def __init__(self, cfg: Config, plan: Plan):
        self.cfg, self.plan, self.final = cfg, plan, False

    def __call__(self, task: Task) -> None:
        run = task.run
        if self.cfg.keep_weights:
            return
        # The tuned recipe's runs may get a WiSE-FT evaluation once the choice is made.
        later = (not self.final and self.cfg.tuned(run.recipe)
                 and run.recipe.name in self.cfg.wise)
        done = all(t.result is not None for t in self.plan.tasks.values() if t.run is run)
        prune_weights([run], keep_last=later or not done)


def _write_json(path: Path, data: Any) -> None:
    from tracer_cli.io import atomic_write_json

    atomic_write_json(path, data)


# --------------------------------------------------------------------------- collecting numbers


def val_numbers(doc: dict[str, Any] | None, names: Sequence[str]) -> dict[str, Any] | None:
    """Validation accuracy (mean over the validation sets) from a ``tracer eval --json`` doc."""
    if not doc:
        return None
    sets = {v: {"accuracy": doc["datasets"][v]["accuracy"], "n": doc["datasets"][v]["n"]}
            for v in names}
    accs = [s["accuracy"] for s in sets.values()]
    return {"datasets": sets, "accuracy": float(np.mean(accs)),
            "binom_var": average_binomial_var(accs, [s["n"] for s in sets.values()])}


def run_record(run: Run, plan: Plan) -> dict[str, Any]:
    """A run's numbers as ``tracer compare`` reads them from its directory (grouped by the
    benchmark's method name), with its WiSE-FT entries, validation numbers and command."""
    data = read_run(run.run_dir, [])
    rec = compare_record(data, run.recipe.name)
    wise, val = plan.tasks.get(f"{run.name}.wise"), plan.tasks.get(f"{run.name}.val")
    rec.update({
        "name": run.name, "recipe": run.recipe.path, "roles": sorted(run.roles),
        "pretrain_seed": run.pseed, "overrides": list(run.variant),
        "command": shlex.join(["python", "-m", "tracer_cli", *run.argv]),
        "run_dir": str(run.run_dir),
        "wise": list((wise.result or {}).get("wise", [])) if wise else [],
        "val": val_numbers(val.result if val else None, plan.cfg.val)})
    return rec


def sweep_table(points: Sequence[tuple[str, float, Run]], plan: Plan
                ) -> dict[str, list[dict[str, Any]]]:
    """Per swept axis and value: validation, ID and avg OOD accuracy over the sweep seeds."""
    out: dict[str, list[dict[str, Any]]] = {}
    for axis in ("beta", "lambda_sd"):
        values = list(dict.fromkeys(v for a, v, _ in points if a == axis))
        rows = []
        for value in values:
            records = [run_record(r, plan) for a, v, r in points if a == axis and v == value]
            vals = [r["val"] for r in records if r["val"]]
            student = aggregate(records, "student") or {}
            rows.append({
                "value": value, "runs": [r["name"] for r in records],
                "val_accuracy": (pair(mean_se([v["accuracy"] for v in vals],
                                               [v["binom_var"] for v in vals])) if vals else None),
                "val_by_seed": {str(r["seed"]): r["val"]["accuracy"] for r in records
                                if r["val"]},
                "val_binom_var": float(np.mean([v["binom_var"] for v in vals])) if vals else None,
                "id_accuracy": student.get("id_accuracy"),
                "avg_ood_accuracy": student.get("avg_ood_accuracy")})
        if rows:
            out[axis] = rows
    return out


def choose(sweep: dict[str, list[dict[str, Any]]], recipe: RecipeInfo) -> dict[str, Any]:
    """β and λ_sd, each maximising the mean validation accuracy on its own axis; with the
    chosen value's difference to the recipe's own value (paired by seed)."""
    own = {"beta": recipe.beta, "lambda_sd": recipe.lambda_sd}
    out: dict[str, Any] = {"beta": recipe.beta, "lambda_sd": recipe.lambda_sd, "vs_own": {}}
    for axis, rows in sweep.items():
        rows = [r for r in rows if r["val_accuracy"]]
        if not rows:
            continue
        best = choose_value([r["value"] for r in rows], [r["val_accuracy"][0] for r in rows],
                            own[axis])
        out[axis] = best
        mine = next(r for r in rows if r["value"] == best)
        base = next((r for r in rows if math.isclose(r["value"], own[axis])), None)
        if base is not None:
            diff = paired_difference(mine["val_by_seed"], base["val_by_seed"])
            if diff["n"] == 1:  # one seed: the binomial error of the two evaluations
                diff["se"] = math.sqrt(mine["val_binom_var"] + base["val_binom_var"])
                diff["verdict"] = noise_verdict(diff["mean"], diff["se"])
                diff["se_from"] = "binomial (one seed)"
            out["vs_own"][axis] = diff
    return out


def kl_curves(kl: KlPlan | None, carot: Run | None) -> dict[str, Any]:
    """kl_i2t and param_ratio against step from each run's metrics.jsonl, with summaries."""
    if kl is None:
        return {}
    runs = {"WMA (tracer)": kl.wma, "EMA": kl.ema}
    if carot is not None:
        runs["CaRot"] = carot
    out: dict[str, Any] = {}
    for label, run in runs.items():
        points = []
        for rec in rundir.read_metrics(run.run_dir):
            if rec.get("event") == "train":
                points.append({k: rec.get(k) for k in ("step", "kl_i2t", "kl_t2i",
                                                       "param_ratio")})
        last = max((p["step"] for p in points), default=0)
        tail = [p["kl_i2t"] for p in points
                if p["kl_i2t"] is not None and p["step"] >= 0.75 * last]
        ratio = [p["param_ratio"] for p in points if p["param_ratio"] is not None]
        out[label] = {"run": run.name, "points": points,
                      "kl_i2t_last_quarter": float(np.mean(tail)) if tail else None,
                      "param_ratio_end": ratio[-1] if ratio else None}
    return out


# --------------------------------------------------------------------------- figures


def plot_all(results: dict[str, Any], folder: Path) -> dict[str, Path]:
    """The ID-vs-OOD plot (one panel per pretrained model), the sweeps and the KL curves."""
    out = {"id_vs_ood": plot_id_vs_ood(results["panels"], folder / "robustness_id_vs_ood.png")}
    choice = results.get("choice") or {}
    own = results.get("sweep_recipe_values") or {}
    for axis, name in (("beta", "robustness_beta_sweep.png"),
                       ("lambda_sd", "robustness_lambda_sweep.png")):
        rows = results["sweep"].get(axis)
        if rows:
            out[axis] = plot_sweep(rows, axis, choice[axis], own[axis], folder / name)
    if results["kl"]:
        out["kl"] = plot_kl(results["kl"], folder / "robustness_kl_ema_vs_wma.png")
    return out


# --------------------------------------------------------------------------- assembling


def _torch_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "unknown"


def _setting_numbers(cfg: Config, ev: dict[str, Any], panels: Sequence[dict[str, Any]]
                     ) -> dict[str, Any]:
    """The setting the report describes; ``ev`` is a main run's summary ``eval`` block."""
    sizes = {d: ev["models"]["student"][d]["n"] for d in [*ev["id"], *ev["ood"]]}
    id_means = [r["id_accuracy"][0] for p in panels for r in p["rows"]
                if r["model"] == "student" and r.get("id_accuracy")]
    id_mean, n_min = float(np.mean(id_means or [0.5])), min(sizes.values())
    return {"recipes": [{"path": r.path, "name": r.name, "steps": cfg.steps_of(r)}
                        for r in cfg.recipes],
            "seeds": cfg.seeds, "pretrain_seeds": cfg.pseeds, "sweep_seeds": cfg.sweep_seeds,
            "sweep_recipe": cfg.sweep.path if cfg.sweep else None, "val": cfg.val,
            "id": list(ev["id"]), "ood": list(ev["ood"]), "eval_sizes": sizes,
            "binomial_se_at_half": 100 * math.sqrt(binomial_var(0.5, n_min)),
            "binomial_se_at_id": 100 * math.sqrt(binomial_var(id_mean, n_min)),
            "steps": cfg.steps, "user_sets": cfg.user_sets, "out": str(cfg.out),
            "wise_alphas": cfg.wise_alphas}


def assemble(cfg: Config, plan: Plan, sweep_points: Sequence[tuple[str, float, Run]],
             choice: dict[str, Any] | None, kl: KlPlan | None, execution: dict[str, Any]
             ) -> dict[str, Any]:
    """Everything results.json holds, and what the report and figures are made from: the main
    runs' panels (one per pretrained model) come from tracer compare's analysis."""
    records = {name: run_record(run, plan) for name, run in plan.runs.items()}
    main_runs = [r for r in plan.runs.values() if "main" in r.roles]
    methods = [r.name for r in cfg.recipes]
    panels = analyse([records[r.name] for r in main_runs], methods, REFERENCES,
                     ROBUSTNESS_KEYS)
    carot = next((r for r in main_runs if r.recipe.name == "carot"
                  and (r.pseed, r.seed) == (cfg.pseeds[0], cfg.seeds[0])), None)
    first = read_run(main_runs[0].run_dir, []).summary["eval"]
    return {
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/robustness.py " + shlex.join(execution.pop("argv")),
        "machine": {"cpu_count": os.cpu_count(), "torch": _torch_version(), "jobs": cfg.jobs,
                    "threads_per_job": threads_per_job(cfg.jobs)},
        "setting": _setting_numbers(cfg, first, panels), "notes": cfg.notes,
        "execution": execution,
        "sweep": sweep_table(sweep_points, plan) if sweep_points else {},
        "choice": choice,
        "sweep_recipe_values": ({"beta": cfg.sweep.beta, "lambda_sd": cfg.sweep.lambda_sd}
                                if cfg.sweep else None),
        "panels": panels,
        "paired_pooled": pooled_paired([records[r.name] for r in main_runs], methods,
                                       REFERENCES, ROBUSTNESS_KEYS),
        "kl": kl_curves(kl, carot),
        "kl_setting": ({"recipe": kl.recipe.path, "update_every": kl.update_every,
                        "updates_per_run": EMA_UPDATES_PER_RUN, "steps": kl.steps,
                        "pretrain_seed": kl.wma.pseed, "seed": kl.wma.seed}
                       if kl else None),
        "runs": list(records.values())}


# --------------------------------------------------------------------------- configuration


class BenchmarkUsage(Exception):
    """Bad options or recipes: exit 2 with one line."""


def _recipe(path: str, sets: Sequence[str]) -> RecipeInfo:
    from tracer_cli.errors import TracerError

    try:
        return read_recipe(path, sets)
    except TracerError as exc:
        raise BenchmarkUsage(f"{path}: {exc}") from None


def _sweep_recipe(args: argparse.Namespace, infos: list[RecipeInfo]) -> RecipeInfo | None:
    """--sweep-recipe, else the default one when it is among the recipes, else the recipe named
    tracer; "none" switches the sweep off."""
    if args.sweep_recipe == "none":
        return None
    path = args.sweep_recipe
    if path is None:
        target = Path(DEFAULT_SWEEP).resolve()
        default = next((r for r in infos if Path(r.path).resolve() == target), None)
        return default or next((r for r in infos if r.name == "tracer"), None)
    same = next((r for r in infos if Path(r.path).resolve() == Path(path).resolve()), None)
    return same or _recipe(path, args.sets)


def build_config(args: argparse.Namespace) -> Config:
    quick = args.quick
    infos = distinct_names([_recipe(p, args.sets) for p in (args.recipes or DEFAULT_RECIPES)])
    sweep = _sweep_recipe(args, infos)
    betas = BETAS if args.betas is None else args.betas
    lambdas = (QUICK_LAMBDAS if quick else LAMBDAS) if args.lambdas is None else args.lambdas
    if not betas and not lambdas:
        sweep = None
    seeds = list(dict.fromkeys(args.seeds))
    cfg = Config(
        recipes=infos, sweep=sweep, seeds=seeds,
        pseeds=list(dict.fromkeys(args.pretrain_seeds or ([0] if quick else [0, 1, 2]))),
        sweep_seeds=seeds[:1] if quick else seeds[:2],
        steps=args.steps if args.steps is not None else (QUICK_STEPS if quick else None),
        user_sets=list(args.sets), val=list(args.val), betas=betas, lambdas=lambdas,
        wise=[m for m in args.wise if m in {r.name for r in infos}],
        wise_alphas=args.wise_alphas or (QUICK_WISE_ALPHAS if quick else WISE_ALPHAS),
        kl_steps=args.kl_steps, out=args.out, jobs=max(1, args.jobs),
        keep_weights=args.keep_weights)
    _check(cfg, args)
    return cfg


def _check(cfg: Config, args: argparse.Namespace) -> None:
    """Refuse a validation set that is a reported test domain; note what was skipped."""
    for info in [*cfg.recipes, *([cfg.sweep] if cfg.sweep else [])]:
        clash = sorted(set(cfg.val) & set(info.datasets))
        if clash and cfg.sweep is not None:
            raise BenchmarkUsage(f"--val {','.join(clash)} is a reported test domain of "
                                 f"{info.path}; hyperparameters must be chosen on a domain that "
                                 "is not reported (use another --val)")
    if cfg.sweep is not None:
        from tracer_cli.errors import TracerError
        from tracer_cli.sdk.host import get_host

        for name in cfg.val:
            try:
                get_host().datasets.get(name)
            except TracerError as exc:
                raise BenchmarkUsage(f"--val {name}: {exc}") from None
    if cfg.steps is not None and cfg.steps < 1:
        raise BenchmarkUsage(f"--steps {cfg.steps}: must be >= 1")
    missing = [m for m in args.wise if m not in cfg.wise]
    if missing:
        cfg.notes.append(f"WiSE-FT skipped for {', '.join(missing)}: no such recipe.")
    flat = [r.name for r in cfg.recipes if not r.embedded]
    if flat and len(cfg.pseeds) > 1:
        cfg.notes.append(f"{', '.join(flat)}: model.pretrained is not \"embedded\", so "
                         "pretraining seeds do not apply; run at pretraining seed "
                         f"{cfg.pseeds[0]} only.")
    if cfg.sweep is None:
        cfg.notes.append("No validation sweep: no sweep recipe (or no β / λ_sd values).")
    if cfg.steps is not None:
        cfg.notes.append(f"Every run trains {cfg.steps} steps (`--steps`; warm-up and LP phase "
                         "scaled to match), not its recipe's own number.")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"one pretraining seed, {QUICK_STEPS}-step runs, λ_sd sweep "
                        f"{' '.join(map(str, QUICK_LAMBDAS))} on one seed, WiSE-FT at 6 α")
    p.add_argument("--recipes", nargs="+", metavar="FILE",
                   help="one recipe per method (default: recipes/synth_<method>.toml)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="finetuning seeds")
    p.add_argument("--pretrain-seeds", type=int, nargs="+", metavar="P",
                   help="pretraining seeds of the embedded tiny CLIP (default 0 1 2; --quick: 0)")
    p.add_argument("--out", type=Path, default=Path("runs/robustness"),
                   help="runs, caches and results.json (default runs/robustness)")
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (default 2)")
    p.add_argument("--set", dest="sets", action="extend", nargs="+", default=[],
                   metavar="KEY=VALUE", help="override a recipe key in every run")
    p.add_argument("--steps", type=int, help=f"train.steps of every run (--quick: {QUICK_STEPS})")
    p.add_argument("--val", nargs="+", default=["synth-mono"], metavar="DATASET",
                   help="validation set(s) for the sweep; not a reported test domain")
    p.add_argument("--sweep-recipe", metavar="FILE",
                   help=f"recipe whose β and λ_sd are tuned (default {DEFAULT_SWEEP}, else the "
                        "recipe named tracer; 'none': no sweep)")
    p.add_argument("--betas", type=float, nargs="*", help="β values (default 0.2 0.5 1)")
    p.add_argument("--lambdas", type=float, nargs="*",
                   help="λ_sd values (default and --quick: 0.1 0.9 5)")
    p.add_argument("--wise", nargs="*", default=["ft", "flyp"], metavar="METHOD",
                   help="methods whose WiSE-FT curve is measured (default ft flyp)")
    p.add_argument("--wise-alphas", type=float, nargs="+", metavar="A",
                   help="WiSE-FT mixing coefficients (default 0 0.1 ... 1; --quick 0 0.2 ... 1)")
    p.add_argument("--kl-steps", type=int, metavar="N",
                   help="train.steps of the WMA-vs-EMA runs (default: as the main runs; 0: skip)")
    p.add_argument("--report", type=Path, default=Path("BENCHMARKS.md"))
    p.add_argument("--figures", type=Path, default=Path("benchmarks/figures"))
    p.add_argument("--keep-weights", action="store_true",
                   help="keep every run's checkpoints (default: deleted once evaluated)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the planned commands, the number of runs and an estimate")
    return p.parse_args(argv)


# --------------------------------------------------------------------------- running it all


def _pending(tasks: Iterable[Task]) -> list[Task]:
    return [t for t in tasks if not t.cached and t.result is None]


def estimate_s(tasks: Sequence[Task], cfg: Config, builds: int, step_s: float = EST_STEP_S
               ) -> tuple[float, str]:
    """Rough wall time of the pending tasks: a per-run model (start-up and evaluations plus
    ``step_s`` a step), calibrated on the cached runs when there are any."""
    def guess(task: Task) -> float:
        if task.kind == "val":
            return EST_EVAL_S + EST_EVAL_PER_MODEL_S
        if task.kind == "wise":
            return EST_EVAL_S + EST_EVAL_PER_MODEL_S * len(cfg.wise_alphas)
        if task.kind == "lag":  # distill-check --run: reads metrics.jsonl, no model
            return EST_EVAL_S
        trains = task.run.recipe.method != "zeroshot"
        steps = task.result["steps"] if task.result else _run_steps(task.run, cfg) * trains
        return EST_OVERHEAD_S + step_s * steps

    done = [t for t in tasks if t.kind == "finetune" and t.cached and t.result]
    scale = (float(np.mean([t.result["wall_time_s"] / guess(t) for t in done])) if done else 1.0)
    basis = (f"calibrated on {len(done)} cached run(s)" if done else
             f"tiny-CLIP model: ~{EST_OVERHEAD_S:.0f} s start-up and evaluations + "
             f"{step_s} s/step per run at 1 thread")
    threads = threads_per_job(cfg.jobs)
    speedup = 1.0 + 0.6 * (threads - 1)  # more threads per run help less than more runs
    work = sum(guess(t) for t in _pending(tasks)) * scale / speedup
    # A build takes one job slot (one thread) while the other slots run finetunes.
    return (work + builds * EST_BUILD_S) / cfg.jobs, basis


def _run_steps(run: Run, cfg: Config) -> int:
    """train.steps of a run: the last ``--set train.steps=N`` of its command, else its recipe's."""
    sets = [a.split("=", 1)[1] for a in run.argv if a.startswith("train.steps=")]
    return int(sets[-1]) if sets else cfg.steps_of(run.recipe)


def dry_run(cfg: Config, plan: Plan) -> int:
    """Print every planned command, the run counts and an estimate; run nothing."""
    wave1 = list(plan.tasks.values())
    before = set(plan.tasks)
    own = {"beta": cfg.sweep.beta, "lambda_sd": cfg.sweep.lambda_sd} if cfg.sweep else None
    tuned = plan.main(own, tuned=True)  # placeholder: the choice is made after phase 1
    wave2 = [t for n, t in plan.tasks.items() if n not in before]
    resolve_cache(list(plan.tasks.values()))
    worst = len({r.name for r in tuned if "sweep" in r.roles or "kl" in r.roles})
    print("# phase 1 (sweep), 2 (untuned recipes), 3 (WiSE-FT), 4 (KL)")
    for t in wave1:
        print(f"{'(cached) ' if t.cached else ''}python -m tracer_cli {shlex.join(t.argv)}")
    print("# phase 2, the tuned recipe at the chosen β and λ_sd (shown at the recipe's values)")
    for run in tuned:
        same = " (the same command as a phase-1 run)" if run.name in before else ""
        print(f"python -m tracer_cli {shlex.join(run.argv)}{same}")
    for t in wave2:
        if t.kind != "finetune":
            print(f"{'(cached) ' if t.cached else ''}python -m tracer_cli {shlex.join(t.argv)}")
    finetunes = [t for t in plan.tasks.values() if t.kind == "finetune"]
    evals = [t for t in plan.tasks.values() if t.kind != "finetune"]
    builds = len({(t.run.recipe.arch, t.run.pseed) for t in _pending(finetunes)
                  if t.run.recipe.embedded and not embedded_cached((t.run.recipe.arch,
                                                                   t.run.pseed))})
    seconds, basis = estimate_s(list(plan.tasks.values()), cfg, builds)
    print(f"\nfinetune runs: {len(finetunes)} ({len(finetunes) - len(_pending(finetunes))} "
          f"cached), up to {worst} more if the chosen β and λ_sd both differ from the recipe's; "
          f"evaluations: {len(evals)} ({len(evals) - len(_pending(evals))} cached); embedded "
          f"CLIP builds: {builds}")
    print(f"estimate: {seconds / 60:.0f} min with --jobs {cfg.jobs} on {os.cpu_count()} cores "
          f"({basis}; rough)")
    for note in cfg.notes:
        print(f"note: {note}")
    return 0


def _finish_wave(tasks: Iterable[Task]) -> None:
    for task in tasks:
        if task.kind == "finetune" and task.result is not None:
            task.run.summary = task.result


def model_major(tasks: Iterable[Task]) -> list[Task]:
    """``tasks`` grouped by pretraining seed (the plan's order kept within one), so that an
    interrupted benchmark leaves whole pretrained models behind: rerun with ``--pretrain-seeds``
    naming the finished ones, it reports them from the cache."""
    return sorted(tasks, key=lambda t: t.run.pseed)


def execute(cfg: Config, plan: Plan, ui: Ui, ex: Executor, pruner: Pruner
            ) -> tuple[list[tuple[str, float, Run]], dict[str, Any] | None, KlPlan | None]:
    """Wave 1: the sweep, the KL runs and the zero-shot runs (which build every pretrained model
    while the sweep runs). Wave 2, once β and λ_sd are chosen: every other main run, pretrained
    model by pretrained model (:func:`model_major`)."""
    sweep_points = plan.sweep()
    plan.main(None, tuned=False, methods={"zeroshot"})
    kl = plan.kl()
    wave1 = list(plan.tasks.values())
    resolve_cache(wave1)
    add_build_barriers(wave1)
    n_later = sum(len(cfg.pseeds_of(r)) * len(cfg.seeds) * (2 if r.name in cfg.wise else 1)
                  for r in cfg.recipes if r.method != "zeroshot")
    ui.set_total(len(_pending(wave1)) + n_later)
    ex.execute(wave1)
    _finish_wave(wave1)
    choice = choose(sweep_table(sweep_points, plan), cfg.sweep) if cfg.sweep else None
    plan.main(None, tuned=False)
    plan.main(choice, tuned=True)
    pruner.final = True
    resolve_cache(list(plan.tasks.values()))
    wave2 = model_major(_pending(plan.tasks.values()))
    add_build_barriers(wave2)
    ui.set_total(ui.done + len(wave2))
    ex.execute(wave2)
    _finish_wave(plan.tasks.values())
    return sweep_points, choice, kl


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    try:
        cfg = build_config(args)
    except BenchmarkUsage as exc:
        print(f"robustness: {exc}", file=sys.stderr)
        return 2
    plan = Plan(cfg)
    if args.dry_run:
        plan.sweep()
        plan.main(None, tuned=False)
        plan.kl()
        return dry_run(cfg, plan)
    pruner = Pruner(cfg, plan)
    with Ui(0) as ui:
        ex = Executor(cfg, ui, pruner)
        try:
            sweep_points, choice, kl = execute(cfg, plan, ui, ex, pruner)
        except BenchmarkFailed as exc:
            ui.console.print(f"robustness: a run failed; finished runs stay cached in {cfg.out}")
            print(f"robustness: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"robustness: interrupted after {ui.done} tasks; finished runs stay cached in "
                  f"{cfg.out}: rerun the same command to resume", file=sys.stderr)
            return INTERRUPTED_EXIT
    if not cfg.keep_weights:
        prune_weights(plan.runs.values())
    finetunes = [t for t in plan.tasks.values() if t.kind == "finetune"]
    execution = {"argv": list(sys.argv[1:] if argv is None else argv),
                 "wall_s": round(time.time() - started, 1),
                 "finetunes_run": ex.counts["finetune"],
                 "finetunes_cached": sum(t.cached for t in finetunes),
                 "evals_run": ex.counts["val"] + ex.counts["wise"],
                 "evals_cached": sum(t.cached for t in plan.tasks.values()
                                     if t.kind != "finetune")}
    res = assemble(cfg, plan, sweep_points, choice, kl, execution)
    res["figures"] = {k: str(v) for k, v in plot_all(res, args.figures).items()}
    _write_json(cfg.out / "results.json", res)
    try:
        write_robustness_report(res, args.report)
    except TracerError as exc:
        print(f"robustness: {args.report}: {exc}", file=sys.stderr)
        return 2
    print(f"robustness: {cfg.out / 'results.json'}, {args.report}, figures in {args.figures}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
