"""What every synth dataset factory shares: the common options (``size``, ``image_size``,
``seed``), the per-split render seed, name-list options, and how an item hands out its image.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from tracer_cli.sdk import MAX_SEED, Options, RecipeError

DEFAULT_SIZE = {"train": 20000, "test": 5000}
# Every image is rendered up front and kept in memory (image_size² × 3 bytes each), so the size
# is bounded before anything is allocated: at most a million images, and at most 4 GiB of them
# (87,381 images at the largest image_size, 128 px). tiny_pretrain.toml, the largest real use,
# renders 60,000 at 32 px (184 MB).
MAX_SIZE = 10**6
MAX_BYTES = 4 * 2**30
MAX_IMAGE_SIZE = 128


_SPLIT_ID = {"train": 0, "test": 1}


def as_image(pixels: np.ndarray, transform: Callable[[Image.Image], Any] | None) -> Any:
    """A float CHW tensor in [0, 1] without a transform, else the transform of the PIL image."""
    if transform is None:
        return torch.tensor(pixels).permute(2, 0, 1).float().div_(255)
    return transform(Image.fromarray(pixels))


def split_seed(seed: int, split: str) -> int:
    """The render seed of one split of world ``seed`` (train and test are independent draws)."""
    if split not in _SPLIT_ID:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    return int(np.random.SeedSequence([seed, _SPLIT_ID[split]]).generate_state(1)[0])


def open_options(spec: dict[str, Any], split: str,
                 default_size: dict[str, int] = DEFAULT_SIZE) -> tuple[Options, dict[str, Any]]:
    """Read the options every synth dataset has; the caller reads its own and calls done()."""
    table = dict(spec)
    opts = Options(table, path=table.pop("_path", "data"))
    if split not in _SPLIT_ID:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    common = {"size": opts.int("size", default=default_size[split], minimum=1, maximum=MAX_SIZE),
              "image_size": opts.int("image_size", default=32, minimum=16,
                                     maximum=MAX_IMAGE_SIZE),
              "seed": opts.int("seed", default=0, minimum=0, maximum=MAX_SEED)}
    fits = MAX_BYTES // (3 * common["image_size"] ** 2)
    if common["size"] > fits:
        raise RecipeError(opts.key("size"), f"got {common['size']}; images of "
                          f"{common['image_size']} px are kept in memory, at most "
                          f"{MAX_BYTES >> 30} GiB of them: must be between 1 and {fits:,} "
                          "(or a smaller image_size)")
    return opts, common


def read_names(opts: Options, key: str, default: Sequence[str],
               allowed: Sequence[str]) -> list[str]:
    """The list option ``key`` (``default`` when absent): at least one name, each in ``allowed``;
    duplicates dropped, first occurrence kept."""
    names = opts.str_list(key, default=list(default))
    if not names:
        raise RecipeError(opts.key(key), f"must name at least one of: {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            raise RecipeError(opts.key(key),
                              f"unknown value {name!r}; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(names))
