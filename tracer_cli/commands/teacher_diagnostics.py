"""Teacher-collapse diagnostics behind ``tracer distill-check``.

A self-distillation teacher only regularizes while it differs from the student. Two views of that:

- **Analytic** (:func:`check`, no data, instant): from the recipe's planned horizon and teacher
  settings alone, the kernel weights the teacher puts on every step of the trajectory give, at
  every step t, the anchor mass (weight still on θ₀), the teacher lag L(t) = t − Σ w_s·s / Σ w_s
  and the relative lag ρ(t) = L(t)/t (``docs/distill-check.md``, "The analytic part"). An
  EMA's lag tends to k·m/(1 − m), a constant, so ρ → 0; a Beta-kernel WMA keeps ρ(T) = ½.
- **Empirical** (:func:`probe`, :func:`from_run`): the teacher-student KL (both directions), top-1
  agreement and the parameter ratio ‖θ − φ‖ / ‖θ − θ₀‖ that the engine logs; under a steady drift
  of the student the ratio *is* ρ(t).

Verdict: the analytic side is collapsed when ρ(T) < threshold. An empirical series (the parameter
ratio, and the KL averaged over both directions) is collapsed when the mean of its last 10% of
records has fallen below threshold × its peak (for the KL, the peak after the first 10% of the
records). The check as a whole is collapsed when either side is. ``docs/distill-check.md`` is the
user's description.
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from tracer_cli.teacher import kernels
from tracer_cli.errors import UsageError
from tracer_cli.events import Reporter
from tracer_cli.io import atomic_path
from tracer_cli.recipe import Recipe, TeacherConfig
from tracer_cli.teacher.spec import EMA_UPDATE_EVERY, WMA_BETA, TeacherSpec

DEFAULT_THRESHOLD = 0.05
TAIL_FRACTION = 0.1
CURVE_POINTS = 101
SERIES_POINTS = 200
PLOT_POINTS = 2000
ANCHOR_FLOOR = 1e-12
KL_BURN_IN = 0.1
SERIES_KEYS = ("param_ratio", "kl_i2t", "kl_t2i", "agreement", "drift", "gap")


# --------------------------------------------------------------------------- analytic part


def alternatives(spec: TeacherSpec, cfg: TeacherConfig, horizon: int) -> list[TeacherSpec]:
    """The teachers to compare with the recipe's, at the recipe's update interval k (1 for a static
    recipe): EMA with the recipe's momentum schedule, WMA β = ½, WMA β = 1 (uniform), static; plus
    EMA at its default interval (500, CaRot) when that differs and fits the horizon. The recipe's
    own teacher is left out."""
    k = spec.update_every if spec.kind != "static" else 1
    ema_ks = [k] + ([EMA_UPDATE_EVERY] if k != EMA_UPDATE_EVERY <= horizon else [])
    schedule = {"momentum_start": cfg.momentum_start, "momentum_end": cfg.momentum_end,
                "momentum_warmup": cfg.momentum_warmup}
    candidates = [
        *(TeacherSpec("ema", every, **schedule) for every in ema_ks),
        TeacherSpec("wma", k, beta=WMA_BETA),
        TeacherSpec("wma", k, beta=1.0),
        TeacherSpec("static"),
    ]
    return [c for c in candidates if c != spec]


def _samples(first: int, last: int, points: int) -> np.ndarray:
    """Up to ``points`` evenly spread integers from ``first`` to ``last``, both included."""
    return np.unique(np.linspace(first, last, min(points, last - first + 1)).round().astype(int))


@dataclass(frozen=True)
class TeacherAnalysis:
    """One teacher's kernel over the horizon and its analytic verdict."""

    spec: TeacherSpec
    curve: kernels.KernelCurve
    threshold: float

    @property
    def horizon(self) -> int:
        return self.curve.horizon

    @property
    def relative_lag_final(self) -> float:
        return float(self.curve.relative_lag[-1])

    @property
    def relative_lag_min(self) -> float:
        return float(np.nanmin(self.curve.relative_lag))

    @property
    def log10_anchor_mass_final(self) -> float:
        return float(self.curve.log_anchor_mass[-1] / math.log(10.0))

    @property
    def collapsed(self) -> bool:
        return self.relative_lag_final < self.threshold

    def to_dict(self, with_curve: bool = False) -> dict[str, Any]:
        c = self.curve
        out = {"kind": self.spec.kind, "label": self.spec.label, **self.spec.params(),
               "updates": int(len(c.updates)), "teacher_lag_final": float(c.lag[-1]),
               "relative_lag_final": self.relative_lag_final,
               "relative_lag_min": self.relative_lag_min,
               "anchor_mass_final": float(c.anchor_mass[-1]),
               # -inf (a momentum of 0 empties the anchor) has no JSON spelling: null.
               "log10_anchor_mass_final": _finite(self.log10_anchor_mass_final),
               "anchor_half_life": c.anchor_half_life(), "collapsed": self.collapsed}
        if with_curve:
            idx = _samples(1, self.horizon, CURVE_POINTS)
            out["curve"] = {"step": idx.tolist(), "relative_lag": c.relative_lag[idx].tolist(),
                            "anchor_mass": c.anchor_mass[idx].tolist()}
        return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def analyse_teacher(spec: TeacherSpec, horizon: int, threshold: float) -> TeacherAnalysis:
    return TeacherAnalysis(spec, kernels.spec_curve(spec, horizon), threshold)


