"""The classification datasets: one per domain (``synth-photo``, ``synth-sketch``, ...), the
narrow finetuning slice ``synth-photo-narrow`` and the weighted mix ``synth-world``.

The render seed is derived from the world seed *and* the split, so train and test images are
different draws.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from tracer_cli.sdk import DatasetBundle, Options, RecipeError
from tracer_plugins.datasets.synth.factory import as_image, open_options, read_names, split_seed
from tracer_plugins.datasets.synth.rendering import render
from tracer_plugins.datasets.synth.world import (
    BACKGROUNDS, CLASSNAMES, COLOURLESS, COLOURS, DOMAINS, TEMPLATES, VALIDATION_DOMAINS)

DEFAULT_MIX = {"photo": 0.7, "sketch": 0.1, "cartoon": 0.1, "noisy": 0.1}


class SynthDataset(Dataset):
    """Pre-rendered images; items are ``{"image", "label", "caption"}`` dicts."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, captions: Sequence[str],
                 transform: Callable[[Image.Image], Any] | None):
        self.images, self.labels, self.captions = images, labels, list(captions)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": as_image(self.images[i], self.transform), "label": int(self.labels[i]),
                "caption": self.captions[i]}


def _bundle(images, labels, captions, transform, info: dict[str, Any]) -> DatasetBundle:
    return DatasetBundle(dataset=SynthDataset(images, labels, captions, transform),
                         classnames=list(CLASSNAMES), templates=list(TEMPLATES),
                         has_captions=True, info=info)


def domain_factory(domain: str) -> Callable[..., DatasetBundle]:
    """The factory of ``synth-<domain>``: that domain's images, with the common options only."""
    # A validation domain says so in its info, for reports that must never list it as a test.
    role = {"validation_only": True} if domain in VALIDATION_DOMAINS else {}

    def factory(spec: dict[str, Any], split: str, transform=None) -> DatasetBundle:
        opts, common = open_options(spec, split)
        bias = {} if domain in COLOURLESS else read_colour_bias(opts)
        opts.done()
        images, labels, captions = render(domain, common["size"],
                                          split_seed(common["seed"], split), common["image_size"],
                                          **bias)
        return _bundle(images, labels, captions, transform,
                       {"domain": domain, "split": split, **common, **bias, **role})
    factory.__name__ = f"synth_{domain}"
    return factory


NARROW_COLOURS = ("red", "blue", "green", "yellow")


def read_colour_bias(opts: Options) -> dict[str, float]:
    """The ``colour_bias`` option (0 to 1, default 0): the chance that an image shows its class's
    colour instead of an independent one. ``{}`` at 0, so unbiased renders stay as they were."""
    bias = opts.float("colour_bias", default=0.0, minimum=0.0, maximum=1.0)
    return {"colour_bias": bias} if bias else {}


def synth_photo_narrow(spec: dict[str, Any], split: str, transform=None) -> DatasetBundle:
    """Photos restricted to a few colours and backgrounds: the narrow finetuning slice.

    The default is four of the eight colours on every background. A narrower default (two
    colours on plain backgrounds) made the slice a distribution shift of its own: finetuning on it
    lowered accuracy on photos as a whole, so the world no longer showed the phenomenon it stands
    for (ID up, OOD down); see README, "The embedded world".
    """
    opts, common = open_options(spec, split)
    colours = read_names(opts, "colours", NARROW_COLOURS, COLOURS)
    backgrounds = read_names(opts, "backgrounds", BACKGROUNDS, BACKGROUNDS)
    bias = read_colour_bias(opts)
    opts.done()
    images, labels, captions = render("photo", common["size"], split_seed(common["seed"], split),
                                      common["image_size"], colours, backgrounds, **bias)
    return _bundle(images, labels, captions, transform,
                   {"domain": "photo-narrow", "split": split, **common,
                    "colours": colours, "backgrounds": backgrounds, **bias})


def _read_mix(opts: Options) -> dict[str, float]:
    mix = opts.raw("mix", default=dict(DEFAULT_MIX))
    if not isinstance(mix, dict):
        raise RecipeError(opts.key("mix"), f"expected a table of domain = weight, got {mix!r}")
    weights = {}
    for domain, weight in mix.items():
        key = f"{opts.key('mix')}.{domain}"
        if domain not in DOMAINS:
            raise RecipeError(key, f"unknown domain; allowed: {', '.join(DOMAINS)}")
        if (isinstance(weight, bool) or not isinstance(weight, (int, float))
                or not 0 <= weight < math.inf):
            raise RecipeError(key, f"expected a finite non-negative number, got {weight!r}")
        weights[domain] = float(weight)
    if not sum(weights.values()) > 0:
        raise RecipeError(opts.key("mix"), "weights must sum to more than 0")
    return weights


def _apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` by ``weights`` with largest remainders: exact, deterministic counts."""
    scale = total / sum(weights.values())
    shares = {d: w * scale for d, w in weights.items()}
    counts = {d: int(math.floor(s)) for d, s in shares.items()}
    by_remainder = sorted(shares, key=lambda d: (counts[d] - shares[d], DOMAINS.index(d)))
    for domain in by_remainder[:total - sum(counts.values())]:
        counts[domain] += 1
    return counts


def synth_world(spec: dict[str, Any], split: str, transform=None) -> DatasetBundle:
    """All domains, mixed by weight and shuffled (seeded) into one dataset."""
    opts, common = open_options(spec, split)
    weights = _read_mix(opts)
    opts.done()
    seed = split_seed(common["seed"], split)
    counts = _apportion(common["size"], weights)
    # Fixed domain order, so the order of keys in the recipe cannot change the images.
    parts = [render(d, counts[d], seed, common["image_size"]) for d in DOMAINS if counts.get(d)]
    order = np.random.default_rng([seed, len(DOMAINS)]).permutation(common["size"])
    images = np.concatenate([p[0] for p in parts])[order]
    labels = np.concatenate([p[1] for p in parts])[order]
    captions = [c for p in parts for c in p[2]]
    return _bundle(images, labels, [captions[i] for i in order], transform,
                   {"domain": "world", "split": split, **common, "mix": weights})
