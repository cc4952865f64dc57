"""An example third-party tracer plugin: the ``example-stripes`` dataset.

Three procedurally drawn classes (horizontal stripes, vertical stripes, checkerboard) in random
colours. Every image is drawn from a generator seeded by (seed, split, index), so the data is
identical across runs and processes and needs no files. Recipe options: ``size`` (images per
split, default 60), ``image_size`` (pixels per side, default 32) and ``seed`` (default 0).

tracer finds this module through the ``tracer`` entry-point group declared in pyproject.toml and
calls :func:`tracer_register_datasets` once, when its plugin host loads.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tracer_cli import hookimpl
from tracer_cli.contracts import DatasetBundle
from tracer_cli.options import Options

CLASSNAMES = ["horizontal stripes", "vertical stripes", "checkerboard"]
TEMPLATES = ["a picture of {}."]
_SPLIT_SEEDS = {"train": 0, "test": 1}


def draw(label: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``image_size`` x ``image_size`` RGB uint8 image of class ``label``."""
    width = int(rng.integers(2, max(3, image_size // 4)))
    first = rng.integers(0, 256, size=3)
    # Push the second colour away from the first so the pattern is always visible.
    second = (first + rng.integers(96, 160, size=3)) % 256
    rows, cols = np.indices((image_size, image_size)) // width
    if label == 0:
        mask = rows % 2 == 0
    elif label == 1:
        mask = cols % 2 == 0
    else:
        mask = (rows + cols) % 2 == 0
    return np.where(mask[..., None], first, second).astype(np.uint8)


class StripesDataset(Dataset):
    """``size`` images, labels cycling through the three classes."""

    def __init__(self, size: int, image_size: int, seed: int, split: str,
                 transform: Callable[[Any], torch.Tensor] | None):
        self.size = size
        self.image_size = image_size
        self.seed = (seed, _SPLIT_SEEDS[split])
        self.transform = transform

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        label = index % len(CLASSNAMES)
        pixels = draw(label, self.image_size, np.random.default_rng((*self.seed, index)))
        if self.transform is None:
            image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
        else:
            image = self.transform(Image.fromarray(pixels))
        return {"image": image, "label": label}


def make_stripes(spec: dict[str, Any], split: str,
                 transform: Callable[[Any], torch.Tensor] | None) -> DatasetBundle:
    """The dataset factory: ``factory(spec, split, transform) -> DatasetBundle``."""
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    table = dict(spec)
    # tracer passes the recipe key path of this table so errors can name e.g. 'data.train.size'.
    opts = Options(table, path=table.pop("_path", "data"))
    size = opts.int("size", default=60, minimum=1)
    image_size = opts.int("image_size", default=32, minimum=4)
    seed = opts.int("seed", default=0, minimum=0)
    opts.done()  # reject unknown (misspelt) keys
    return DatasetBundle(
        dataset=StripesDataset(size, image_size, seed, split, transform),
        classnames=list(CLASSNAMES), templates=list(TEMPLATES),
        info={"source": "example-stripes", "size": size, "image_size": image_size,
              "seed": seed, "split": split})


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("example-stripes", make_stripes)