# --------------------------------------------------------------------------- empirical part


@dataclass(frozen=True)
class SeriesSummary:
    """Peak, tail mean (last ``TAIL_FRACTION`` of the records) and last value of one series."""

    peak: float
    peak_step: int
    tail: float
    final: float
    tail_records: int

    @property
    def decay(self) -> float:
        """Tail mean over peak: 1 for a series that holds its level, → 0 for one that dies out."""
        return self.tail / self.peak

    def to_dict(self) -> dict[str, Any]:
        return {"peak": self.peak, "peak_step": self.peak_step, "tail": self.tail,
                "final": self.final, "tail_records": self.tail_records, "decay": self.decay}


def summarize_series(steps: np.ndarray, values: np.ndarray,
                     burn_in: float = 0.0) -> SeriesSummary | None:
    """Peak over the records after the first ``burn_in`` share of them, tail mean over the last
    ``TAIL_FRACTION`` (at least one record). None when the series has no finite value or a peak
    of zero (nothing to decay from)."""
    ok = np.isfinite(values)
    steps, values = steps[ok], values[ok]
    skip = int(burn_in * len(values))
    if len(values) == 0 or values[skip:].max() <= 0:
        return None
    n_tail = max(1, math.ceil(TAIL_FRACTION * len(values)))
    peak = skip + int(values[skip:].argmax())
    return SeriesSummary(float(values[peak]), int(steps[peak]), float(values[-n_tail:].mean()),
                         float(values[-1]), n_tail)


@dataclass(frozen=True)
class EmpiricalAnalysis:
    """Teacher-student statistics per logged step, read from a run or measured by :func:`probe`."""

    source: str
    horizon: int
    threshold: float
    steps: np.ndarray
    series: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def kl(self) -> np.ndarray:
        """KL averaged over the two directions (image→text, text→image)."""
        return 0.5 * (self.series["kl_i2t"] + self.series["kl_t2i"])

    def summaries(self) -> dict[str, SeriesSummary | None]:
        """The two series the verdict reads. The KL's peak is searched after a burn-in: in the
        first steps it measures how fast the student starts to move (a fresh model takes its
        largest steps first), not how the teacher keeps up. The ratio needs none: at every step
        it is a property of the teacher's weights (under a steady drift it is ρ(t))."""
        return {"param_ratio": summarize_series(self.steps, self.series["param_ratio"]),
                "kl": summarize_series(self.steps, self.kl, burn_in=KL_BURN_IN)}

    @property
    def collapsed(self) -> bool:
        return any(s is not None and s.decay < self.threshold for s in self.summaries().values())

    def reasons(self, failing_only: bool = False) -> list[str]:
        """One line per series with the numbers behind its verdict."""
        out = []
        for name, s in self.summaries().items():
            if s is not None and not (failing_only and s.decay >= self.threshold):
                sign = "<" if s.decay < self.threshold else "≥"
                out.append(f"{name} tail/peak = {s.decay:.3g} {sign} {self.threshold:g} (mean of "
                           f"the last {s.tail_records} record(s) {s.tail:.3g}, peak "
                           f"{s.peak:.3g} at step {s.peak_step})")
        return out

    def to_dict(self) -> dict[str, Any]:
        idx = _samples(0, len(self.steps) - 1, SERIES_POINTS)
        series = {k: [None if not np.isfinite(v) else float(v) for v in self.series[k][idx]]
                  for k in SERIES_KEYS}
        agreement = summarize_series(self.steps, self.series["agreement"])
        last = int(self.steps[-1])
        return {"source": self.source, "records": int(len(self.steps)),
                "first_step": int(self.steps[0]), "last_step": last,
                "coverage": last / self.horizon,
                **{k: (None if s is None else s.to_dict()) for k, s in self.summaries().items()},
                "agreement": None if agreement is None else {"tail": agreement.tail,
                                                             "final": agreement.final},
                "collapsed": self.collapsed,
                "series": {"step": self.steps[idx].tolist(), **series}}


