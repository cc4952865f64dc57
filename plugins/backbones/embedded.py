"""The embedded tiny CLIP: pretrained by tracer itself on the synthetic world, built on first use.

``model.pretrained = "embedded"`` resolves to ``$TRACER_CACHE/embedded/<arch>-<digest>.pt``
(``TRACER_CACHE`` defaults to ``~/.cache/tracer``). When the file is missing it is built by running
the packaged ``tiny_pretrain.toml`` recipe through the normal engine — exactly what
``tracer finetune recipes/tiny_pretrain.toml`` does — and keeping the student's weights. The digest
covers the recipe text and the architecture, so editing the recipe builds a new checkpoint instead
of silently reusing a stale one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch

from tracer_cli.engine import checkpoint
from tracer_cli.events import current_reporter

CACHE_ENV = "TRACER_CACHE"
PRETRAIN_RECIPE = "tiny_pretrain.toml"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tracer").expanduser()


def pretrain_recipe_text() -> str:
    return resources.files("tracer_cli.recipes").joinpath(PRETRAIN_RECIPE).read_text("utf-8")


def embedded_path(arch: str, seed: int = 0) -> Path:
    """The cache file of ``arch`` pretrained with ``run.seed = seed`` (seed 0: the recipe's own)."""
    digest = hashlib.sha256(f"{arch}\n{pretrain_recipe_text()}".encode()).hexdigest()[:12]
    suffix = f"-seed{seed}" if seed else ""
    return cache_dir() / "embedded" / f"{arch}-{digest}{suffix}.pt"


def embedded_weights(arch: str, seed: int = 0) -> Path:
    """Path of the embedded weights for ``arch`` (pretraining seed ``seed``), building them first
    if needed."""
    path = embedded_path(arch, seed)
    if path.is_file():
        return path
    build_embedded(arch, path, seed)
    return path


def build_embedded(arch: str, path: Path, seed: int = 0) -> None:
    """Pretrain ``arch`` with the packaged recipe (``run.seed = seed``: initialisation, data order
    and augmentation; the synthetic world itself is the same) and store the student's weights."""
    from tracer_cli import recipe as recipe_mod
    from tracer_cli.engine.run import finetune

    reporter = current_reporter()
    reporter.notice(f"building the embedded tiny CLIP '{arch}' (one-time pretraining on the "
                    f"synthetic world; same as `tracer finetune recipes/{PRETRAIN_RECIPE}`); it "
                    f"will be cached at {path}")
    with tempfile.TemporaryDirectory(prefix="tracer-pretrain-") as tmp:
        src = Path(tmp) / PRETRAIN_RECIPE
        src.write_text(pretrain_recipe_text(), encoding="utf-8")
        recipe = recipe_mod.load(src, [f"model.arch={arch}", "run.eval=false",
                                       "train.checkpoint_every=0", f"run.seed={seed}"])
        result = finetune(recipe, output_dir=Path(tmp) / "runs", reporter=reporter)
        state = checkpoint.load(result.run_dir / "last.pt")["state_dict"]
        checkpoint.save(path, {"state_dict": state})
        lock = result.run_dir / "recipe.lock.toml"
        shutil.copyfile(lock, path.with_suffix(".lock.toml"))
    reporter.notice(f"embedded tiny CLIP ready: {path} "
                    f"({sum(v.numel() for v in state.values() if torch.is_tensor(v)):,} values)")
