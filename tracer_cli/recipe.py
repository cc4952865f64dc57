"""TOML recipes: loading, ``--set`` overrides, validation with key paths, and the lock file.

A recipe has the sections ``run``, ``model``, ``data``, ``task``, ``train``, ``teacher``,
``distill`` and ``loggers``. The core sections are typed dataclasses validated here; the tables a
plugin owns (the backbone's keys in ``[model]``, each dataset's options, the task's options, each
``[loggers.<name>]`` table) are passed on and validated by that plugin with
:class:`tracer_cli.sdk.options.Options`. Every error names the key path,
the value and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import sys
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from tracer_cli.errors import RecipeError, UsageError
from tracer_cli.sdk.options import FLOAT32_MAX, fits_float32
from tracer_cli.teacher.spec import (
    DEFAULT_UPDATE_EVERY, EMA_MOMENTUM_END, EMA_MOMENTUM_START, EMA_MOMENTUM_WARMUP, WMA_BETA,
    TeacherKind)

# What a run trains (``train.method``), listed here only; see METHOD_DEFAULTS and docs/method.md.
Method = Literal["zeroshot", "lp", "ft", "lpft", "flyp", "carot", "tracer"]
METHODS: tuple[str, ...] = typing.get_args(Method)
# Methods that train a task head with its supervised loss (cross-entropy for classification)
# instead of the contrastive image-text loss, and take no teacher.
HEAD_METHODS = ("lp", "ft", "lpft")
# Methods with a teacher and distillation terms; every other method refuses their keys.
TEACHER_METHODS = ("carot", "tracer")
# numpy seeds its global generator from an unsigned 32-bit value.
MAX_SEED = 2**32 - 1
# The longest file name most file systems accept (NAME_MAX, in bytes).
MAX_NAME_BYTES = 255
# How deeply tables and arrays may nest in a recipe: real recipes use four or five levels; far
# deeper ones would exhaust Python's recursion limit while being copied or compared.
MAX_NESTING = 64
# Upper bounds of the counts a recipe sets, far beyond any real run, so that a typo (an extra
# zero, 2**70) stops before anything is allocated instead of overflowing or exhausting memory:
# optimizer steps (and every interval counted in steps), examples per batch, loader workers.
MAX_STEPS = 10**9
MAX_BATCH = 2**20
MAX_WORKERS = 1024
_CUDA_DEVICE = re.compile(r"cuda:\d+")


def _check(path: str, ok: bool, message: str) -> None:
    if not ok:
        raise RecipeError(path, message)


def _check_range(path: str, value: int, low: int, high: int, note: str = "") -> None:
    _check(path, low <= value <= high, f"got {value}; must be between {low} and {high:,}{note}")


def _check_name(path: str, value: str, what: str) -> None:
    """Refuse control characters (a newline, a tab, an escape) in a name that becomes a folder or
    file name, a log tag or a line of a table: they make names that span lines or cannot be
    typed."""
    bad = [c for c in value if unicodedata.category(c) == "Cc"]
    if bad:
        raise RecipeError(path, f"got {value!r}; a {what} cannot contain control characters "
                                f"(found U+{ord(bad[0]):04X})")


@dataclass
class RunConfig:
    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    eval: bool = True
    # Evaluate the pretrained model too before training (eval/zeroshot.json); false skips it when
    # a batch of runs shares one pretrained model (benchmarks/robustness.py evaluates it once).
    eval_zeroshot: bool = True
    # Evaluate the student (and an active teacher) every N steps during training (0: only before
    # and after), on ``eval_sets`` (labels of data.id / data.ood; empty: all of them), each capped
    # at ``eval_max_images`` evenly spaced images (0: all), so that a long run shows its curves.
    eval_every: int = 0
    eval_sets: list[str] = field(default_factory=list)
    eval_max_images: int = 0
    log_every: int = 10
    # Keep a frozen copy of the initial student to log ‖θ − θ₀‖ and ‖θ − φ‖ / ‖θ − θ₀‖ (one extra
    # parameter copy in memory while a teacher is active); false drops it for very large models.
    track_drift: bool = True
    # Experiment loggers besides metrics.jsonl (always written): registered logger names, each
    # configured by an optional [loggers.<name>] table. Names are checked against the plugin
    # registry when the run starts (the recipe module knows no plugins).
    loggers: list[str] = field(default_factory=list)

    def validate(self, path: str) -> None:
        # "." and ".." would make the run directory the output folder or its parent, which
        # --overwrite would then delete.
        name_ok = bool(self.name) and self.name not in (".", "..") and \
            not any(c in self.name for c in "/\\\0")
        _check(f"{path}.name", name_ok, f"got {self.name!r}; must be a folder name (not '.' or "
               "'..', without '/', '\\' or NUL characters)")
        size = len(self.name.encode("utf-8", "surrogateescape"))
        _check(f"{path}.name", size <= MAX_NAME_BYTES, f"is {size} bytes long; a folder name can "
               f"have at most {MAX_NAME_BYTES} bytes")
        _check_name(f"{path}.name", self.name, "folder name")
        _check_name(f"{path}.output_dir", self.output_dir, "path")
        _check_range(f"{path}.seed", self.seed, 0, MAX_SEED)
        _check_range(f"{path}.log_every", self.log_every, 1, MAX_STEPS)
        _check_range(f"{path}.eval_every", self.eval_every, 0, MAX_STEPS)
        _check(f"{path}.eval_max_images", self.eval_max_images >= 0,
               f"got {self.eval_max_images}; must be >= 0 (0: every image)")
        _check(f"{path}.eval_every", not self.eval_every or self.eval,
               f"got {self.eval_every}, but run.eval = false turns every evaluation off; set "
               "run.eval = true or run.eval_every = 0")
        ok = self.device in ("auto", "cpu", "cuda") or bool(_CUDA_DEVICE.fullmatch(self.device))
        _check(f"{path}.device", ok, f"got {self.device!r}; allowed: auto, cpu, cuda, cuda:N")
        dupes = sorted({n for n in self.loggers if self.loggers.count(n) > 1})
        _check(f"{path}.loggers", not dupes, f"{', '.join(dupes)} listed twice")


@dataclass
class ModelConfig:
    """``backbone`` picks the plugin; every other key except ``freeze_bn_stats`` is the plugin's."""

    backbone: str = "openclip"
    freeze_bn_stats: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Dataset specs are ``{"name": ..., "label": ..., **options}`` tables after normalisation."""

    train: dict[str, Any] = field(default_factory=dict)
    id: list[dict[str, Any]] = field(default_factory=list)
    ood: list[dict[str, Any]] = field(default_factory=list)
    # Retention: datasets of other tasks, scored zero-shot before and after finetuning (what the
    # model kept of its general knowledge; tracer_cli.sdk.task_metrics.retention).
    retain: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 256
    num_workers: int = 0
    # Share of the training set that may turn out unreadable (corrupt or truncated images, which
    # are skipped); one more distinct bad file stops the run. Below 1, so a set where every file
    # is bad stops instead of looking for a good batch forever.
    max_bad_fraction: float = 0.01

    def validate(self, path: str) -> None:
        _check_range(f"{path}.eval_batch_size", self.eval_batch_size, 1, MAX_BATCH)
        _check_range(f"{path}.num_workers", self.num_workers, 0, MAX_WORKERS)
        _check(f"{path}.max_bad_fraction", 0 <= self.max_bad_fraction < 1,
               f"got {self.max_bad_fraction}; must be >= 0 and < 1")


@dataclass
class TaskConfig:
    name: str = "classification"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    method: Method = "tracer"
    steps: int = 100
    batch_size: int = 64
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 0
    grad_clip: float = 1.0
    checkpoint_every: int = 0
    # Retention: the newest N full step checkpoints stay (0: all of them); older ones are removed
    # only once a newer one is completely written. Every keep_every steps (0: never) a
    # weights-only milestone (no optimizer state; for eval / export, not resume) stays for good.
    keep_checkpoints: int = 2
    keep_every: int = 0
    # A non-finite loss either stops the run (naming the step and the last good checkpoint) or
    # skips that batch without an optimizer step.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # Speed options that do not change the arithmetic's meaning: torch.compile of the student's
    # training forward (worth it on GPUs; compile time dominates short CPU runs), and the
    # channels_last memory format for convolutional towers.
    compile: bool = False
    channels_last: bool = False
    # Learning rate of a task head (lp, ft, lpft, and tasks with a head such as vqa); 0: train.lr.
    head_lr: float = 0.0
    # lpft: steps of the linear-probe phase (head only, at head_lr) before the whole model trains;
    # 0: half of train.steps.
    lp_steps: int = 0
    # Memory options that do not change what is computed: activation checkpointing of the
    # student's transformer blocks (recomputed in the backward pass; a backbone capability).
    grad_checkpointing: bool = False
    # Micro-batches per optimizer step: batch_size examples per step in accum_steps pieces, with
    # the gradient of the whole batch (features cached, see tracer_cli.engine.accumulation).
    accum_steps: int = 1
    # Under torchrun: "ddp" replicates the model on every rank; "fsdp" shards student, teacher,
    # θ₀ and AdamW state over the ranks (torch FSDP2; see tracer_cli.engine.sharding).
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # AdamW's moment decay rates and denominator term (torch's and open_clip_train's defaults),
    # and the learning-rate curve after the linear warm-up (see tracer_cli.engine.step.SCHEDULES).
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    # The run's length in passes over the training set instead of train.steps (0: steps); the
    # engine turns it into steps once the training set is built (resolve_epochs).
    epochs: int = 0
    # Towers kept fixed, with open_clip's lock_image_tower / lock_text_tower semantics (a backbone
    # capability): the last N groups / layers stay trainable; frozen BatchNorm statistics and
    # LayerNorm weights of the locked part as open_clip_train's --lock-* flags.
    lock_image: bool = False
    lock_image_unlocked_groups: int = 0
    lock_image_freeze_bn_stats: bool = False
    lock_text: bool = False
    lock_text_unlocked_layers: int = 0
    lock_text_freeze_layer_norm: bool = True

    def resolved_head_lr(self) -> float:
        return self.head_lr or self.lr

    def resolved_lp_steps(self) -> int:
        if self.method != "lpft":
            return self.steps if self.method == "lp" else 0
        return self.lp_steps or self.steps // 2

    def validate(self, path: str) -> None:
        _check_range(f"{path}.steps", self.steps, 1, MAX_STEPS)
        _check_range(f"{path}.batch_size", self.batch_size, 1, MAX_BATCH)
        for key, note in (("lr", ""), ("weight_decay", ""), ("grad_clip", " (0 disables)")):
            value = getattr(self, key)
            _check(f"{path}.{key}", value >= 0, f"got {value:g}; must be >= 0{note}")
        self._validate_optimizer(path)
        self._validate_locks(path)
        if not self.epochs:  # with epochs, once the steps are known (resolve_epochs)
            self._validate_horizon(path)
        _check_range(f"{path}.checkpoint_every", self.checkpoint_every, 0, MAX_STEPS,
                     " (0: only the final checkpoint)")
        _check_range(f"{path}.keep_checkpoints", self.keep_checkpoints, 0, MAX_STEPS,
                     " (0: keep every step checkpoint)")
        _check_range(f"{path}.keep_every", self.keep_every, 0, MAX_STEPS,
                     " (0: no weights-only milestones)")
        _check(f"{path}.head_lr", self.head_lr >= 0, "must be >= 0 (0: train.lr)")
        _check(f"{path}.accum_steps", self.accum_steps >= 1 and
               self.batch_size % self.accum_steps == 0,
               f"got {self.accum_steps}; must be >= 1 and divide train.batch_size "
               f"({self.batch_size}) into equal micro-batches")
        if self.strategy == "fsdp" and self.method in HEAD_METHODS:
            raise RecipeError(f"{path}.strategy", f"'fsdp' shards the contrastive methods "
                              f"(flyp, carot, tracer), not train.method = '{self.method}'; use "
                              "'ddp' for it")
        if self.lp_steps and self.method != "lpft":
            raise RecipeError(f"{path}.lp_steps", f"only applies to train.method = 'lpft' (got "
                              f"'{self.method}')")

    def _validate_horizon(self, path: str) -> None:
        """The keys bounded by ``steps``."""
        _check(f"{path}.warmup_steps", 0 <= self.warmup_steps <= self.steps,
               f"got {self.warmup_steps}; must be between 0 and train.steps ({self.steps})")
        _check(f"{path}.lp_steps", 0 <= self.lp_steps < self.steps,
               f"got {self.lp_steps}; must be >= 0 and < train.steps ({self.steps}) (0: half of "
               "the steps)")

    def _validate_optimizer(self, path: str) -> None:
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            _check(f"{path}.{key}", 0 <= value < 1, f"got {value:g}; must be >= 0 and < 1")
        _check(f"{path}.eps", self.eps > 0, f"got {self.eps:g}; must be > 0")
        _check_range(f"{path}.epochs", self.epochs, 0, MAX_STEPS,
                     " (0: the run's length is train.steps)")

    def _validate_locks(self, path: str) -> None:
        """The ``lock_*`` options need their tower locked, and a method whose backbone trains."""
        default = TrainConfig()
        for tower, options in (("image", ("unlocked_groups", "freeze_bn_stats")),
                               ("text", ("unlocked_layers", "freeze_layer_norm"))):
            locked = getattr(self, f"lock_{tower}")
            for key in (f"lock_{tower}_{option}" for option in options):
                value = getattr(self, key)
                _check(f"{path}.{key}", locked or value == getattr(default, key),
                       f"got {value!r}, but it only applies with {path}.lock_{tower} = true")
            _check(f"{path}.lock_{tower}", not locked or self.method not in ("zeroshot", "lp"),
                   f"got true, but train.method = '{self.method}' trains no part of the backbone")
        for key in ("lock_image_unlocked_groups", "lock_text_unlocked_layers"):
            _check(f"{path}.{key}", getattr(self, key) >= 0,
                   f"got {getattr(self, key)}; must be >= 0 (0: the whole tower is locked)")
        _check(f"{path}.lock_image", not self.lock_image or self.method not in HEAD_METHODS or
               self.lock_image_unlocked_groups > 0,
               f"a fully locked image tower leaves train.method = '{self.method}' only its head "
               "to train, which is train.method = 'lp'; use that, or keep the last groups "
               f"trainable with {path}.lock_image_unlocked_groups")

    def resolve_epochs(self, dataset_size: int, path: str = "train") -> None:
        """Set ``steps`` from ``epochs`` (when set) and the training set's size: whole batches
        only, as the engine's data stream drops the last partial one; then check the keys
        bounded by ``steps``."""
        if not self.epochs:
            return
        per_epoch = dataset_size // self.batch_size
        _check(f"{path}.epochs", per_epoch >= 1,
               f"the training set has {dataset_size} examples, fewer than one batch "
               f"(train.batch_size = {self.batch_size})")
        self.steps = self.epochs * per_epoch
        _check(f"{path}.epochs", self.steps <= MAX_STEPS,
               f"got {self.epochs}: {self.steps:,} steps of {per_epoch:,} per epoch; a run has at "
               f"most {MAX_STEPS:,}")
        self._validate_horizon(path)


@dataclass
class TeacherConfig:
    kind: TeacherKind = "wma"
    beta: float = WMA_BETA
    update_every: int = 0
    momentum_start: float = EMA_MOMENTUM_START
    momentum_end: float = EMA_MOMENTUM_END
    momentum_warmup: float = EMA_MOMENTUM_WARMUP

    def validate(self, path: str) -> None:
        _check(f"{path}.beta", self.beta > 0, f"got {self.beta}; must be > 0")
        _check_range(f"{path}.update_every", self.update_every, 0, MAX_STEPS,
                     f" (0: the kind's default, {DEFAULT_UPDATE_EVERY['wma']} for wma and "
                     f"{DEFAULT_UPDATE_EVERY['ema']} for ema)")
        for key in ("momentum_start", "momentum_end", "momentum_warmup"):
            value = getattr(self, key)
            _check(f"{path}.{key}", 0 <= value <= 1, f"got {value}; must be in [0, 1]")

    def resolved_update_every(self) -> int:
        return self.update_every or DEFAULT_UPDATE_EVERY[self.kind]


@dataclass
class DistillWeights:
    """The ``[distill]`` table: weights of the distillation views and regularizers, read by the
    engine as they are. ``crd``, ``fd``, ``icl`` and ``xkd`` weight the views inside L_SD (all
    zero selects plain soft distillation); ``lambda_sd`` scales L_SD in the total loss;
    ``temperature`` divides the teacher logits of plain soft distillation (as the reference code
    does; with a view weight set it is refused); ``lambda_fn`` and ``lambda_orth`` weight the
    projection penalties. Unset keys are 0 here; ``train.method`` supplies its defaults
    (:data:`METHOD_DEFAULTS`, e.g. :data:`TRACER_WEIGHTS`)."""

    lambda_sd: float = 0.0
    temperature: float = 1.0
    crd: float = 0.0
    fd: float = 0.0
    icl: float = 0.0
    xkd: float = 0.0
    lambda_fn: float = 0.0
    lambda_orth: float = 0.0

    def __post_init__(self) -> None:
        self.validate("distill")

    def validate(self, path: str) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check(f"{path}.{f.name}", value >= 0, f"got {value}; must be >= 0")
        _check(f"{path}.temperature", self.temperature > 0, "must be > 0")
        views = [k for k in VIEW_NAMES if getattr(self, k) > 0]
        _check(f"{path}.temperature", self.temperature == 1 or not views,
               f"got {self.temperature:g}, but it softens the teacher only in plain soft-label "
               f"distillation (crd, fd, icl and xkd all 0), as in the reference code; with "
               f"{', '.join(views)} set it has no effect: remove it")

    @property
    def view_weights(self) -> dict[str, float]:
        """The four view weights by name (``crd``, ``fd``, ``icl``, ``xkd``)."""
        return {name: getattr(self, name) for name in VIEW_NAMES}

    @property
    def uses_views(self) -> bool:
        """False when every view weight is zero, i.e. plain soft distillation is used."""
        return any(v > 0 for v in self.view_weights.values())


VIEW_NAMES = ("crd", "fd", "icl", "xkd")
# The paper's CLIP ViT-B/16 ImageNet weights (TRACER) and CaRot's (plain soft-label distillation
# λ_sd = 1.5, orthogonality λ_orth = 0.2; Oh et al. 2024).
TRACER_WEIGHTS = DistillWeights(lambda_sd=0.9, crd=1.0, fd=2000.0, icl=1.0, xkd=1.0,
                                lambda_fn=0.05)
CAROT_WEIGHTS = DistillWeights(lambda_sd=1.5, lambda_orth=0.2)


def _weights_table(weights: DistillWeights) -> dict[str, float]:
    """A method's ``[distill]`` defaults: every weight (the temperature stays the recipe's)."""
    return {k: v for k, v in dataclasses.asdict(weights).items() if k != "temperature"}


# Each method's values for the [teacher] and [distill] keys a recipe leaves unset. TRACER: the
# paper's ViT-B/16 defaults; CaRot: its EMA teacher (teacher.spec) and weights; every other method:
# no teacher and no regularizer. Explicit keys always win. update_every is left to the teacher
# kind's own default (teacher.spec.DEFAULT_UPDATE_EVERY), so a tracer recipe that switches to an
# EMA teacher gets the EMA interval.
METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "tracer": {"teacher": {"kind": "wma", "beta": WMA_BETA},
               "distill": _weights_table(TRACER_WEIGHTS)},
    "carot": {"teacher": {"kind": "ema", "momentum_start": EMA_MOMENTUM_START,
                          "momentum_end": EMA_MOMENTUM_END,
                          "momentum_warmup": EMA_MOMENTUM_WARMUP},
              "distill": _weights_table(CAROT_WEIGHTS)},
    **{m: {"teacher": {"kind": "none"}} for m in ("zeroshot", "lp", "ft", "lpft", "flyp")},
}


@dataclass
class Recipe:
    run: RunConfig
    model: ModelConfig
    data: DataConfig
    task: TaskConfig
    train: TrainConfig
    teacher: TeacherConfig
    distill: DistillWeights
    # [loggers.<name>] option tables, validated by each logger plugin.
    loggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "<memory>"

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as TOML-ready tables (plugin options flattened back in place)."""
        out = {
            "run": dataclasses.asdict(self.run),
            "model": {"backbone": self.model.backbone, "freeze_bn_stats": self.model.freeze_bn_stats,
                      **self.model.options},
            "data": {"train": self.data.train, "id": self.data.id, "ood": self.data.ood,
                     "retain": self.data.retain,
                     "eval_batch_size": self.data.eval_batch_size,
                     "num_workers": self.data.num_workers,
                     "max_bad_fraction": self.data.max_bad_fraction,
                     "options": self.data.options},
            "task": {"name": self.task.name, **self.task.options},
            "train": dataclasses.asdict(self.train),
            "teacher": {**dataclasses.asdict(self.teacher),
                        "update_every": self.teacher.resolved_update_every()},
            "distill": dataclasses.asdict(self.distill),
            "loggers": self.loggers,
        }
        return copy.deepcopy(out)


