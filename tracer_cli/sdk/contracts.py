"""The objects plugins hand to the engine: backbones, dataset bundles, tasks and loggers.

These are structural contracts (``typing.Protocol``) plus dataclasses, so a third-party plugin
satisfies them without subclassing anything from tracer.

Factory capabilities: a registered factory may carry optional attributes that tracer reads
without calling it (a function attribute, or a class attribute when the factory is a class), so
nothing is built to answer them:

- ``resume_free_keys`` (backbone and task factories): a tuple of the plugin's own option names
  (keys of ``[model]`` or ``[task]``) that a resumed run may change because they do not shape
  the training trajectory, e.g. ``("cache_dir",)`` for where weights are cached or
  ``("templates", "templates_file")`` for evaluation prompts. Every other plugin key defines
  the run: ``--resume`` refuses a recipe that changes it.
- ``export_formats`` (backbone factories): a mapping of ``tracer export --format`` names to
  :class:`ExportFormat` objects, the folders the backbone writes for the library it comes from
  (the ``openclip`` backbone: ``{"open_clip": ...}``). A run whose backbone does not declare a
  format cannot be exported in it (exit 2); ``safetensors``, ``onnx`` and ``torchscript`` work
  for every backbone.
- ``location_archs`` and ``weights_required`` (backbone factories), for ``tracer eval --model
  BACKBONE:ARCH[:PRETRAINED]``: arch names whose rest is a location holding the weights
  (openclip: ``("local-dir", "hf-hub")``, so ``openclip:local-dir:/models/clip`` is
  ``arch = "local-dir:/models/clip"``), and, when a spec must name its weights, a phrase saying
  what PRETRAINED may be (a spec without it exits 2 with that phrase).
- ``attach_files`` (logger factories), for trackers that keep files: ``attach_files(run_dir,
  paths, folder) -> str | None`` adds ``paths`` (files made from the finished run in
  ``run_dir``; ``tracer export``: its model card, ``folder = "model_card"``) to the tracked run
  the logger kept in ``run_dir`` (from its own id file there), as artifacts in ``folder`` (or of
  that kind), leaving the tracked run's state as it was. It returns where they went, in words,
  or None when ``run_dir`` holds no tracked run of this logger; it raises for anything else
  (tracker unreachable, package missing), which the caller reports as one warning line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

# Re-exported: a task plugin declares its metrics with these (defined apart, free of torch, so the
# CLI can read a spec without importing torch).
from tracer_cli.sdk.task_metrics import CLASSIFICATION_METRICS, TaskMetrics, task_metrics

__all__ = ["Backbone", "CLASSIFICATION_METRICS", "DatasetBundle", "ExportFormat", "ExportedModel",
           "Logger", "OUTCOMES", "Outcome", "SkippedItem", "Task", "TaskMetrics", "eval_scalars",
           "flat_params", "flat_scalars", "skipped_item", "task_metrics", "TEMPLATE_PLACEHOLDERS",
           "template_problem", "fill_template"]


# The class-name placeholder of a prompt template: open_clip's "{}" or CLIP_benchmark's "{c}",
# exactly one of them, once.
TEMPLATE_PLACEHOLDERS = ("{}", "{c}")


def template_problem(template: str) -> str | None:
    """Why ``template`` is not a prompt template (one error line naming it), or None."""
    if sum(template.count(p) for p in TEMPLATE_PLACEHOLDERS) != 1:
        return (f"template {template!r} must contain exactly one '{{}}' or '{{c}}' for the class "
                "name")
    return None


def fill_template(template: str, classname: str) -> str:
    """The prompt ``template`` (checked by :func:`template_problem`) for ``classname``."""
    return template.format(classname) if "{}" in template else template.format(c=classname)


@dataclass
class DatasetBundle:
    """A dataset plus the metadata tasks need.

    ``dataset[i]`` returns a dict with ``"image"`` (a transformed image tensor), ``"label"`` (int)
    and, for caption datasets, ``"caption"`` (str). ``classnames[label]`` names each label;
    ``templates`` are prompt templates with one ``{}`` (or ``{c}``) for the class name
    (:func:`fill_template`); ``class_subset`` lists
    the indices of these classes in a parent label space when the dataset covers only part of it
    (ImageNet-R: 200 of 1000). An item that cannot be read (a corrupt image) is returned as a
    :class:`SkippedItem` rather than raised, so one bad file does not end a long run.

    ``class_groups`` generalises ``class_subset`` to classes that each stand for one or more
    parent classes (ObjectNet: "Alarm clock" is ImageNet's "analog clock" and "digital clock"):
    ``class_groups[label]`` lists the label's parent indices and ``parent_classnames`` names the
    whole parent label space in its label order (both or neither). A classification task then
    scores the parent classes with ``templates`` and gives each class the *maximum* of its
    parents' logits (the evaluation of WiSE-FT, FLYP and TRACER); every metric, ECE and NLL
    included, is computed on these reduced logits, i.e. probabilities are a softmax over the
    dataset's own classes. ``classnames`` still names the dataset's classes for reports.
    """

    dataset: Dataset
    classnames: Sequence[str]
    templates: Sequence[str]
    has_captions: bool = False
    class_subset: Sequence[int] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    class_groups: Sequence[Sequence[int]] | None = None
    parent_classnames: Sequence[str] | None = None


@dataclass(frozen=True)
class SkippedItem:
    """What a dataset returns instead of an item it cannot read (a corrupt or unreadable image).

    The engine drops these from the batch, counts them, reports them at the end of the run and in
    ``metrics.jsonl``, and stops the run when more than ``data.max_bad_fraction`` of the training
    set turns out to be unreadable. ``source`` names the file (or row) and ``reason`` says what
    went wrong, e.g. ``"OSError: image file is truncated"``.
    """

    source: str
    reason: str


def skipped_item(source: Any, exc: BaseException) -> SkippedItem:
    """A :class:`SkippedItem` for ``source`` (a path, a row id) that failed with ``exc``."""
    return SkippedItem(str(source), f"{type(exc).__name__}: {exc}")


class Backbone(Protocol):
    """A CLIP-style dual encoder.

    Methods that run the network take the module explicitly (``module`` is :attr:`model` or a copy
    of it, such as the teacher), so student and teacher share one implementation.

    Optional members ``tracer export`` reads when present: ``preprocess_cfg``, the evaluation
    preprocessing as a dict or dataclass (``size``, ``mode``, ``mean``, ``std``,
    ``interpolation``, ``resize_mode``, ``fill_color``: open_clip's ``PreprocessCfg`` fields),
    recorded in model cards and needed (its ``size``) to trace ONNX / TorchScript image encoders;
    and ``model_config()``, the JSON config the network was built from (the card's
    ``model.model_cfg``), which raises :class:`tracer_cli.errors.UsageError` when the backbone
    cannot tell it (the card then goes without it, unless the format is the backbone's own).

    Optional members the engine reads when present: ``set_grad_checkpointing(module) ->
    list[str]`` turns on activation checkpointing for ``module`` and returns the towers it covers
    (``"image"``, ``"text"``); ``train.grad_checkpointing = true`` needs it.
    ``shard_units(module) -> list[nn.Module]`` names the blocks ``train.strategy = "fsdp"``
    shards one at a time (without it the whole model is one unit).
    ``lock_image_tower(module, unlocked_groups)`` and ``lock_text_tower(module, unlocked_layers,
    freeze_layer_norm)`` stop the parameters of a tower (all but its last groups / layers) from
    requiring gradients, as open_clip's methods of these names; ``train.lock_image`` /
    ``train.lock_text`` need them.
    """

    model: nn.Module
    preprocess_train: Callable[[Any], torch.Tensor]
    preprocess_eval: Callable[[Any], torch.Tensor]

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor: ...

    def encode_image(self, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """L2-normalized image features, B×D."""

    def encode_text(self, module: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """L2-normalized text features, B×D."""

    def logit_scale(self, module: nn.Module) -> torch.Tensor:
        """The exponentiated logit scale s (about 100 for pretrained CLIP)."""

    def projections(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(V, T): visual (in_v×D) and text (in_t×D) projection matrices, or None if absent."""

    def describe(self) -> dict[str, Any]:
        """JSON-able description (arch, pretrained source, config) for the run's lock file."""


@dataclass(frozen=True)
class WeightsBuild:
    """Weights a backbone plugin needs tracer to train once before it can build its backbone
    (the embedded tiny CLIP, pretrained by tracer on its synthetic world).

    A backbone factory declares them through the optional capability
    ``factory.weights_build(options) -> WeightsBuild | None`` (``options`` as the factory gets
    them). When ``target`` does not exist, the engine runs ``recipe`` (TOML text) with
    ``overrides`` (``--set`` items) exactly as ``tracer finetune`` would, stores the student's
    weights at ``target`` (``{"state_dict": ...}``, with the run's lock file beside it as
    ``<target>.lock.toml``), and then calls the factory, which loads them.

    Optional: ``finalize(state_dict, checkpoint)`` turns the trained student's weights (and the
    run's last checkpoint, optimizer state included) into the weights kept at ``target``;
    ``shipped()`` returns ``(state_dict, lock_text)`` of weights packaged with the plugin for
    exactly this ``target``, checked for integrity, which the engine keeps instead of training.
    """

    recipe: str
    overrides: tuple[str, ...]
    target: Path
    what: str  # for the notice: "the embedded tiny CLIP 'tracer-tiny-rn' (...)"
    finalize: Callable[[dict[str, torch.Tensor], dict[str, Any]], dict[str, torch.Tensor]] | None \
        = None
    shipped: Callable[[], tuple[dict[str, torch.Tensor], str]] | None = None


class Task(Protocol):
    """What is learned and how it is measured, on top of the shared engine.

    Optional members the engine reads when present: ``metrics`` (a :class:`TaskMetrics`; default
    :data:`CLASSIFICATION_METRICS`), ``objective`` (``"contrastive"``, the default, or ``"head"``:
    the task trains its own head with its own loss), and for tasks with a head
    ``make_head(backbone, module, bundle, device, autocast) -> nn.Module``,
    ``load_head(state) -> nn.Module`` and ``head_loss(head_output, batch) -> Tensor``; then
    ``evaluate`` also takes ``head=`` (None: evaluate without a trained head, e.g. zero-shot).
    ``train_pairs(batch, bundle, rng) -> (texts, Pairing)`` replaces ``train_texts`` for the
    contrastive methods when a task's images choose among candidate texts (vqa); the head methods
    still read ``train_texts``.
    """

    def train_texts(self, batch: dict[str, Any], bundle: DatasetBundle,
                    rng: torch.Generator) -> list[str]:
        """The caption paired with each training image of ``batch`` (contrastive targets)."""

    def evaluate(self, backbone: Backbone, module: nn.Module,
                 datasets: Mapping[str, tuple[DatasetBundle, Any]], device: torch.device,
                 autocast: Callable[[], Any]) -> dict[str, dict[str, Any]]:
        """Evaluate ``module`` on each ``name -> (bundle, loader)``.

        Returns ``name -> {"metrics": {...}, "logits": Tensor, "labels": Tensor}``; heads shared by
        datasets with the same label space are computed once per call. ``logits`` and ``labels``
        are optional (retrieval has none): without them no reliability diagram or predictions
        file is written for the dataset.
        """


@dataclass(frozen=True)
class Pairing:
    """Which of a batch's texts each image is scored against, for the contrastive loss and the
    distillation views alike.

    ``Pairing()`` is the CLIP / FLYP case: B images and B texts, text i belongs to image i, and
    both directions (image→text, text→image) are scored. A task whose images choose among
    candidate texts (VQA: the question with each candidate answer) gives ``candidates``, B×K
    indices into the batch's T texts (the texts image i is scored against), and ``targets``, B
    positions of each image's right text among its K candidates. Then the logits are B×K and only
    image→text is scored: a text is a candidate of several images, so it has no one right image.
    """

    candidates: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.candidates is None) != (self.targets is None):
            raise ValueError("Pairing: give both candidates and targets, or neither")

    @property
    def symmetric(self) -> bool:
        """Whether both directions are scored (text i is image i's: the diagonal pairing)."""
        return self.candidates is None

    def to(self, device: torch.device) -> "Pairing":
        if self.symmetric:
            return self
        return Pairing(self.candidates.to(device), self.targets.to(device))


@dataclass
class ExportedModel:
    """What an :class:`ExportFormat` writes: the run's backbone and the exported module (CPU, eval
    mode, fp32), the backbone's ``model_config()`` and ``preprocess_cfg`` as JSON values (None
    when it has none), and ``save_weights(path)``, which writes the module's state dict in the
    requested precision as safetensors with tracer's metadata and returns the tensors written."""

    backbone: Backbone
    module: nn.Module
    model_cfg: dict[str, Any] | None
    preprocess_cfg: dict[str, Any] | None
    save_weights: Callable[[Path], dict[str, torch.Tensor]]


class ExportFormat(Protocol):
    """A folder layout a backbone writes for the library it comes from, declared in its factory's
    ``export_formats``. tracer builds the folder under a temporary name, adds ``README.md``,
    ``MODEL_CARD.md`` and ``model_card.json`` and publishes it only when everything succeeded.
    An optional method ``by_name(model) -> dict | None`` fills the card's ``model.by_name`` (how
    to load the weights by architecture name, or None when that would not give this model).
    Optional for the
    ``README.md`` front matter (Hugging Face): an attribute ``library_name`` (the Hub's name of
    the library that loads the folder) and a method ``license(model) -> str | None`` (the
    weights' license identifier, None when unknown)."""

    def write(self, folder: Path, model: ExportedModel) -> dict[str, Any]:
        """Write and check the format's files in ``folder``; returns the card's ``details`` (the
        file names). Raises :class:`tracer_cli.errors.UsageError` for a model the format cannot
        hold and :class:`tracer_cli.errors.RunError` when the written files do not load back."""

    def load_snippets(self, folder: str, model: ExportedModel) -> dict[str, str]:
        """Python that loads ``folder`` (a POSIX path), per route name (``local_dir``, ...)."""


# How a run ended, as loggers are told in :meth:`Logger.finish`.
Outcome = Literal["completed", "failed", "interrupted"]
OUTCOMES: tuple[str, ...] = ("completed", "failed", "interrupted")


class Logger(Protocol):
    """An experiment tracker that mirrors a run's ``metrics.jsonl`` (TensorBoard, W&B, MLflow).

    Only rank 0 starts and feeds a logger; the engine calls, in this order: :meth:`start` once,
    then :meth:`log_scalars` every ``run.log_every`` steps and :meth:`log_eval` after each
    evaluation, and :meth:`finish` once at the end, whatever the outcome. An optional method
    ``log_event(record)`` receives every other ``metrics.jsonl`` record (checkpoint, resume,
    bad_data, nonfinite, interrupted) as it is written there, and an optional method
    ``log_files(run_dir, paths)`` the run's result files once it completed (``eval/*.json``,
    ``summary.json``, ``recipe.lock.toml``, plots), for trackers that keep artifacts. An exception
    from any of these is reported once; the logger is then switched off and the run goes on.
    """

    def start(self, run_dir: Path, recipe: dict[str, Any], resume_step: int | None) -> None:
        """Open the logger for the run in ``run_dir`` (a logger may keep its own files there, such
        as a tracker's run id, so a resumed run continues the same tracked run). ``recipe`` is the
        resolved recipe as TOML-ready tables (what ``recipe.lock.toml`` holds); ``resume_step`` is
        None for a new run, or the step that a resumed run continues from (records of later steps
        may already have been logged before the run stopped)."""

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """The numbers of one ``metrics.jsonl`` train record after ``step`` optimizer steps:
        ``loss``, ``lr``, loss parts, teacher-student statistics, drift, ``img_per_s``..."""

    def log_eval(self, model: str, step: int, metrics: Mapping[str, Mapping[str, Any]],
                 primary: str) -> None:
        """Every metric of one evaluation: ``model`` is ``zeroshot`` (step 0), ``student`` or
        ``teacher`` (during training, ``run.eval_every``), ``final_student`` or ``final_teacher``,
        ``metrics`` maps each dataset to its metrics (``eval/<model>.json``) and ``primary``
        names the task's headline metric (``accuracy``, ``mean_recall``). Use
        :func:`eval_scalars` for the metrics as ``<dataset>/<metric>`` keys, without the counts
        and standard errors a tracker should not chart."""

    def finish(self, outcome: Outcome) -> None:
        """Close the logger: the run ``"completed"``, ``"failed"`` or was ``"interrupted"`` by
        a signal (with a checkpoint to resume from)."""


def eval_scalars(metrics: Mapping[str, Mapping[str, Any]], prefix: str = ""
                 ) -> dict[str, float]:
    """:func:`flat_scalars` of an evaluation (dataset -> metrics) without the fields that describe
    a measurement rather than measure the model: counts (``n``, ``n_images``, ``n_<...>``) and
    standard errors (``<metric>_se``), which stay in ``eval/*.json``."""
    kept = {name: {k: v for k, v in values.items() if not _describes_measurement(k)}
            for name, values in metrics.items()}
    return flat_scalars(kept, prefix)


def _describes_measurement(key: str) -> bool:
    return key == "n" or key.startswith("n_") or key.endswith("_se")


def flat_params(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys, for trackers' hyperparameters: ``{"train": {"lr": 1e-5}}``
    -> ``{"train.lr": 1e-5}`` (lists and empty tables kept whole)."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def flat_scalars(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers in nested tables as ``prefix + "a/b/c"`` keys (booleans, strings, lists and
    None left out): ``flat_scalars({"synth-photo": {"accuracy": 0.9}}, "eval/")`` is
    ``{"eval/synth-photo/accuracy": 0.9}``. Non-finite numbers are kept; trackers show them."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out
