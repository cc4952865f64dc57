"""``synth-colour``: name the colour of a shape, a task of the world that finetuning does not train.

The images are the world's photos (``domain = "cartoon"`` or ``"noisy"`` for those looks), drawn
with every attribute independent of the others; the label is the colour the shape is filled with,
one of :data:`~tracer_plugins.datasets.synth.world.COLOURS`. Pretraining taught it: the captions
the tiny CLIP was pretrained on (``synth-world``, ``train_text = "captions"``) name the colour of
most coloured shapes ("a photo of a small red star"). Finetuning on shapes never asks for it, so
its zero-shot accuracy before and after finetuning measures what finetuning kept of that
knowledge (``data.retain``, docs/eval.md).

Prompts follow the captions' own wording: "a photo of a {size} {colour} {shape}." for every size
and shape ("a cartoon of ...", "a noisy photo of ..." on those domains), so the zero-shot head of
a colour averages it over the shapes it can fill. "a" stays right before every size, where
"a {colour}" would need "an orange".

The images are a draw of their own: the render seed comes from the world seed, the split and a
tag of this dataset, so they are none of ``synth-photo``'s images and no other dataset's stream
changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tracer_cli.sdk import DatasetBundle
from tracer_plugins.datasets.synth.classification import SynthDataset
from tracer_plugins.datasets.synth.factory import open_options, split_seed
from tracer_plugins.datasets.synth.rendering import render_arrays
from tracer_plugins.datasets.synth.world import CLASSNAMES, COLOURLESS, COLOURS, DOMAINS, SIZES

_COLOUR_STREAM = int.from_bytes(b"colour", "little")  # seed-sequence tag of this dataset
COLOUR_DOMAINS = tuple(d for d in DOMAINS if d not in COLOURLESS)
# How the pretraining captions begin for each coloured domain.
_PREFIX = {"photo": "a photo of", "cartoon": "a cartoon of", "noisy": "a noisy photo of"}


def colour_templates(domain: str = "photo") -> list[str]:
    """The prompts of ``synth-colour`` on ``domain``: one per size and shape, "{}" the colour."""
    return [f"{_PREFIX[domain]} a {size} {{}} {shape}." for size in SIZES for shape in CLASSNAMES]


def colour_seed(seed: int, split: str) -> int:
    """The render seed of one split of ``synth-colour`` (independent of every other dataset's)."""
    return int(np.random.SeedSequence([split_seed(seed, split), _COLOUR_STREAM])
               .generate_state(1)[0])


def synth_colour(spec: dict[str, Any], split: str, transform=None) -> DatasetBundle:
    """Images of one coloured domain labelled by the colour of their shape."""
    opts, common = open_options(spec, split)
    domain = opts.str("domain", default="photo", choices=COLOUR_DOMAINS)
    opts.done()
    images, _, captions, attrs = render_arrays(domain, common["size"],
                                               colour_seed(common["seed"], split),
                                               common["image_size"])
    labels = attrs["colour"].astype(np.int64)
    return DatasetBundle(dataset=SynthDataset(images, labels, captions, transform),
                         classnames=list(COLOURS), templates=colour_templates(domain),
                         has_captions=True,
                         info={"domain": domain, "split": split, "task": "colour", **common})
