"""A procedural, seeded "multi-domain world" of coloured shapes, for robust-finetuning experiments.

Every image shows one of ten shapes (:data:`CLASSNAMES`), drawn from signed-distance fields
on the pixel grid (anti-aliased by a one-pixel soft edge), with attributes sampled *independently
of the class*: colour, size, position on a 3x3 grid (with jitter), rotation and background. The
shape is therefore the only thing that determines the label, which is what lets the world measure
how finetuning on a narrow slice (``synth-photo-narrow``: half of the colour palette) erodes
accuracy elsewhere. Four domains share the geometry but not the look:

* ``photo``: shaded fill on a plain, gradient or textured background, distractor blobs, mild noise;
* ``sketch``: wobbly pencil outline on paper, stray strokes, no colour;
* ``cartoon``: flat fill, thick dark outline, striped or dotted background;
* ``noisy``: a photo at low contrast, blurred, under heavy Gaussian noise.

A fifth look, ``mono`` (a photo reduced to its luminance, contrast-changed and tinted with one
random hue), is a *validation* domain: it exists to choose hyperparameters on a shift that is
none of the reported ones, so it is not in :data:`DOMAINS` and never part of ``synth-world``.

Besides the classification datasets the world serves two vision-language tasks:
``synth-captions`` (image-text retrieval: every image with several distinct captions) and
``synth-vqa`` (questions about shape, colour, size, position, domain and the number of shapes,
answered from a closed vocabulary; counting uses "group" images of 1-3 smaller copies of a shape).

Generation is deterministic: chunk ``k`` of ``render(domain, n, seed)`` depends only on
``(seed, domain, k)``, so results do not depend on request order and a longer request extends a
shorter one. The dataset factories derive the render seed from the world seed *and* the split, so
train and test images are different draws. Renders are cached in-process (eval sets are reused).

The package, in dependency order:

* :mod:`.world`: the vocabulary (classes, domains, colours, sizes, positions, templates);
* :mod:`.shapes`: signed-distance fields and their placement on the pixel grid;
* :mod:`.painters`: pixel helpers and the look of each domain;
* :mod:`.captions`: caption text (the render caption, the extra ``synth-captions`` captions);
* :mod:`.rendering` and :mod:`.groups`: seeded, chunked, cached rendering of single-shape and group
  images;
* :mod:`.factory`: options and seeds every dataset factory shares;
* :mod:`.classification`, :mod:`.retrieval`, :mod:`.vqa`: the datasets;
* :mod:`.registration`: the plugin hook (the ``synth`` entry point).

The names below are the package's public surface, re-exported so callers need not know which
module holds them.
"""

from __future__ import annotations

from tracer_plugins.datasets.synth.captions import MAX_CAPTIONS, caption_sets
from tracer_plugins.datasets.synth.classification import (
    DEFAULT_MIX, NARROW_COLOURS, SynthDataset, synth_photo_narrow, synth_world)
from tracer_plugins.datasets.synth.factory import DEFAULT_SIZE, split_seed
from tracer_plugins.datasets.synth.groups import MAX_GROUP, render_groups
from tracer_plugins.datasets.synth.rendering import render
from tracer_plugins.datasets.synth.retrieval import (
    DEFAULT_CAPTION_SIZE, SynthCaptionDataset, synth_captions)
from tracer_plugins.datasets.synth.vqa import (
    DEFAULT_VQA_SIZE, DOMAIN_ANSWERS, QUESTION_KINDS, SYNTH_ANNOTATORS, SynthVQADataset,
    answer_space, question_texts, synth_vqa)
from tracer_plugins.datasets.synth.world import (
    BACKGROUNDS, CHUNK, CLASSNAMES, COLOURS, DOMAIN_BACKGROUNDS, DOMAINS, PALETTE, POSITIONS,
    RENDER_DOMAINS, SIZES, TEMPLATES, VALIDATION_DOMAINS)

__all__ = [
    "BACKGROUNDS", "CHUNK", "CLASSNAMES", "COLOURS", "DEFAULT_CAPTION_SIZE", "DEFAULT_MIX",
    "DEFAULT_SIZE", "DEFAULT_VQA_SIZE", "DOMAINS", "DOMAIN_ANSWERS", "DOMAIN_BACKGROUNDS",
    "MAX_CAPTIONS", "MAX_GROUP", "NARROW_COLOURS", "PALETTE", "POSITIONS", "QUESTION_KINDS",
    "RENDER_DOMAINS", "SIZES", "SYNTH_ANNOTATORS", "SynthCaptionDataset", "SynthDataset",
    "SynthVQADataset", "TEMPLATES", "VALIDATION_DOMAINS", "answer_space", "caption_sets",
    "question_texts", "render", "render_groups", "split_seed", "synth_captions",
    "synth_photo_narrow", "synth_vqa", "synth_world",
]
