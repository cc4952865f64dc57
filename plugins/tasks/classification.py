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
(``"templates"`` or ``"captions"``).

Heads are cached per evaluation call by (class names, templates). A dataset that covers a subset of
a parent label space (``DatasetBundle.class_subset``, ImageNet-R/-A) takes its rows from the
parent's head when a dataset of the same call has that parent space with the same templates: each
row depends only on its own class's prompts, so the slice equals encoding the subset, without
encoding those prompts a second time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from tracer_cli import hookimpl
from tracer_cli.contracts import Backbone, DatasetBundle
from tracer_cli.errors import RecipeError, UsageError
from tracer_cli.metrics import classification_metrics
from tracer_cli.options import Options

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
        if t.count("{}") != 1:
            raise RecipeError(key, f"template {t!r} must contain exactly one '{{}}' for the "
                              "class name")


@torch.no_grad()
def zero_shot_head(backbone: Backbone, module: nn.Module, classnames: Sequence[str],
                   templates: Sequence[str], device: torch.device, autocast: Any) -> torch.Tensor:
    """C×D classifier: per class, mean of normalized template embeddings, renormalized."""
    texts = [t.format(c) for c in classnames for t in templates]
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


class ClassificationTask:
    """Zero-shot-head classification on top of a CLIP backbone."""

    name = "classification"

    def __init__(self, templates: Sequence[str] | None = None,
                 train_templates: Sequence[str] | None = None, train_text: str = "templates",
                 classnames: ClassNames | None = None):
        self.templates = list(templates) if templates else None
        self.train_templates = list(train_templates) if train_templates else None
        self.train_text = train_text
        self.classnames = classnames

    def _names(self, bundle: DatasetBundle, dataset: str) -> tuple[str, ...]:
        if self.classnames is None:
            return tuple(bundle.classnames)
        return self.classnames.for_bundle(bundle, dataset)

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
        return [templates[p].format(names[y]) for y, p in zip(labels, picks)]

    @torch.no_grad()
    def evaluate(self, backbone: Backbone, module: nn.Module,
                 datasets: Mapping[str, tuple[DatasetBundle, Any]], device: torch.device,
                 autocast: Any) -> dict[str, dict[str, Any]]:
        """Metrics, logits and labels per dataset; one head per (classes, templates) pair."""
        keys = {name: (self._names(bundle, name), tuple(self.templates or bundle.templates))
                for name, (bundle, _) in datasets.items()}

        def encode(names: tuple[str, ...], templates: tuple[str, ...]) -> torch.Tensor:
            return zero_shot_head(backbone, module, names, templates, device, autocast)

        heads = _HeadCache(encode, list(keys.values()))
        was_training = module.training
        module.eval()
        out = {}
        try:
            scale = backbone.logit_scale(module).float()
            for name, (bundle, loader) in datasets.items():
                head = heads.get(keys[name], bundle.class_subset)
                logits, labels = self._logits(backbone, module, head, scale, loader, device,
                                              autocast, name)
                out[name] = {"metrics": classification_metrics(logits, labels),
                             "logits": logits, "labels": labels}
        finally:
            module.train(was_training)
        return out

    @staticmethod
    def _logits(backbone: Backbone, module: nn.Module, head: torch.Tensor, scale: torch.Tensor,
                loader: Any, device: torch.device, autocast: Any,
                dataset: str = "dataset") -> tuple[torch.Tensor, torch.Tensor]:
        all_logits, all_labels = [], []
        for batch in loader:
            _check_labels(batch["label"], len(head), dataset)
            images = batch["image"].to(device, non_blocking=True)
            with autocast():
                feats = backbone.encode_image(module, images)
            all_logits.append((scale * feats.float() @ head.T).cpu())
            all_labels.append(batch["label"])
        return torch.cat(all_logits), torch.cat(all_labels)


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
    opts.done()
    return ClassificationTask(templates, train_templates, train_text,
                              ClassNames(*names) if names else None)


@hookimpl
def tracer_register_tasks(registry) -> None:
    registry.add("classification", make_task)
