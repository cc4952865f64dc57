"""Task ``classification``: FLYP-style training captions and a zero-shot text head for evaluation.

Training pairs each image with a caption: either its class name in a prompt template (one template
drawn per image per step, as FLYP does) or, with ``train_text = "captions"``, the dataset's own
caption (contrastive pretraining). Evaluation builds one head per label space: for each class the
mean of the normalized text embeddings of all templates, renormalized; logits = s · f_i Wᵀ.

``[task]`` keys: ``templates`` (evaluation prompts: a list, or a named set ``"dataset"`` (default),
``"openai"`` (open_clip's 80 OpenAI ImageNet prompts) or ``"simple"``), ``train_templates``
(training prompts, same forms), ``train_text`` (``"templates"`` or ``"captions"``).
"""

from __future__ import annotations

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
            raise RecipeError(key, f"template {t!r} must contain exactly one '{{}}' for the class name")


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


class ClassificationTask:
    """Zero-shot-head classification on top of a CLIP backbone."""

    name = "classification"

    def __init__(self, templates: Sequence[str] | None = None,
                 train_templates: Sequence[str] | None = None, train_text: str = "templates"):
        self.templates = list(templates) if templates else None
        self.train_templates = list(train_templates) if train_templates else None
        self.train_text = train_text

    def train_texts(self, batch: dict[str, Any], bundle: DatasetBundle,
                    rng: torch.Generator) -> list[str]:
        if self.train_text == "captions":
            if not bundle.has_captions:
                raise UsageError("task.train_text = 'captions' but the training dataset has no "
                                 "captions; use 'templates'")
            return list(batch["caption"])
        templates = self.train_templates or list(bundle.templates)
        labels = batch["label"].tolist()
        picks = torch.randint(len(templates), (len(labels),), generator=rng).tolist()
        return [templates[p].format(bundle.classnames[y]) for y, p in zip(labels, picks)]

    @torch.no_grad()
    def evaluate(self, backbone: Backbone, module: nn.Module,
                 datasets: Mapping[str, tuple[DatasetBundle, Any]], device: torch.device,
                 autocast: Any) -> dict[str, dict[str, Any]]:
        """Metrics, logits and labels per dataset; one head per (classes, templates) pair."""
        was_training = module.training
        module.eval()
        heads: dict[tuple, torch.Tensor] = {}
        out = {}
        try:
            scale = backbone.logit_scale(module).float()
            for name, (bundle, loader) in datasets.items():
                templates = self.templates or list(bundle.templates)
                key = (tuple(bundle.classnames), tuple(templates))
                if key not in heads:
                    heads[key] = zero_shot_head(backbone, module, bundle.classnames, templates,
                                                device, autocast)
                logits, labels = self._logits(backbone, module, heads[key], scale, loader, device,
                                              autocast)
                out[name] = {"metrics": classification_metrics(logits, labels),
                             "logits": logits, "labels": labels}
        finally:
            module.train(was_training)
        return out

    @staticmethod
    def _logits(backbone: Backbone, module: nn.Module, head: torch.Tensor, scale: torch.Tensor,
                loader: Any, device: torch.device, autocast: Any) -> tuple[torch.Tensor, torch.Tensor]:
        all_logits, all_labels = [], []
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            with autocast():
                feats = backbone.encode_image(module, images)
            all_logits.append((scale * feats.float() @ head.T).cpu())
            all_labels.append(batch["label"])
        return torch.cat(all_logits), torch.cat(all_labels)


def make_task(options: dict[str, Any]) -> ClassificationTask:
    opts = Options(options, path="task")
    templates = _templates_option(opts, "templates")
    train_templates = _templates_option(opts, "train_templates")
    train_text = opts.str("train_text", default="templates", choices=("templates", "captions"))
    opts.done()
    return ClassificationTask(templates, train_templates, train_text)


@hookimpl
def tracer_register_tasks(registry) -> None:
    registry.add("classification", make_task)
