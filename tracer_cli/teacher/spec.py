"""What each teacher kind is: its recipe keys, their defaults, its kernel and its label.

One specification, read by the recipe (the kinds, defaults, ``teacher.update_every = 0``), the
engine (the teacher's constructor options; its kernels are
:func:`tracer_cli.teacher.kernels.spec_curve`), ``tracer distill-check`` (labels) and ``tracer
export`` (the model card's words), so a kind or a default is written once. No torch import, and
no import of the engine: the engine reads this module, never the other way round.

Kinds: ``wma`` (the TRACER teacher, a Beta(β, β)-kernel average of the trajectory), ``ema``
(CaRot's exponential moving average with a momentum warm-up), ``static`` (θ₀ forever) and
``none``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# The teacher kinds, listed here only: ``teacher.kind`` accepts these, KIND_KEYS and
# DEFAULT_UPDATE_EVERY give each its keys, and the engine has one class per kind
# (tracer_cli.engine.teachers.TEACHER_KINDS; tests/test_teacher_spec.py checks they match).
TeacherKind = Literal["wma", "ema", "static", "none"]
# The kinds that average the student's trajectory (the others hold θ₀ or nothing), and the
# method each stands for in words (model cards).
AVERAGING_KINDS = ("wma", "ema")
METHOD_LABELS = {"wma": "TRACER", "ema": "CaRot", "static": "static-teacher distillation"}
WMA_BETA = 0.5
# CaRot (Oh et al. 2024): momentum 0.05 -> 0.9 over the first 20% of the steps, every 500 steps.
EMA_MOMENTUM_START = 0.05
EMA_MOMENTUM_END = 0.9
EMA_MOMENTUM_WARMUP = 0.2
EMA_UPDATE_EVERY = 500
# ``teacher.update_every = 0`` means the kind's own interval.
DEFAULT_UPDATE_EVERY = {"wma": 1, "ema": EMA_UPDATE_EVERY, "static": 1, "none": 1}
# The recipe keys each kind reads (besides ``kind``).
KIND_KEYS = {"wma": ("beta", "update_every"),
             "ema": ("momentum_start", "momentum_end", "momentum_warmup", "update_every"),
             "static": (), "none": ()}


@dataclass(frozen=True)
class TeacherSpec:
    """One teacher: its kind and settings (fields a kind does not read keep their defaults)."""

    kind: str
    update_every: int = 1
    beta: float = WMA_BETA
    momentum_start: float = EMA_MOMENTUM_START
    momentum_end: float = EMA_MOMENTUM_END
    momentum_warmup: float = EMA_MOMENTUM_WARMUP

    @classmethod
    def from_config(cls, cfg: Any) -> TeacherSpec:
        """From a recipe's ``[teacher]`` table (a :class:`tracer_cli.recipe.TeacherConfig`)."""
        every = (cfg.update_every or DEFAULT_UPDATE_EVERY[cfg.kind]
                 if "update_every" in KIND_KEYS[cfg.kind] else 1)
        return cls(cfg.kind, every, **{k: getattr(cfg, k) for k in KIND_KEYS[cfg.kind]
                                       if k != "update_every"})

    def params(self) -> dict[str, Any]:
        """The settings this kind reads, as recipe keys."""
        return {k: getattr(self, k) for k in KIND_KEYS[self.kind]}

    def engine_params(self) -> dict[str, Any]:
        """Keyword options of the engine's teacher of this kind
        (:func:`tracer_cli.engine.teachers.make_teacher`)."""
        params = self.params()
        if "momentum_warmup" in params:
            params["warmup"] = params.pop("momentum_warmup")
        return params

    @property
    def label(self) -> str:
        """Short: ``wma β=0.5, k=1``, ``ema m=0.05→0.9 over 20%, k=500``, ``static (θ₀)``."""
        if self.kind == "wma":
            return f"wma β={self.beta:g}, k={self.update_every}"
        if self.kind == "ema":
            if self.momentum_start == self.momentum_end or self.momentum_warmup == 0:
                return f"ema m={self.momentum_end:g}, k={self.update_every}"
            return (f"ema m={self.momentum_start:g}→{self.momentum_end:g} over "
                    f"{self.momentum_warmup:.0%}, k={self.update_every}")
        return "static (θ₀)" if self.kind == "static" else "none"

    @property
    def words(self) -> str:
        """For people (model cards): ``WMA teacher β=0.5``, ``EMA teacher m=0.05→0.9 every 500
        steps``, ``static teacher θ₀``."""
        if self.kind == "wma":
            return f"WMA teacher β={self.beta:g}"
        if self.kind == "ema":
            return (f"EMA teacher m={self.momentum_start:g}→{self.momentum_end:g} every "
                    f"{self.update_every} steps")
        return "static teacher θ₀" if self.kind == "static" else "no teacher"