def empirical_from_records(records: Iterable[dict[str, Any]], source: str, horizon: int,
                           threshold: float) -> EmpiricalAnalysis:
    """Build the series from ``metrics.jsonl`` train records (a repeated step keeps its last)."""
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.get("event") == "train" and ("kl_i2t" in r or "param_ratio" in r):
            by_step[int(r["step"])] = r
    if not by_step:
        raise UsageError(f"{source} has no teacher-student statistics (kl_i2t, param_ratio) in "
                         "its train records: no teacher, or no log step after step 1 yet")
    steps = np.array(sorted(by_step), dtype=np.int64)
    series = {k: np.array([float(by_step[s].get(k, np.nan)) for s in steps]) for k in SERIES_KEYS}
    return EmpiricalAnalysis(source, horizon, threshold, steps, series)


def from_run(path: str | Path, horizon: int, threshold: float) -> EmpiricalAnalysis:
    """The series of a finished or running run directory's ``metrics.jsonl``."""
    from tracer_cli.commands.finished_run import RunDir

    run = RunDir(path)
    return empirical_from_records(run.metrics(), f"run '{run.path}'", horizon, threshold)


def probe(recipe: Recipe, steps: int, threshold: float,
          reporter: Reporter | None = None) -> EmpiricalAnalysis:
    """Train the first ``steps`` steps of ``recipe`` with the real engine and data, logging every
    step, in a temporary run directory that is removed afterwards (no evaluation, no checkpoint).
    The horizon, schedule and teacher kernel stay those of the whole recipe."""
    from tracer_cli.engine.run import finetune
    from tracer_cli.commands.finished_run import RunDir

    check = copy.deepcopy(recipe)
    check.run.eval, check.run.log_every, check.train.checkpoint_every = False, 1, 0
    check.run.loggers, check.loggers = [], {}  # a probe is not a run to track in W&B or MLflow
    n = min(steps, recipe.train.steps)
    with tempfile.TemporaryDirectory(prefix="tracer-distill-check-") as tmp:
        result = finetune(check, output_dir=Path(tmp), reporter=reporter, stop_after=n)
        records = list(RunDir(result.run_dir).metrics())
    return empirical_from_records(records, f"first {n} steps", recipe.train.steps, threshold)


# --------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class DistillCheck:
    """The recipe's teacher, the alternatives, the optional empirical series, and the verdict."""

    source: str
    threshold: float
    teacher: TeacherAnalysis
    alternatives: list[TeacherAnalysis]
    empirical: EmpiricalAnalysis | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def horizon(self) -> int:
        return self.teacher.horizon

    @property
    def collapsed(self) -> bool:
        return self.teacher.collapsed or bool(self.empirical and self.empirical.collapsed)

    @property
    def verdict(self) -> str:
        return "collapsed" if self.collapsed else "persistent"

    def reasons(self, failing_only: bool = False) -> list[str]:
        """The numbers behind the verdict, analytic first (only the collapsed ones if asked)."""
        rho = self.teacher.relative_lag_final
        sign = "<" if self.teacher.collapsed else "≥"
        out = []
        if self.teacher.collapsed or not failing_only:
            out.append(f"relative lag at the end of the horizon ρ({self.horizon}) = {rho:.3g} "
                       f"{sign} {self.threshold:g}")
        return out + (self.empirical.reasons(failing_only) if self.empirical else [])

    def to_dict(self) -> dict[str, Any]:
        t = self.teacher
        return {"recipe": self.source, "threshold": self.threshold, "horizon": self.horizon,
                "teacher": t.to_dict(with_curve=True),
                "relative_lag_final": t.relative_lag_final,
                "anchor_mass_final": float(t.curve.anchor_mass[-1]),
                "anchor_half_life": t.curve.anchor_half_life(),
                "collapsed": self.collapsed, "verdict": self.verdict,
                "analytic_collapsed": t.collapsed,
                "empirical_collapsed": None if self.empirical is None else self.empirical.collapsed,
                "reasons": self.reasons(), "notes": list(self.notes),
                "empirical": None if self.empirical is None else self.empirical.to_dict(),
                "alternatives": [a.to_dict() for a in self.alternatives]}


