"""``synth-captions``: one domain's images with several distinct captions each, for image-text
retrieval."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from tracer_cli.sdk import DatasetBundle, RecipeError
from tracer_plugins.datasets.common import caption_fields
from tracer_plugins.datasets.synth.captions import MAX_CAPTIONS, caption_sets
from tracer_plugins.datasets.synth.classification import read_colour_bias
from tracer_plugins.datasets.synth.factory import as_image, open_options, read_names, split_seed
from tracer_plugins.datasets.synth.rendering import render_arrays
from tracer_plugins.datasets.synth.world import (
    CLASSNAMES, COLOURLESS, COLOURS, RENDER_DOMAINS, TEMPLATES)

DEFAULT_CAPTION_SIZE = {"train": 4000, "test": 1000}  # images; test big enough for stable recall


class SynthCaptionDataset(Dataset):
    """Pre-rendered images with several captions each, for image-text retrieval.

    Items are ``{"image", "label", "caption", "captions", "image_id"}``: ``caption`` is the first
    of ``captions``, ``image_id`` the item's index (retrieval metrics map captions to images by it).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, captions: list[list[str]],
                 transform: Callable[[Image.Image], Any] | None):
        self.images, self.labels, self.captions = images, labels, captions
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": as_image(self.images[i], self.transform), "label": int(self.labels[i]),
                **caption_fields(self.captions[i], i)}


def synth_captions(spec: dict[str, Any], split: str, transform=None) -> DatasetBundle:
    """One domain's images with ``captions_per_image`` distinct captions each, for retrieval.

    The images (and first captions) are those of ``synth-<domain>`` with the same seed, size and
    colours; the other captions name more of the image's attributes in other sentence frames
    (:func:`caption_sets`). ``info["captions"]`` holds every image's captions, so a task can
    encode all texts without reading the images.

    ``colour_bias`` (0 to 1, default 0) ties each shape to a colour of its own in these images,
    as in the classification world: retrieval's finetuning photos get a tie pretraining never saw
    (a finetuned model can match "star" through "yellow"), the OOD domains do not. The captions
    are drawn from the tied attributes, so they name the colour an image shows.
    """
    opts, common = open_options(spec, split, DEFAULT_CAPTION_SIZE)
    domain = opts.str("domain", default="photo", choices=RENDER_DOMAINS)
    per_image = opts.int("captions_per_image", default=3, minimum=1, maximum=MAX_CAPTIONS)
    colours = read_names(opts, "colours", COLOURS, COLOURS)
    bias = {} if domain in COLOURLESS else read_colour_bias(opts)
    opts.done()
    seed = split_seed(common["seed"], split)
    images, labels, first, attrs = render_arrays(domain, common["size"], seed,
                                                 common["image_size"], colours, **bias)
    captions = caption_sets(domain, attrs, first, seed, per_image)
    return DatasetBundle(
        dataset=SynthCaptionDataset(images, labels, captions, transform),
        classnames=list(CLASSNAMES), templates=list(TEMPLATES), has_captions=True,
        info={"kind": "captions", "captions": captions, "domain": domain, "split": split,
              **common, "captions_per_image": per_image, "colours": colours,
              **bias})
