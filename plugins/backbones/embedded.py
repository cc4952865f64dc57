"""The embedded tiny CLIP: pretrained by tracer itself on the synthetic world, built on first use.

``model.pretrained = "embedded"`` resolves to ``$TRACER_CACHE/embedded/<arch>-<digest>.pt``
(``TRACER_CACHE`` defaults to ``$XDG_CACHE_HOME/tracer``, else ``~/.cache/tracer``). When the
file is missing, the ``openclip`` backbone asks the engine for it (:func:`weights_build`, the
backbone's ``weights_build`` capability): the engine runs the packaged ``tiny_pretrain.toml`` recipe — exactly what
``tracer finetune recipes/tiny_pretrain.toml`` does — keeps the student's weights there, and then
builds the backbone. The digest covers the recipe text, the architecture's name and config
(``model_configs/<arch>.json``) and :data:`BUILD_VERSION`, so editing the recipe or the config,
or changing engine code in a way that changes what the build computes, builds a new checkpoint
instead of silently reusing a stale one.

Since build version 4 the weights are kept in a packed form (:func:`pack`): every tensor rounded
to float16, and of the 49,408-row token embedding only the rows pretraining trained, the untrained
rest drawn again from a fixed seed at their measured scale. A fresh build stores
``unpack(pack(weights))``, so the weights shipped with tracer (``weights/<file>.safetensors``,
2.9 MB each, for pretraining seeds 0, 1 and 2; the same digest as the cache file) unpack to
exactly what a build on the machine that made them stores. ``python
benchmarks/embedded_weights.py --seed P`` rebuilds them (about 22 min each at one thread).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracer_cli.sdk import (
    UsageError, WeightsBuild, file_sha256, recorded_sha, sha_path, shipped_recipe_text)

CACHE_ENV = "TRACER_CACHE"
PRETRAIN_RECIPE = "tiny_pretrain.toml"
# Bumped whenever engine code changes the weights a build produces from the same recipe, so a
# cache built by older code is never taken for this code's build (the digest includes it).
# 2: fused AdamW (its float rounding differs from the per-tensor loop that built version 1).
# 3: a width-16 model tried and not adopted (docs/history.md, "Tried and not adopted").
# 4: the width-16 model again, on the colour-biased photos of today's world, its weights packed
#    (float16, untrained token rows redrawn): see pack().
# 5: the same model pretrained twice as long at half the learning rate (6,000 steps of 128 at lr
#    1e-3), so that its pretraining seeds agree; the recipe's digest changed with it anyway, the
#    number names the build in the documents. Seeds 0, 1 and 2 ship with tracer.
BUILD_VERSION = 5
CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
TOKEN_KEY = "token_embedding.weight"
_UNTRAINED_SEED = 20260  # the fixed stream the untrained token rows are redrawn from


def cache_dir() -> Path:
    """``$TRACER_CACHE``, else ``$XDG_CACHE_HOME/tracer``, else ``~/.cache/tracer`` (the XDG base
    directory rules: an empty or relative ``XDG_CACHE_HOME`` is ignored)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "tracer"


def pretrain_recipe_text() -> str:
    return shipped_recipe_text(PRETRAIN_RECIPE)


def embedded_path(arch: str, seed: int = 0) -> Path:
    """The cache file of ``arch`` pretrained with ``run.seed = seed`` (seed 0: the recipe's own)."""
    config = CONFIG_DIR / f"{arch}.json"
    config_text = config.read_text("utf-8") if config.is_file() else ""
    key = f"{arch}\nbuild {BUILD_VERSION}\n{config_text}\n{pretrain_recipe_text()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    suffix = f"-seed{seed}" if seed else ""
    return cache_dir() / "embedded" / f"{arch}-{digest}{suffix}.pt"


def shipped_path(arch: str, seed: int = 0) -> Path:
    """Where tracer ships the packed weights of ``embedded_path(arch, seed)``: the same name,
    digest included, so weights of another recipe, config or build version never match."""
    return WEIGHTS_DIR / f"{embedded_path(arch, seed).stem}.safetensors"


def build_overrides(arch: str, seed: int = 0) -> tuple[str, ...]:
    """The ``--set`` items a build adds to the packaged pretraining recipe."""
    return (f"model.arch={arch}", "run.eval=false", "train.checkpoint_every=0", f"run.seed={seed}")


