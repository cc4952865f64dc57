"""Building what a recipe names: the backbone, the task and the datasets, through the plugins.

``finetune``, ``eval``, ``export``, ``distill-check`` and the benchmarks all build through this
module, so a recipe means the same model and data to every command.

A backbone plugin may need weights that tracer itself has to train first (the embedded tiny CLIP
is pretrained by tracer on its synthetic world). Its factory then declares them through the
optional ``weights_build(options)`` capability (a :class:`~tracer_cli.sdk.contracts.WeightsBuild`),
and :func:`make_backbone` has them made once, before it calls the factory: the engine calls the
plugin, never the other way round. Making them is a finetuning run, one level up
(:func:`tracer_cli.engine.run.train_weights`), so it is passed in (``train_weights``) rather than
imported: this module is below the run, and imports nothing of it. Callers that want the whole of
it use :func:`tracer_cli.engine.run.build_backbone` / ``pretrained_backbone`` /
``backbone_from_options``, which pass the run's own.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tracer_cli.rundir import checksums
from tracer_cli.sdk.contracts import Backbone, DatasetBundle, Task, WeightsBuild
from tracer_cli.engine import checkpoint
from tracer_cli.engine.data import eval_loader
from tracer_cli.engine.precision import resolve_device
from tracer_cli.errors import UsageError
from tracer_cli.events import current_reporter
from tracer_cli.sdk.host import get_host
from tracer_cli.recipe import Recipe


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Makes a backbone's weights (a finetuning run) and returns where they are.
TrainWeights = Callable[[WeightsBuild], Path]


def make_backbone(name: str, options: dict[str, Any], train_weights: TrainWeights) -> Backbone:
    """Backbone plugin ``name`` built from its ``[model]`` options, its weights made first by
    ``train_weights`` when the plugin asks for weights that are not there (or damaged)."""
    factory = get_host().backbones.get(name).factory
    plan = getattr(factory, "weights_build", None)
    build = plan(dict(options)) if plan is not None else None
    if build is not None and not _intact(build):
        train_weights(build)
    return factory(options)


def _intact(build: WeightsBuild) -> bool:
    """Whether ``build.target`` is there and matches its recorded SHA-256. A damaged copy of
    shipped weights is unpacked again (seconds, the same bytes); one that took a training run to
    build is reported instead of silently retrained: the user decides."""
    if not build.target.is_file():
        return False
    verdict = checksums.verify(build.target)
    if verdict.ok:
        return True
    damaged = f"the cached weights file '{build.target}' is damaged ({verdict.reason})"
    if build.shipped is None:
        raise UsageError(f"{damaged}; delete it to build {build.what} again (one-time "
                         "training)")
    current_reporter().notice(f"{damaged}; unpacking the weights shipped with tracer again")
    return False


def unpack_shipped(build: WeightsBuild) -> Path:
    """Write the weights the plugin ships (``build.shipped``) to ``build.target``, with their
    lock file beside it."""
    state, lock = build.shipped()
    build.target.parent.mkdir(parents=True, exist_ok=True)
    # The lock first: the weights file appearing is what marks the build complete.
    build.target.with_suffix(".lock.toml").write_text(lock, encoding="utf-8")
    checkpoint.save(build.target, {"state_dict": state})
    current_reporter().notice(f"{build.what}: unpacked the weights shipped with tracer to "
                              f"{build.target}")
    return build.target


def build_task(recipe: Recipe) -> Task:
    return get_host().tasks.get(recipe.task.name).factory(dict(recipe.task.options))


def build_dataset(spec: dict[str, Any], path: str, split: str, transform: Any) -> DatasetBundle:
    """Call the dataset plugin named by ``spec`` with its options and the recipe key path."""
    entry = get_host().datasets.get(spec["name"])
    options = {k: v for k, v in spec.items() if k not in ("name", "label")}
    options["_path"] = path
    bundle = entry.factory(options, split, transform)
    if len(bundle.dataset) == 0:
        raise UsageError(f"dataset '{spec['name']}' ({path}) has no examples for split '{split}'")
    return bundle


def resolve_epochs(recipe: Recipe) -> None:
    """``train.epochs`` into ``train.steps`` where no run builds the training set with its
    backbone (``tracer distill-check RECIPE``): the set is built without a transform, only to be
    counted. A finetune resolves from the set it trains on."""
    if recipe.train.epochs:
        bundle = build_dataset(recipe.data.train, "data.train", "train", None)
        recipe.train.resolve_epochs(len(bundle.dataset))


def eval_sets(recipe: Recipe, backbone: Backbone, roles: tuple[str, ...] = ("id", "ood")
              ) -> dict[str, tuple[DatasetBundle, Any]]:
    """name -> (bundle, loader) for the recipe's datasets of ``roles`` (``id``, ``ood``,
    ``retain``), in recipe order."""
    out = {}
    pin = resolve_device(recipe.run.device).type == "cuda"
    for role in roles:
        for i, spec in enumerate(getattr(recipe.data, role)):
            bundle = build_dataset(spec, f"data.{role}[{i}]", "test", backbone.preprocess_eval)
            loader = eval_loader(bundle.dataset, recipe.data.eval_batch_size,
                                 recipe.data.num_workers, pin)
            out[spec.get("label") or spec["name"]] = (bundle, loader)
    return out


# Retention sets are classification datasets of other tasks, scored by this task's zero-shot
# text head whatever the run's own task (a retrieval or VQA run forgets the same way).
RETAIN_TASK = "classification"


def retain_task() -> Task:
    """The task that scores retention sets: ``classification`` with its default options, so each
    set is read with its own class names and templates (the run's ``task.templates`` or
    ``classnames_file`` describe the finetuning task, not the retention sets). It is called
    without a head: a head trained by lp/ft/lpft has only the finetuning classes, so retention
    goes through the (finetuned) backbone's text tower."""
    return get_host().tasks.get(RETAIN_TASK).factory({})
