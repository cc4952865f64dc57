"""Task ``classification``: FLYP-style training captions and a zero-shot text head for evaluation.

Training pairs each image with a caption: either its class name in a prompt template (one template
drawn per image per step, as FLYP does) or, with ``train_text = "captions"``, the dataset's own
caption (contrastive pretraining). Evaluation builds one head per label space: for each class the
mean of the normalized text embeddings of all templates, renormalized; logits = s · f_i Wᵀ.

``[task]`` keys: ``templates`` (evaluation prompts: a list, or a named set ``"dataset"`` (default),
``"openai"`` (open_clip's 80 OpenAI ImageNet prompts) or ``"simple"``), ``templates_file`` (a text
file with one evaluation template per line; replaces ``templates``), ``classnames_file`` (a text
file with one class name per line, in label order, replacing every evaluated dataset's names; a
dataset covering a subset of a parent label space, such as ImageNet-R, also accepts the parent's
list), ``train_templates`` (training prompts, same forms as ``templates``), ``train_text``
(``"templates"`` or ``"captions"``), ``headline`` (the headline metric of summaries, tables, gates
and model cards: ``"accuracy"``, the default, or ``"macro_f1"``, which also averages macro-F1 over
the OOD sets as ``avg_ood_macro_f1``; iWildCam is reported by macro-F1).

Methods ``lp``, ``ft`` and ``lpft`` train a :class:`LinearHead` instead of the contrastive loss:
logits = f_i Wᵀ + b with W initialised to s times the zero-shot head of the training set's classes
and b = 0 (WiSE-FT's initialisation), trained with cross-entropy. A run with such a head is evaluated
through it (a dataset covering a subset of the head's label space reads its columns); without one,
through the zero-shot text head.

Heads are cached per evaluation call by (class names, templates). A dataset that covers a subset of
a parent label space (``DatasetBundle.class_subset``, ImageNet-R/-A) takes its rows from the
parent's head when a dataset of the same call has that parent space with the same templates: each
row depends only on its own class's prompts, so the slice equals encoding the subset, without
encoding those prompts a second time.

A dataset whose classes each stand for several parent classes (``DatasetBundle.class_groups``,
ObjectNet over ImageNet-1k) is scored through the parent classes it names (rows of the parent's
zero-shot head, or columns of a trained head over the parent label space), and each of its classes
takes the maximum of its parents' logits (:func:`group_max`), as WiSE-FT, FLYP and TRACER score
ObjectNet; all metrics, calibration included, are computed on these reduced logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tracer_cli.sdk import (
    Backbone, CLASSIFICATION_HEADLINES, CLASSIFICATION_METRICS, DatasetBundle, Options,
    RecipeError, UsageError, classification_metrics, classification_spec, eval_mode,
    fill_template, hookimpl, template_problem)

_TEXT_CHUNK = 512


def named_templates(name: str) -> list[str] | None:
    """Template strings of a named set; ``"dataset"`` (None) defers to the dataset's own."""
    import open_clip

    sets = {"openai": open_clip.OPENAI_IMAGENET_TEMPLATES,
            "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES}
    if name == "dataset":
        return None
    # open_clip stores prompts as callables (lambda c: f"a photo of a {c}."): render with "{}".
    return [t("{}") if callable(t) else str(t) for t in sets[name]]


def _templates_option(opts: Options, key: str) -> list[str] | None:
    value = opts.raw(key, default="dataset")
    if isinstance(value, str):
        allowed = ("dataset", "openai", "simple")
        if value not in allowed:
            raise RecipeError(opts.key(key), f"got {value!r}; use a list of templates or one of "
                              f"{', '.join(allowed)}")
        return named_templates(value)
    templates = opts.str_list(key)
    _check_templates(opts.key(key), templates)
    return templates


def _check_templates(key: str, templates: Sequence[str] | None) -> None:
    if templates is None:
        return
    if not templates:
        raise RecipeError(key, "must list at least one template")
    for t in templates:
        problem = template_problem(t)
        if problem:
            raise RecipeError(key, problem)


@torch.no_grad()
def zero_shot_head(backbone: Backbone, module: nn.Module, classnames: Sequence[str],
                   templates: Sequence[str], device: torch.device, autocast: Any) -> torch.Tensor:
    """C×D classifier: per class, mean of normalized template embeddings, renormalized."""
    texts = [fill_template(t, c) for c in classnames for t in templates]
    feats = []
    with autocast():
        for i in range(0, len(texts), _TEXT_CHUNK):
            tokens = backbone.tokenize(texts[i:i + _TEXT_CHUNK]).to(device)
            feats.append(backbone.encode_text(module, tokens).float())
    emb = torch.cat(feats).view(len(classnames), len(templates), -1)
    head = emb.mean(dim=1)
    return head / head.norm(dim=-1, keepdim=True)


def _read_lines(opts: Options, key: str, what: str) -> tuple[Path, list[str]] | None:
    """The non-blank lines of the text file named by ``key`` (stripped), or None when unset."""
    path = opts.path(key, default=None)
    if path is None:
        return None
    if not path.is_file():
        raise RecipeError(opts.key(key), f"file '{path}' does not exist; expected a text file with "
                          f"one {what} per line")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(opts.key(key), f"cannot read '{path}' ({exc})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise RecipeError(opts.key(key), f"'{path}' lists no {what}s")
    return path, lines


class ClassNames:
    """Class names from ``task.classnames_file``, checked against each dataset's label space."""

    def __init__(self, path: Path, names: Sequence[str]):
        self.path, self.names = path, tuple(names)

    def for_bundle(self, bundle: DatasetBundle, dataset: str) -> tuple[str, ...]:
        classes = len(bundle.classnames)
        if len(self.names) == classes:
            return self.names
        subset = bundle.class_subset
        # A subset dataset (ImageNet-R) may be named by its parent's list, so one 1000-line file
        # serves the whole ImageNet family.
        if subset is not None and len(self.names) > max(subset, default=-1):
            return tuple(self.names[i] for i in subset)
        parent = " (or its parent label space)" if subset is not None else ""
        raise UsageError(f"task.classnames_file '{self.path}' has {len(self.names)} class names "
                         f"but dataset '{dataset}' has {classes} classes{parent}; give one name "
                         "per class, one per line, in label order")

    def for_parents(self, bundle: DatasetBundle, dataset: str) -> tuple[str, ...]:
        """The names of a grouped dataset's parent label space (ObjectNet's ImageNet-1k)."""
        parents = len(bundle.parent_classnames or ())
        if len(self.names) == parents:
            return self.names
        raise UsageError(f"task.classnames_file '{self.path}' has {len(self.names)} class names "
                         f"but dataset '{dataset}' is scored through the {parents} classes of its "
                         "parent label space; give one name per parent class, one per line, in "
                         "label order")


def _class_groups(bundle: DatasetBundle, dataset: str) -> tuple[list[int], list[list[int]]] | None:
    """For a dataset with ``class_groups``: the parent classes it needs, in parent order, and for
    each of its classes the positions of its parents among them; None for any other dataset."""
    groups, parents = bundle.class_groups, bundle.parent_classnames
    if groups is None and parents is None:
        return None
    size = len(parents or ())
    if (groups is None or len(groups) != len(bundle.classnames)
            or not all(group and all(0 <= i < size for i in group) for group in groups)):
        raise UsageError(f"dataset '{dataset}' declares class_groups / parent_classnames that do "
                         f"not fit: it needs both, one non-empty list of parent indices for each "
                         f"of its {len(bundle.classnames)} classes, each index below the {size} "
                         "parent class names")
    needed = sorted({i for group in groups for i in group})
    position = {parent: k for k, parent in enumerate(needed)}
    return needed, [[position[i] for i in group] for group in groups]


def group_max(logits: torch.Tensor, groups: Sequence[Sequence[int]] | None) -> torch.Tensor:
    """N×G logits of grouped classes: column g is the maximum of ``logits``' columns
    ``groups[g]``; ``logits`` itself when ``groups`` is None."""
    if groups is None:
        return logits
    return torch.stack([logits[:, list(group)].max(dim=1).values for group in groups], dim=1)


@dataclass(frozen=True)
class _Scoring:
    """How one dataset is scored by a zero-shot head: the head's (class names, templates), its
    rows in a parent label space (``subset``, for :class:`_HeadCache`), and for grouped classes
    the head rows each class takes the maximum of."""

    key: tuple[tuple[str, ...], tuple[str, ...]]
    subset: Sequence[int] | None
    groups: list[list[int]] | None
    classes: int


class _HeadCache:
    """Zero-shot heads of one evaluation call, keyed by (class names, templates).

    ``wanted`` are the keys the call will need; a subset dataset's head is sliced from a wanted or
    already computed parent head instead of being encoded again.
    """

    def __init__(self, encode: Any, wanted: Sequence[tuple[tuple[str, ...], tuple[str, ...]]]):
        self.encode = encode
        self.wanted = list(dict.fromkeys(wanted))
        self.heads: dict[tuple, torch.Tensor] = {}

    def _parent(self, key: tuple, subset: Sequence[int]) -> tuple | None:
        names, templates = key
        for parent in [*self.heads, *self.wanted]:
            parent_names, parent_templates = parent
            if (parent != key and parent_templates == templates
                    and len(parent_names) > max(subset, default=-1)
                    and tuple(parent_names[i] for i in subset) == names):
                return parent
        return None

    def get(self, key: tuple, subset: Sequence[int] | None) -> torch.Tensor:
        if key not in self.heads:
            parent = self._parent(key, subset) if subset else None
            if parent is not None:
                full = self.get(parent, None)
                self.heads[key] = full[torch.as_tensor(list(subset), device=full.device)]
            else:
                self.heads[key] = self.encode(*key)
        return self.heads[key]


class LinearHead(nn.Module):
    """A linear classifier on normalized image features: logits = f_i Wᵀ + b.

    Its class names travel in its state dict (``_extra_state``), so a checkpoint or an export
    says what each output means.
    """

    uses_text = False

    def __init__(self, weight: torch.Tensor, classnames: Sequence[str] = ()):
        super().__init__()
        classes, dim = weight.shape
        self.linear = nn.Linear(dim, classes)
        self.classnames = list(classnames)
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.zero_()

    @property
    def classes(self) -> int:
        return self.linear.out_features

    def get_extra_state(self) -> dict[str, Any]:
        return {"classnames": list(self.classnames)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.classnames = list(state.get("classnames", []))

    def describe(self) -> dict[str, Any]:
        return {"kind": "linear", "input": "L2-normalized image features f_i (D)",
                "formula": "logits = f_i @ linear.weight.T + linear.bias",
                "outputs": self.classes, "classnames": list(self.classnames)}

    def forward(self, image_features: torch.Tensor, text_features: Any = None) -> torch.Tensor:
        return self.linear(image_features.to(self.linear.weight.dtype))


class ClassificationTask:
    """Zero-shot-head classification on top of a CLIP backbone."""

    name = "classification"
    objective = "contrastive"
    metrics = CLASSIFICATION_METRICS

    def __init__(self, templates: Sequence[str] | None = None,
                 train_templates: Sequence[str] | None = None, train_text: str = "templates",
                 classnames: ClassNames | None = None, headline: str = "accuracy"):
        self.templates = list(templates) if templates else None
        self.train_templates = list(train_templates) if train_templates else None
        self.train_text = train_text
        self.classnames = classnames
        # Per instance: task.headline decides which metric leads. The default leaves the class's
        # own spec in place, so a subclass that declares its metrics (a plugin's) keeps them.
        if headline != "accuracy":
            self.metrics = classification_spec(headline)

    def _names(self, bundle: DatasetBundle, dataset: str) -> tuple[str, ...]:
        if self.classnames is None:
            return tuple(bundle.classnames)
        return self.classnames.for_bundle(bundle, dataset)

    def _scoring(self, bundle: DatasetBundle, dataset: str) -> _Scoring:
        """How ``bundle`` is scored: its own classes, a subset of a parent's, or grouped ones."""
        templates = tuple(self.templates or bundle.templates)
        grouped = _class_groups(bundle, dataset)
        if grouped is None:
            names = self._names(bundle, dataset)
            return _Scoring((names, templates), bundle.class_subset, None, len(names))
        needed, groups = grouped
        parents = (tuple(bundle.parent_classnames or ()) if self.classnames is None
                   else self.classnames.for_parents(bundle, dataset))
        return _Scoring((tuple(parents[i] for i in needed), templates), needed, groups,
                        len(groups))

    def train_texts(self, batch: dict[str, Any], bundle: DatasetBundle,
                    rng: torch.Generator) -> list[str]:
        if self.train_text == "captions":
            if not bundle.has_captions:
                raise UsageError("task.train_text = 'captions' but the training dataset has no "
                                 "captions; use 'templates'")
            return list(batch["caption"])
        templates = self.train_templates or list(bundle.templates)
        names = self._names(bundle, "the training set")
        labels = batch["label"].tolist()
        picks = torch.randint(len(templates), (len(labels),), generator=rng).tolist()
        return [fill_template(templates[p], names[y]) for y, p in zip(labels, picks)]

    # --- a trained head (lp, ft, lpft) ----------------------------------------------------------

    @torch.no_grad()
    def make_head(self, backbone: Backbone, module: nn.Module, bundle: DatasetBundle,
                  device: torch.device, autocast: Any) -> LinearHead:
        """A linear head over the training set's classes, initialised as the zero-shot head
        (its evaluation templates) times the logit scale, so at step 0 it predicts exactly what
        zero-shot evaluation predicts."""
        names = self._names(bundle, "the training set")
        templates = self.templates or list(bundle.templates)
        if not names or not templates:
            raise UsageError("a classification head needs the training set's class names and "
                             "prompt templates (task.classnames_file / task.templates)")
        weights = zero_shot_head(backbone, module, names, templates, device, autocast)
        return LinearHead(backbone.logit_scale(module).float() * weights, names)

    def load_head(self, state: dict[str, torch.Tensor]) -> LinearHead:
        """A head rebuilt from a checkpoint's ``head`` state."""
        weight = state.get("linear.weight")
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise UsageError("the checkpoint's head is not a classification head (no 2-D "
                             "'linear.weight')")
        head = LinearHead(torch.zeros_like(weight, dtype=torch.float32))
        head.load_state_dict(state)
        return head

    def head_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["label"].to(logits.device))

    # --- evaluation -------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, backbone: Backbone, module: nn.Module,
                 datasets: Mapping[str, tuple[DatasetBundle, Any]], device: torch.device,
                 autocast: Any, head: LinearHead | None = None) -> dict[str, dict[str, Any]]:
        """Metrics, logits and labels per dataset: through ``head`` when a run trained one, else
        through zero-shot heads, one per (classes, templates) pair."""
        if head is not None:
            return self._evaluate_head(backbone, module, datasets, device, autocast, head)
        plans = {name: self._scoring(bundle, name) for name, (bundle, _) in datasets.items()}

        def encode(names: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
            return zero_shot_head(backbone, module, names, templates, device, autocast)

        heads = _HeadCache(encode, [plan.key for plan in plans.values()])
        out = {}
        with eval_mode(module):
            scale = backbone.logit_scale(module).float()
            for name, (_, loader) in datasets.items():
                plan = plans[name]
                weights = heads.get(plan.key, plan.subset)

                def classify(feats: torch.Tensor, weights=weights, plan=plan) -> torch.Tensor:
                    return group_max(scale * feats.float() @ weights.T, plan.groups)

                out[name] = self._score(backbone, module, classify, plan.classes, loader,
                                        device, autocast, name)
        return out

    def _evaluate_head(self, backbone: Backbone, module: nn.Module,
                       datasets: Mapping[str, tuple[DatasetBundle, Any]], device: torch.device,
                       autocast: Any, head: LinearHead) -> dict[str, dict[str, Any]]:
        out = {}
        with eval_mode(module):
            for name, (bundle, loader) in datasets.items():
                columns, groups = _head_columns(head.classes, bundle, name)

                def classify(feats: torch.Tensor, columns=columns, groups=groups) -> torch.Tensor:
                    logits = head(feats).float()
                    return group_max(logits if columns is None else logits[:, columns], groups)

                classes = len(bundle.classnames) if columns is not None else head.classes
                out[name] = self._score(backbone, module, classify, classes, loader, device,
                                        autocast, name)
        return out

    @classmethod
    def _score(cls, backbone: Backbone, module: nn.Module, classify: Any, classes: int,
               loader: Any, device: torch.device, autocast: Any, dataset: str
               ) -> dict[str, Any]:
        """Metrics, logits and labels of one dataset scored by ``classify(features)``."""
        logits, labels = cls._logits(backbone, module, classify, classes, loader, device,
                                     autocast, dataset)
        return {"metrics": classification_metrics(logits, labels), "logits": logits,
                "labels": labels}

    @staticmethod
    def _logits(backbone: Backbone, module: nn.Module, classify: Any, classes: int,
                loader: Any, device: torch.device, autocast: Any,
                dataset: str = "dataset") -> tuple[torch.Tensor, torch.Tensor]:
        all_logits, all_labels = [], []
        for batch in loader:
            _check_labels(batch["label"], classes, dataset)
            images = batch["image"].to(device, non_blocking=True)
            with autocast():
                feats = backbone.encode_image(module, images)
            all_logits.append(classify(feats).cpu())
            all_labels.append(batch["label"])
        return torch.cat(all_logits), torch.cat(all_labels)


def _head_columns(classes: int, bundle: DatasetBundle,
                  dataset: str) -> tuple[list[int] | None, list[list[int]] | None]:
    """Which of a trained head's outputs score ``bundle``'s classes, and how they are grouped: all
    of them (None) when the label spaces agree, the subset's columns for a subset dataset
    (ImageNet-R of ImageNet), the parents' columns and each class's group among them for a
    grouped dataset whose parent label space is the head's (ObjectNet of ImageNet)."""
    grouped = _class_groups(bundle, dataset)
    if grouped is not None and len(bundle.parent_classnames or ()) == classes:
        return grouped
    if len(bundle.classnames) == classes:
        return None, None
    subset = bundle.class_subset
    if grouped is None and subset is not None and len(subset) == len(bundle.classnames) and \
            max(subset, default=-1) < classes:
        return list(subset), None
    raise UsageError(f"dataset '{dataset}' has {len(bundle.classnames)} classes but the run's "
                     f"trained head predicts the training set's {classes}; a head trained by "
                     "lp/ft/lpft scores only that label space (or a subset or grouping of it)")


def _check_labels(labels: torch.Tensor, classes: int, dataset: str) -> None:
    """Labels outside the head would index past it (or silently score as wrong): stop instead."""
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        bad = int(labels.max()) if int(labels.max()) >= classes else int(labels.min())
        raise UsageError(f"dataset '{dataset}' has label {bad}, outside the head's {classes} "
                         "classes: its labels do not match its class names")


def _eval_templates(opts: Options) -> list[str] | None:
    """``templates`` or ``templates_file`` (not both): None means each dataset's own."""
    from_file = _read_lines(opts, "templates_file", "template")
    if from_file is None:
        return _templates_option(opts, "templates")
    if opts.has("templates"):
        raise RecipeError(opts.key("templates_file"), "set either 'templates' or "
                          "'templates_file', not both")
    path, templates = from_file
    _check_templates(f"{opts.key('templates_file')} ({path})", templates)
    return templates


def make_task(options: dict[str, Any]) -> ClassificationTask:
    opts = Options(options, path="task")
    templates = _eval_templates(opts)
    train_templates = _templates_option(opts, "train_templates")
    train_text = opts.str("train_text", default="templates", choices=("templates", "captions"))
    names = _read_lines(opts, "classnames_file", "class name")
    headline = opts.str("headline", default="accuracy", choices=CLASSIFICATION_HEADLINES)
    opts.done()
    return ClassificationTask(templates, train_templates, train_text,
                              ClassNames(*names) if names else None, headline)


# Factory capability (tracer_cli.sdk.contracts): evaluation prompts do not shape training, so a
# resumed run may change them.
make_task.resume_free_keys = ("templates", "templates_file")


@hookimpl
def tracer_register_tasks(registry) -> None:
    registry.add("classification", make_task)
