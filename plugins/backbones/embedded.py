"""The embedded tiny CLIP: pretrained by tracer itself on the synthetic world, built on first use.

``model.pretrained = "embedded"`` resolves to ``$TRACER_CACHE/embedded/<arch>-<digest>.pt``
(``TRACER_CACHE`` defaults to ``~/.cache/tracer``). When the file is missing, the ``openclip``
backbone asks the engine for it (:func:`weights_build`, the backbone's ``weights_build``
capability): the engine runs the packaged ``tiny_pretrain.toml`` recipe — exactly what
``tracer finetune recipes/tiny_pretrain.toml`` does — keeps the student's weights there, and then
builds the backbone. The digest covers the recipe text, the architecture's name and config
(``model_configs/<arch>.json``) and :data:`BUILD_VERSION`, so editing the recipe or the config,
or changing engine code in a way that changes what the build computes, builds a new checkpoint
instead of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import os
from importlib import resources
from pathlib import Path

from tracer_cli.contracts import WeightsBuild

CACHE_ENV = "TRACER_CACHE"
PRETRAIN_RECIPE = "tiny_pretrain.toml"
# Bumped whenever engine code changes the weights a build produces from the same recipe, so a
# cache built by older code is never taken for this code's build (the digest includes it).
# 2: fused AdamW (its float rounding differs from the per-tensor loop that built version 1).
# (A width-16 model with its own schedule was tried as version 3 and not adopted: BENCHMARKS.md,
# "Tried and not adopted"; the digest now also covers the arch config, so it never collides.)
BUILD_VERSION = 2
CONFIG_DIR = Path(__file__).parent / "model_configs"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tracer").expanduser()


def pretrain_recipe_text() -> str:
    return resources.files("tracer_cli.recipes").joinpath(PRETRAIN_RECIPE).read_text("utf-8")


def embedded_path(arch: str, seed: int = 0) -> Path:
    """The cache file of ``arch`` pretrained with ``run.seed = seed`` (seed 0: the recipe's own)."""
    config = CONFIG_DIR / f"{arch}.json"
    config_text = config.read_text("utf-8") if config.is_file() else ""
    key = f"{arch}\nbuild {BUILD_VERSION}\n{config_text}\n{pretrain_recipe_text()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    suffix = f"-seed{seed}" if seed else ""
    return cache_dir() / "embedded" / f"{arch}-{digest}{suffix}.pt"


def weights_build(arch: str, seed: int = 0) -> WeightsBuild:
    """How the engine pretrains ``arch`` with the packaged recipe (``run.seed = seed``:
    initialisation, data order and augmentation; the synthetic world itself is the same)."""
    return WeightsBuild(
        recipe=pretrain_recipe_text(),
        overrides=(f"model.arch={arch}", "run.eval=false", "train.checkpoint_every=0",
                   f"run.seed={seed}"),
        target=embedded_path(arch, seed),
        what=(f"the embedded tiny CLIP '{arch}' (pretraining on the synthetic world; the same as "
              f"`tracer finetune recipes/{PRETRAIN_RECIPE}`)"))