def weights_build(arch: str, seed: int = 0) -> WeightsBuild:
    """How the engine pretrains ``arch`` with the packaged recipe (``run.seed = seed``:
    initialisation, data order and augmentation; the synthetic world itself is the same), or
    unpacks the weights tracer ships for it."""
    shipped = shipped_path(arch, seed)
    return WeightsBuild(
        recipe=pretrain_recipe_text(),
        overrides=build_overrides(arch, seed),
        target=embedded_path(arch, seed),
        what=(f"the embedded tiny CLIP '{arch}' (pretraining on the synthetic world; the same as "
              f"`tracer finetune recipes/{PRETRAIN_RECIPE}`)"),
        finalize=finalize,
        shipped=functools.partial(load_shipped, shipped) if shipped.is_file() else None)


# --- packed weights -----------------------------------------------------------------------------


def trained_rows(checkpoint: dict[str, Any], shape: torch.Size) -> torch.Tensor:
    """Which token-embedding rows pretraining trained: those whose AdamW second moment is not
    zero (a row no caption's token ever reached has had no gradient). All rows when the
    checkpoint's optimizer state does not single out one tensor of that shape."""
    states = (checkpoint.get("optimizer") or {}).get("state", {})
    moments = [v["exp_avg_sq"] for v in states.values()
               if torch.is_tensor(v.get("exp_avg_sq")) and v["exp_avg_sq"].shape == shape]
    if len(moments) != 1:
        return torch.ones(shape[0], dtype=torch.bool)
    return moments[0].ne(0).any(dim=1)


def pack(state: dict[str, torch.Tensor], trained: torch.Tensor) -> dict[str, torch.Tensor]:
    """``state`` as shipped: floating tensors in float16; of the token embedding only the
    ``trained`` rows, plus the root-mean-square of the others (redrawn by :func:`unpack`)."""
    packed = {}
    for key, value in state.items():
        if key == TOKEN_KEY:
            continue
        packed[key] = value.half() if value.is_floating_point() else value.clone()
        if value.is_floating_point() and not torch.isfinite(packed[key]).all():
            raise ValueError(f"{key} does not fit float16")
    table = state[TOKEN_KEY].float()
    rows = trained.nonzero().squeeze(1)
    rest = table[~trained]
    packed["token_embedding.rows"] = rows.to(torch.int32)
    packed["token_embedding.trained"] = table[rows].half()
    packed["token_embedding.shape"] = torch.tensor(list(table.shape), dtype=torch.int64)
    packed["token_embedding.untrained_rms"] = (rest.pow(2).mean().sqrt() if len(rest)
                                               else torch.zeros(())).half().reshape(1)
    return {key: value.contiguous() for key, value in packed.items()}


def unpack(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 state dict of packed weights; untrained token rows drawn from a fixed seed."""
    extra = ("token_embedding.rows", "token_embedding.trained", "token_embedding.shape",
             "token_embedding.untrained_rms")
    shape = tuple(int(n) for n in packed["token_embedding.shape"])
    rms = np.float32(packed["token_embedding.untrained_rms"].float().item())
    drawn = np.random.default_rng(_UNTRAINED_SEED).standard_normal(shape, dtype=np.float32) * rms
    table = torch.from_numpy(drawn).half().float()
    table[packed["token_embedding.rows"].long()] = packed["token_embedding.trained"].float()
    state = {key: value.float() if value.is_floating_point() else value.clone()
             for key, value in packed.items() if key not in extra}
    state[TOKEN_KEY] = table
    return state


def finalize(state: dict[str, torch.Tensor], checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What a build keeps: ``unpack(pack(state))``, exactly what its shipped form unpacks to."""
    return unpack(pack(state, trained_rows(checkpoint, state[TOKEN_KEY].shape)))


def load_shipped(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The unpacked weights and lock text shipped at ``path``, after checking the file against
    the SHA-256 recorded beside it (``<path>.sha256``)."""
    from safetensors.torch import load_file

    recorded = sha_path(path)
    lock = path.with_name(path.name.removesuffix(".safetensors") + ".lock.toml")
    for needed in (recorded, lock):
        if not needed.is_file():
            raise UsageError(f"the embedded weights shipped at {path} come without {needed.name}: "
                             f"restore it (or reinstall tracer), or delete {path.name} to build "
                             "the weights from scratch")
    expected = recorded_sha(path) or ""
    actual = file_sha256(path)
    if actual != expected:
        raise UsageError(
            f"the embedded weights shipped at {path} are damaged (SHA-256 {actual[:12]}..., "
            f"expected {expected[:12]}...): restore the file (`git checkout -- {path.name}` or "
            f"reinstall tracer), or delete it to build the weights from scratch")
    return unpack(load_file(str(path))), lock.read_text("utf-8")
