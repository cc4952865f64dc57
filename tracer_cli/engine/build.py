"""Building what a recipe names: the backbone, the task and the datasets, through the plugins.

``finetune``, ``eval``, ``export``, ``distill-check`` and the benchmarks all build through this
module, so a recipe means the same model and data to every command.

A backbone plugin may need weights that tracer itself has to train first (the embedded tiny CLIP
is pretrained by tracer on its synthetic world). Its factory then declares them through the
optional ``weights_build(options)`` capability (a :class:`~tracer_cli.sdk.contracts.WeightsBuild`),
and :func:`backbone_from_options` trains them once, before it calls the factory: the engine calls
the plugin, never the other way round.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracer_cli import rundir
from tracer_cli.engine.data import eval_loader
from tracer_cli.engine.precision import resolve_device
from tracer_cli.errors import UsageError
from tracer_cli.events import current_reporter
from tracer_cli.plugins import get_host
from tracer_cli.recipe import Recipe
from tracer_cli.sdk.contracts import Backbone, DatasetBundle, Task, WeightsBuild


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_backbone(recipe: Recipe) -> Backbone:
    """The recipe's backbone, its weights trained first when the plugin asks for that."""
    return backbone_from_options(recipe.model.backbone, dict(recipe.model.options))


def pretrained_backbone(recipe: Recipe) -> Backbone:
    """The backbone exactly as ``finetune`` built it: seeded first, so that even randomly
    initialised weights (``pretrained = "none"``) come out as the run's θ₀."""
    seed_everything(recipe.run.seed)
    return build_backbone(recipe)


def backbone_from_options(name: str, options: dict[str, Any]) -> Backbone:
    """Backbone plugin ``name`` built from its ``[model]`` options."""
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
    verdict = rundir.verify(build.target)
    if verdict.ok:
        return True
    damaged = f"the cached weights file '{build.target}' is damaged ({verdict.reason})"
    if build.shipped is None:
        raise UsageError(f"{damaged}; delete it to build {build.what} again (one-time "
                         "training)")
    current_reporter().notice(f"{damaged}; unpacking the weights shipped with tracer again")
    return False


def train_weights(build: WeightsBuild) -> Path:
    """Keep ``build``'s weights at ``build.target``, with their lock file beside it: the
    plugin's packaged weights when it ships them (``build.shipped``), else ``build.recipe`` run
    as ``tracer finetune`` would (in a temporary run directory), its student's weights passed
    through ``build.finalize`` when given."""
    from tracer_cli import recipe as recipe_mod
    from tracer_cli.engine import checkpoint
    from tracer_cli.engine.run import finetune

    reporter = current_reporter()
    if build.shipped is not None:
        state, lock = build.shipped()
        build.target.parent.mkdir(parents=True, exist_ok=True)
        # The lock first: the weights file appearing is what marks the build complete.
        build.target.with_suffix(".lock.toml").write_text(lock, encoding="utf-8")
        checkpoint.save(build.target, {"state_dict": state})
        reporter.notice(f"{build.what}: unpacked the weights shipped with tracer to "
                        f"{build.target}")
        return build.target
    reporter.notice(f"building {build.what} (one-time training; it will be cached at "
                    f"{build.target})")
    with tempfile.TemporaryDirectory(prefix="tracer-weights-") as tmp:
        source = Path(tmp) / "recipe.toml"
        source.write_text(build.recipe, encoding="utf-8")
        recipe = recipe_mod.load(source, list(build.overrides))
        result = finetune(recipe, output_dir=Path(tmp) / "runs", reporter=reporter)
        last = checkpoint.load(rundir.last_path(result.run_dir))
        state = last["state_dict"]
        if build.finalize is not None:
            state = build.finalize(state, last)
        lock = rundir.recipe_lock_path(result.run_dir).read_text(encoding="utf-8")
        build.target.parent.mkdir(parents=True, exist_ok=True)
        build.target.with_suffix(".lock.toml").write_text(lock, encoding="utf-8")
        checkpoint.save(build.target, {"state_dict": state})
    values = sum(v.numel() for v in state.values() if torch.is_tensor(v))
    reporter.notice(f"{build.what} ready: {build.target} ({values:,} values)")
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