def _display(spec: dict[str, Any]) -> str:
    return spec.get("label") or spec["name"]


# --------------------------------------------------------------------------- typed sections


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a dataclass field annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if origin is list:  # list[str]; one bare string is a list of one (--set run.loggers=wandb)
        value = [value] if isinstance(value, str) else value
        _check(path, isinstance(value, list) and all(isinstance(v, str) for v in value),
               f"expected a list of strings, got {value!r}")
        return list(value)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        _check(path, value in allowed, f"got {value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    if annotation is bool:
        _check(path, isinstance(value, bool), f"expected true or false, got {value!r}")
    elif annotation is int:
        _check(path, isinstance(value, int) and not isinstance(value, bool),
               f"expected an integer, got {value!r}")
    elif annotation is float:
        _check(path, isinstance(value, (int, float)) and not isinstance(value, bool),
               f"expected a number, got {value!r}")
        # nan and inf pass every >= check; numbers reach torch as float32 tensors (learning
        # rates, loss weights), where a larger one overflows.
        _check(path, fits_float32(value),
               f"got {value!r}; must be a finite number of magnitude at most {FLOAT32_MAX:.4g} "
               "(float32)")
        return float(value)
    elif annotation is str:
        _check(path, isinstance(value, str), f"expected a string, got {value!r}")
    return value


def _section(cls: type, table: Any, path: str, extra: str | None = None) -> Any:
    """Build dataclass ``cls`` from ``table``; unknown keys go to ``extra`` or are errors."""
    _check(path, isinstance(table, dict), f"expected a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != extra]
    kwargs: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in table.items():
        if key in names:
            kwargs[key] = _coerce(f"{path}.{key}", value, hints[key])
        elif extra is not None:
            rest[key] = value
        else:
            raise RecipeError(f"{path}.{key}", f"unknown key; allowed: {', '.join(names)}")
    obj = cls(**kwargs, **({extra: rest} if extra else {}))
    if hasattr(obj, "validate"):
        obj.validate(path)
    return obj


def _dataset_spec(value: Any, path: str, defaults: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"name": value}
    _check(path, isinstance(value, dict) and isinstance(value.get("name"), str),
           f"expected a dataset name or a table with a 'name' key, got {value!r}")
    _check_name(f"{path}.name", value["name"], "dataset name")
    spec = {**copy.deepcopy(defaults), **value}
    if "label" in spec:
        _check(f"{path}.label", isinstance(spec["label"], str) and spec["label"], "must be a string")
        _check_name(f"{path}.label", spec["label"], "dataset label")
    return spec


# The evaluation roles of [data]: in-distribution, out-of-distribution and retention sets.
EVAL_ROLES = ("id", "ood", "retain")


def _data_section(table: Any, path: str) -> DataConfig:
    _check(path, isinstance(table, dict), f"expected a table, got {table!r}")
    table = dict(table)
    options = table.pop("options", {})
    _check(f"{path}.options", isinstance(options, dict), "expected a table of dataset options")
    _check(f"{path}.train", "train" in table, "is required (the finetuning dataset)")
    train = _dataset_spec(table.pop("train"), f"{path}.train", options)
    lists = {}
    for role in EVAL_ROLES:
        raw = table.pop(role, [])
        raw = [raw] if isinstance(raw, (str, dict)) else raw
        _check(f"{path}.{role}", isinstance(raw, list), f"expected a list of datasets, got {raw!r}")
        lists[role] = [_dataset_spec(v, f"{path}.{role}[{i}]", options) for i, v in enumerate(raw)]
    cfg = _section(DataConfig, table, path)
    cfg.train, cfg.id, cfg.ood, cfg.options = train, lists["id"], lists["ood"], options
    cfg.retain = lists["retain"]
    names = [_display(s) for s in cfg.id + cfg.ood + cfg.retain]
    dupes = sorted({n for n in names if names.count(n) > 1})
    _check(f"{path}.{'retain' if cfg.retain else 'ood'}", not dupes, f"evaluation datasets "
           f"{dupes} appear twice; give each a distinct 'label'")
    return cfg


def _loggers_section(table: Any, enabled: list[str]) -> dict[str, dict[str, Any]]:
    """``[loggers.<name>]`` tables: each a table, each for a logger that ``run.loggers`` turns on
    (a table for another name is a typo or a forgotten ``run.loggers`` entry)."""
    _check("loggers", isinstance(table, dict), f"expected a table of [loggers.<name>] tables, got "
           f"{table!r}")
    for name, options in table.items():
        _check(f"loggers.{name}", isinstance(options, dict),
               f"expected a table of the logger's options, got {options!r}")
        _check(f"loggers.{name}", name in enabled or name == "jsonl",
               f"options for a logger that run.loggers does not turn on (run.loggers = "
               f"{enabled!r}); add '{name}' to run.loggers or remove the table")
    return copy.deepcopy(table)


SECTIONS = ("run", "model", "data", "task", "train", "teacher", "distill", "loggers")


def from_dict(raw: dict[str, Any], source: str = "<memory>") -> Recipe:
    """Validate a parsed recipe (after overrides) into a :class:`Recipe`."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise RecipeError(unknown[0], f"unknown section; allowed: {', '.join(SECTIONS)}")
    _check("data", "data" in raw, "section is required")
    raw = with_method_defaults(raw)
    model = _section(ModelConfig, raw.get("model", {}), "model", extra="options")
    task = _section(TaskConfig, raw.get("task", {}), "task", extra="options")
    run = _section(RunConfig, raw.get("run", {}), "run")
    recipe = Recipe(
        run=run,
        model=model,
        data=_data_section(raw["data"], "data"),
        task=task,
        train=_section(TrainConfig, raw.get("train", {}), "train"),
        teacher=_section(TeacherConfig, raw.get("teacher", {}), "teacher"),
        distill=_section(DistillWeights, raw.get("distill", {}), "distill"),
        loggers=_loggers_section(raw.get("loggers", {}), run.loggers),
        source=source,
    )
    _check_method(recipe)
    _check_eval_sets(recipe)
    _check_length(raw.get("train", {}))
    return recipe


def _check_eval_sets(recipe: Recipe) -> None:
    """``run.eval_sets`` names evaluation datasets by the labels the results use."""
    labels = [_display(s) for s in recipe.data.id + recipe.data.ood]
    for name in recipe.run.eval_sets:
        _check("run.eval_sets", name in labels,
               f"got {name!r}, which is not an evaluation dataset of data.id / data.ood; "
               f"allowed: {', '.join(labels) or '(none: the recipe evaluates nothing)'}")


def _check_length(train: dict[str, Any]) -> None:
    """A run's length is ``train.steps`` or ``train.epochs``, never both."""
    _check("train.epochs", not (train.get("epochs") and "steps" in train),
           f"got {train.get('epochs')!r} with train.steps = {train.get('steps')!r}; set one of "
           "them (steps: optimizer steps; epochs: passes over the training set)")


def with_method_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with the [teacher] and [distill] keys it leaves unset filled from its method's
    defaults (:data:`METHOD_DEFAULTS`); a copy, the input is not changed."""
    train = raw.get("train", {})
    method = train.get("method", "tracer") if isinstance(train, dict) else "tracer"
    if method not in METHODS:
        raise RecipeError("train.method", f"got {method!r}; allowed: {', '.join(METHODS)}")
    raw = copy.deepcopy(raw)
    for section, defaults in METHOD_DEFAULTS[method].items():
        table = raw.setdefault(section, {})
        if isinstance(table, dict):  # anything else fails in _section with its key path
            for key, value in defaults.items():
                table.setdefault(key, value)
    return raw


def _check_method(recipe: Recipe) -> None:
    """Methods without a teacher term refuse teacher and distillation keys instead of silently
    ignoring them."""
    method = recipe.train.method
    if method in TEACHER_METHODS:
        return
    what = ("trains a task head with cross-entropy" if method in HEAD_METHODS
            else "trains with the contrastive loss alone" if method == "flyp"
            else "evaluates the pretrained model without training")
    _check("teacher.kind", recipe.teacher.kind == "none",
           f"got {recipe.teacher.kind!r}, but train.method = '{method}' {what} and takes no "
           "teacher; set teacher.kind = 'none' or use train.method 'tracer' or 'carot'")
    for f in dataclasses.fields(recipe.distill):
        if f.name == "temperature":
            continue
        value = getattr(recipe.distill, f.name)
        _check(f"distill.{f.name}", value == 0,
               f"got {value:g}, but train.method = '{method}' {what} and has no distillation or "
               "projection regularizer; remove it or use train.method 'tracer' or 'carot'")


# --------------------------------------------------------------------------- resuming

# Keys a resumed run may change: where and on what it runs, what it evaluates, how often it
# checkpoints, where it logs, and how it treats bad data or a non-finite loss (resuming with
# on_nonfinite = "skip" after a stop is the point of that key). Every other key shapes the training
# trajectory. Plugin keys ([model] and [task] options) are free when their plugin's factory
# declares them in ``resume_free_keys`` (tracer_cli.sdk.contracts), e.g. openclip's model.cache_dir.
RESUME_FREE_KEYS = (
    "run.name", "run.output_dir", "run.device", "run.precision", "run.eval", "run.eval_zeroshot",
    "run.eval_every", "run.eval_sets", "run.eval_max_images", "run.log_every",
    "run.track_drift", "run.loggers", "loggers", "data.id", "data.ood", "data.retain",
    "data.eval_batch_size",
    "data.num_workers", "data.max_bad_fraction", "data.options",
    "train.checkpoint_every", "train.keep_checkpoints", "train.keep_every", "train.on_nonfinite",
    "train.compile", "train.channels_last", "train.grad_checkpointing", "train.accum_steps",
    "train.strategy",
)
_ABSENT = "(absent)"


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


# Keys of [model] and [task] that the core reads itself: no plugin can declare them free.
_CORE_PLUGIN_KEYS = {"model": ("backbone", "freeze_bn_stats"), "task": ("name",)}


def plugin_resume_free_keys(saved: dict[str, Any], current: Recipe) -> tuple[str, ...]:
    """``model.<key>`` / ``task.<key>`` for every key that the backbone and task plugins of either
    recipe declare resume-free (their factories' ``resume_free_keys``)."""
    return _declared_free_keys([saved, current.to_dict()])


def _declared_free_keys(tables: list[dict[str, Any]]) -> tuple[str, ...]:
    """The plugin-declared resume-free keys of the backbones and tasks the recipe ``tables``
    name."""
    from tracer_cli.sdk.host import declared

    keys: list[str] = []
    for section, kind, field_ in (("model", "backbones", "backbone"), ("task", "tasks", "name")):
        names = {t[section].get(field_) for t in tables if isinstance(t.get(section), dict)}
        for plugin in sorted(n for n in names if isinstance(n, str)):
            keys += [f"{section}.{k}" for k in declared(kind, plugin, "resume_free_keys", ())
                     if k not in _CORE_PLUGIN_KEYS[section]]
    return tuple(dict.fromkeys(keys))


def training_free_keys(tables: dict[str, Any]) -> tuple[str, ...]:
    """Every key of the recipe ``tables`` that cannot change the training trajectory: the
    resume-free keys, the core's and its plugins'. ``tracer compare`` groups runs without them."""
    return RESUME_FREE_KEYS + _declared_free_keys([tables])


def resume_free(key: str, free_keys: tuple[str, ...]) -> bool:
    """Whether dotted ``key`` is one of ``free_keys`` or lies inside one of their tables."""
    return any(key == free or key.startswith(f"{free}.") for free in free_keys)


def resume_differences(saved: dict[str, Any], current: Recipe) -> list[str]:
    """``"key (checkpoint: X, now: Y)"`` for every run-defining key in which the recipe saved in a
    checkpoint differs from ``current``; empty when the run can be resumed as it is."""
    old, new = _flatten(saved), _flatten(current.to_dict())
    free = RESUME_FREE_KEYS + plugin_resume_free_keys(saved, current)
    if current.train.epochs:  # steps follow from epochs and data.train, both compared
        free += ("train.steps",)
    out = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if not resume_free(key, free) and before != after:
            out.append(f"{key} (checkpoint: {before!r}, now: {after!r})")
    return out


# --------------------------------------------------------------------------- files and overrides


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a usage error naming the file."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"recipe file '{path}' does not exist")
    if not path.is_file():
        what = "a directory" if path.is_dir() else "not a regular file"
        raise UsageError(f"recipe file '{path}' is {what}; expected a TOML file such as "
                         "recipes/quickstart.toml")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"recipe file '{path}' is not valid TOML: {exc}") from None
    except RecursionError:
        raise UsageError(f"recipe file '{path}' is not valid TOML: arrays or tables nested too "
                         "deeply") from None
    except OSError as exc:
        raise UsageError(f"recipe file '{path}' cannot be read: {exc.strerror}") from None
    deep = too_deep(raw)
    if deep is not None:
        raise UsageError(f"recipe file '{path}' nests tables or arrays more than {MAX_NESTING} "
                         f"levels deep (at '{deep}')")
    return raw


def too_deep(value: Any, limit: int = MAX_NESTING) -> str | None:
    """The key path (shortened) of a value nested more than ``limit`` tables or arrays deep, or
    None. Iterative, so that it works where a recursive walk would hit the recursion limit."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if len(path) > limit:
            return ".".join(path[:4]) + "..."
        if isinstance(node, dict):
            stack.extend((v, (*path, str(k))) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, (*path, f"[{i}]")) for i, v in enumerate(node))
    return None


# The value of ``--set key=`` (nothing after "="): remove the key, so that its default applies.
REMOVE = object()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], value). The value is read as TOML if it parses
    (numbers, booleans, quoted strings, lists, inline tables), else taken as a plain string, and a
    bare word with commas becomes a list (``data.ood=synth-sketch,synth-noisy``). Nothing after
    the "=" gives :data:`REMOVE` (an empty string is ``a.b.c=""``)."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise UsageError(f"--set '{text}': expected KEY.PATH=VALUE, e.g. train.steps=100")
    if len(parts) > MAX_NESTING:
        raise UsageError(f"--set '{key[:40]}...': the key path has {len(parts)} parts; a recipe "
                         f"nests at most {MAX_NESTING} levels")
    if not value.strip():
        return [p.strip() for p in parts], REMOVE
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError, KeyError):
        parsed = value.strip()
        if "," in parsed:
            parsed = [p.strip() for p in parsed.split(",") if p.strip()]
    return [p.strip() for p in parts], parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a parsed recipe (a deep copy is returned).

    A part ``name[i]`` indexes a list (``data.ood[0].root=/x``); a dataset given by its name alone
    (``data.train``, ``data.id[i]``, ``data.ood[i]``, ``data.retain[i]``) becomes a table when a key
    is set inside it. ``key=`` removes the key. An override of ``train.method`` first drops the
    keys the recipe's own method set (:func:`method_switch`).
    """
    raw = copy.deepcopy(raw)
    for key in method_switch(raw, overrides)[1]:
        _remove(raw, key.split("."))
    for text in overrides:
        parts, value = parse_override(text)
        if value is REMOVE:
            _remove(raw, parts)
            continue
        deep = too_deep(value, MAX_NESTING - len(parts))
        if deep is not None:
            raise UsageError(f"--set '{'.'.join(parts)}': the value nests tables or arrays more "
                             f"than {MAX_NESTING} levels deep in the recipe")
        node = raw
        for i, part in enumerate(parts[:-1]):
            node = _child_table(node, part, ".".join(parts[: i + 1]), ".".join(parts))
        owner, slot = _slot(node, parts[-1], ".".join(parts), ".".join(parts))
        old = owner.get(slot) if isinstance(owner, dict) else owner[slot]
        owner[slot] = _keep_string_type(old, value, _declared_type(parts))
    return raw


# What a method owns: its teacher, its distillation and projection-regularizer weights
# ([distill], lambda_fn and lambda_orth included) and lpft's probing phase.
METHOD_OWNED = ("teacher", "distill", "train.lp_steps")


def method_switch(raw: dict[str, Any], overrides: list[str]) -> tuple[str | None, list[str]]:
    """(the method ``overrides`` switch ``raw`` to, the keys of ``raw`` the switch resets), or
    (None, []) when they keep its method.

    ``--set train.method=X`` trains X as its defaults define it: the recipe's method-owned keys
    (:data:`METHOD_OWNED`) go, so X's defaults (:data:`METHOD_DEFAULTS`) fill them, except those
    the same overrides set again.
    """
    parsed = [parse_override(text) for text in overrides]
    given = [".".join(parts) for parts, _ in parsed]
    methods = ["tracer" if value is REMOVE else value for parts, value in parsed
               if parts == ["train", "method"]]
    train = raw.get("train")
    current = train.get("method", "tracer") if isinstance(train, dict) else "tracer"
    if not methods or methods[-1] == current or methods[-1] not in METHODS:
        return None, []  # an unknown method is refused, naming the allowed ones, by from_dict
    owned = [key for key in _flatten(raw) if any(
        key == o or key.startswith(o + ".") for o in METHOD_OWNED)]
    kept = [key for key in owned if any(key == g or key.startswith(g + ".") for g in given)]
    return methods[-1], [key for key in owned if key not in kept]


def _remove(raw: dict[str, Any], parts: list[str]) -> None:
    """Remove the key (or list entry) at ``parts``; one that is not there is already removed."""
    node: Any = raw
    for i, part in enumerate(parts):
        match = _INDEXED.match(part)
        key, index = (match.group(1), int(match.group(2))) if match else (part, None)
        if not isinstance(node, dict) or key not in node:
            return
        if index is not None:
            if not isinstance(node[key], list) or index >= len(node[key]):
                return
            if i == len(parts) - 1:
                del node[key][index]
                return
            node = node[key][index]
        elif i == len(parts) - 1:
            del node[key]
        else:
            node = node[key]


_INDEXED = re.compile(r"^(.+)\[(\d+)\]$")
_DATASET_SLOT = re.compile(r"^data\.(train|(id|ood|retain)\[\d+\])$")


def _slot(node: dict[str, Any], part: str, path: str, full: str) -> tuple[Any, Any]:
    """(container, key or index) that ``part`` (at ``path``) names in ``node``; ``name[i]`` must
    exist."""
    match = _INDEXED.match(part)
    if match is None:
        return node, part
    key, index = match.group(1), int(match.group(2))
    items = node.get(key)
    if isinstance(items, (str, dict)):  # a single dataset where a list is allowed
        items = node[key] = [items]
    if not isinstance(items, list) or index >= len(items):
        size = f"has {len(items)} entries" if isinstance(items, list) else "is not a list"
        raise RecipeError(path[: path.rindex("[")], f"{size}; cannot set '{full}'")
    return items, index


def _child_table(node: dict[str, Any], part: str, path: str, full: str) -> dict[str, Any]:
    """The table ``part`` of ``node`` to descend into (a missing key becomes an empty table)."""
    owner, slot = _slot(node, part, path, full)
    child = owner.setdefault(slot, {}) if isinstance(owner, dict) else owner[slot]
    if isinstance(child, str) and _DATASET_SLOT.match(path):
        child = owner[slot] = {"name": child}
    if not isinstance(child, dict):
        raise RecipeError(path, f"is {child!r}, not a table; cannot set '{full}'")
    return child


# The typed sections and their dataclasses; their other keys (in model, data, task) are plugins'.
_SECTION_TYPES: dict[str, type] = {
    "run": RunConfig, "model": ModelConfig, "data": DataConfig, "task": TaskConfig,
    "train": TrainConfig, "teacher": TeacherConfig, "distill": DistillWeights}


def _declared_type(parts: list[str]) -> Any:
    """The annotation of the core key ``parts`` names (``train.steps``: int), or None for a key
    this module does not type (a plugin's option, an unknown key)."""
    cls = _SECTION_TYPES.get(parts[0]) if len(parts) == 2 else None
    return typing.get_type_hints(cls).get(parts[1]) if cls is not None else None


def _keep_string_type(old: Any, new: Any, declared: Any = None) -> Any:
    """``--set run.name=123`` on a string key keeps "123" a string rather than an int. A core
    key's declared type decides, so that an override replacing a mistyped value (``steps =
    "ten"`` in the file) is taken as written; for a plugin's key, the value it replaces does."""
    if declared is not None:
        wants_string = declared is str or (typing.get_origin(declared) is Literal and all(
            isinstance(a, str) for a in typing.get_args(declared)))
    else:
        wants_string = isinstance(old, str)
    if wants_string and isinstance(new, (int, float)) and not isinstance(new, bool):
        return str(new)
    return new


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file. A ``--set train.method`` that resets the
    recipe's method-owned keys says so in one notice; an error in a key that ``--set`` gave names
    that override, so the value it quotes is seen to be the one in force."""
    raw = read_toml(Path(path))
    method, reset = method_switch(raw, overrides or [])
    if reset:
        from tracer_cli.events import current_reporter

        current_reporter().notice(
            f"notice: train.method = '{method}' replaces the recipe's own method: "
            f"{', '.join(reset)} reset to {method}'s defaults (--set them to keep them)")
    try:
        return from_dict(apply_overrides(raw, overrides or []), source=str(path))
    except RecipeError as exc:
        given = [o for o in overrides or [] if _sets_key(o, exc.key)]
        if not given:
            raise
        raise RecipeError(exc.key, exc.detail, f"from --set {given[-1]}") from None


def _sets_key(override: str, key: str) -> bool:
    """Whether ``--set override`` set ``key`` or a table holding it."""
    path = override.partition("=")[0].strip()
    return key == path or key.startswith(f"{path}.") or key.startswith(f"{path}[")


def recipe_text(recipe: Recipe) -> str:
    """The resolved recipe as TOML (``tracer finetune --print-recipe``)."""
    doc = recipe.to_dict()
    if recipe.train.epochs:  # its steps come from the training set, which is not read here
        del doc["train"]["steps"]
    return _toml_text(doc)


def lock_text(recipe: Recipe, extra: dict[str, Any]) -> str:
    """The resolved recipe plus ``extra`` (versions, git hash) in a ``[lock]`` table, as TOML:
    what a run's ``recipe.lock.toml`` holds."""
    doc = resolved_tables(recipe.to_dict())
    # An epochs run records the epochs its steps were resolved from.
    doc["lock"] = {**extra, "epochs": recipe.train.epochs} if recipe.train.epochs else extra
    return _toml_text(doc)


def _toml_text(doc: dict[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(_toml_safe(doc))


def resolved_tables(tables: dict[str, Any]) -> dict[str, Any]:
    """The tables of a resolved recipe (``Recipe.to_dict()`` after the engine resolved
    ``train.epochs``, as a checkpoint holds it) as a recipe of ``train.steps`` alone, which reads
    back without the training set: what ``recipe.lock.toml`` holds. Changes ``tables``."""
    train = tables.get("train")
    if isinstance(train, dict) and train.get("epochs") and "steps" in train:
        del train["epochs"]
    return tables


def _toml_safe(value: Any) -> Any:
    """TOML has no null: drop None values (a key that is absent reads back as its default)."""
    if isinstance(value, dict):
        return {str(k): _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_toml_safe(v) for v in value if v is not None]
    if isinstance(value, Path):
        return str(value)
    return value