def check(recipe: Recipe, threshold: float = DEFAULT_THRESHOLD,
          empirical: EmpiricalAnalysis | None = None,
          notes: Iterable[str] = ()) -> DistillCheck:
    """Analyse the recipe's teacher over ``train.steps`` beside the alternatives; ``empirical``
    adds measured series to the verdict, ``notes`` extra remarks for the reader."""
    if not 0 < threshold < 1:
        raise UsageError(f"--threshold {threshold:g}: must be between 0 and 1 (exclusive)")
    if recipe.teacher.kind == "none":
        raise UsageError("teacher.kind = 'none': there is no teacher to check; use "
                         "--set teacher.kind=wma (or ema, static)")
    spec = TeacherSpec.from_config(recipe.teacher)
    horizon = recipe.train.steps
    teacher = analyse_teacher(spec, horizon, threshold)
    others = [analyse_teacher(s, horizon, threshold)
              for s in alternatives(spec, recipe.teacher, horizon)]
    return DistillCheck(recipe.source, threshold, teacher, others, empirical,
                        [*notes, *_notes(recipe, teacher, empirical)])


def _notes(recipe: Recipe, teacher: TeacherAnalysis,
           empirical: EmpiricalAnalysis | None) -> list[str]:
    notes = []
    if recipe.distill.lambda_sd == 0:
        notes.append("distill.lambda_sd = 0: the teacher is kept but does not enter the loss")
    if teacher.spec.kind != "static" and teacher.spec.update_every >= teacher.horizon > 1:
        when = "after step 1 and the last step" if teacher.spec.kind == "wma" else "after step 1"
        notes.append(f"teacher.update_every = {teacher.spec.update_every} is not below "
                     f"train.steps = {teacher.horizon}: the teacher updates only {when}")
    if empirical is not None:
        if not np.isfinite(empirical.series["param_ratio"]).any():
            notes.append("no param_ratio in the records (run.track_drift = false, or a run from "
                         "an older tracer): the empirical verdict uses the KL only")
        last = int(empirical.steps[-1])
        if last < teacher.horizon:
            notes.append(f"the empirical series covers steps {int(empirical.steps[0])}..{last} "
                         f"of {teacher.horizon}: its verdict speaks for that part of training only")
    return notes


# --------------------------------------------------------------------------- plot


def plot_format(path: Path) -> str:
    """The image format for ``path`` from its suffix (png without one); unknown ones are errors."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise UsageError(f"--plot '{path}': unknown image format '{fmt}' (use one of "
                         f"{', '.join(sorted(supported))})")
    return fmt


def plot(result: DistillCheck, path: Path) -> Path:
    """ρ(t) and anchor mass over training progress for every teacher (two panels), plus the
    measured series when there are any; written atomically (the format follows the suffix)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fmt = plot_format(path)
    panels = 3 if result.empirical else 2
    fig = Figure(figsize=(5.2 * panels, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    idx = _samples(1, result.horizon, PLOT_POINTS)
    for i, analysis in enumerate([result.teacher, *result.alternatives]):
        style = {"lw": 2.4, "zorder": 3} if i == 0 else {"lw": 1.2, "alpha": 0.8}
        label = ("recipe: " if i == 0 else "") + analysis.spec.label
        x = idx / result.horizon
        axes[0].plot(x, analysis.curve.relative_lag[idx], label=label, **style)
        axes[1].plot(x, analysis.curve.anchor_mass[idx], label=label, **style)
    axes[0].axhline(result.threshold, ls=":", color="grey", label=f"threshold {result.threshold:g}")
    axes[0].set(title="relative teacher lag ρ(t) = L(t)/t", xlabel="training progress t/T",
                ylim=(0, 1.05))
    # An EMA's anchor mass reaches 1e-300 and below; clip the axis where the other kernels live.
    axes[1].set_yscale("log", nonpositive="mask")
    axes[1].set(title="anchor mass (weight on θ₀), log scale", xlabel="training progress t/T",
                ylim=(ANCHOR_FLOOR, 2.0))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small")
    if result.empirical:
        _plot_empirical(axes[2], result.empirical, result.teacher.curve)
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format=fmt, dpi=120)
    return Path(path)


def _plot_empirical(ax: Any, emp: EmpiricalAnalysis, curve: kernels.KernelCurve) -> None:
    # The parameter ratio equals ρ(t) under a steady drift, so the two share one axis.
    steps = np.minimum(emp.steps, curve.horizon)
    ax.plot(steps, curve.relative_lag[steps], color="C0", lw=1.2, ls="--",
            label="ρ(t) of the recipe's teacher")
    ax.plot(emp.steps, emp.series["param_ratio"], color="C0", marker=".", ms=3,
            label="measured ‖θ − φ‖ / ‖θ − θ₀‖")
    ax.set(title=f"measured: {emp.source}", xlabel="step", ylabel="ratio", ylim=(0, 1.05))
    kl_ax = ax.twinx()
    kl_ax.plot(emp.steps, emp.kl, color="0.3", lw=1.0, label="teacher-student KL (mean)")
    kl_ax.set_ylabel("KL")
    lines = ax.get_lines() + kl_ax.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize="small")
