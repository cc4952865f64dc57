"""What the world's images are called: the caption each render returns, and the further
distinct captions of ``synth-captions`` (:func:`caption_sets`).

Captions are drawn from uniforms that come with the attributes (the render caption) or from their
own seeded stream (the extra captions), never from the pixels, so the text of an image does not
depend on its resolution.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from tracer_plugins.datasets.synth.world import (
    CHUNK, CLASSNAMES, COLOURLESS, COLOURS, DOMAIN_BACKGROUNDS, DOMAIN_ID, POSITIONS, SIZES)

_POSITION_PHRASE = {"top left": "at the top left", "top": "at the top",
                    "top right": "at the top right", "left": "on the left",
                    "center": "in the center", "right": "on the right",
                    "bottom left": "at the bottom left", "bottom": "at the bottom",
                    "bottom right": "at the bottom right"}
_BACKGROUND_PHRASE = {"plain": "on a plain background", "gradient": "on a gradient background",
                      "texture": "on a textured background", "stripes": "on a striped background",
                      "dots": "on a dotted background"}


def article(word: str) -> str:
    """The indefinite article before ``word`` ("an arrow", "a star")."""
    return "an" if word[0] in "aeiou" else "a"


def render_caption(domain: str, attrs: dict[str, np.ndarray], i: int) -> str:
    """Caption of image ``i``: its caption uniforms pick the attributes named and their order."""
    draw = attrs["caption"][i]
    prefix = {"photo": "a photo of", "sketch": "a sketch of", "cartoon": "a cartoon of",
              "noisy": "a noisy photo of" if draw[0] < 0.5 else "a blurry photo of",
              "mono": "a monochrome photo of" if draw[0] < 0.5 else "a tinted photo of"}[domain]
    words = [SIZES[attrs["size"][i]]] if draw[1] < 0.5 else []
    if domain not in COLOURLESS and draw[2] < 0.6:  # no colour in sketches or mono prints
        words.append(COLOURS[attrs["colour"][i]])
    words.append(CLASSNAMES[attrs["label"][i]])
    tail = []
    if draw[3] < 0.3:
        tail.append(_POSITION_PHRASE[POSITIONS[attrs["position"][i]]])
    background = DOMAIN_BACKGROUNDS[domain][attrs["background"][i]]
    if background in _BACKGROUND_PHRASE and draw[4] < (0.15 if domain == "noisy" else 0.3):
        tail.append(_BACKGROUND_PHRASE[background])
    if draw[5] < 0.5:
        tail.reverse()
    return " ".join([prefix, article(words[0]), *words, *tail])


# Nouns for each domain's look in the extra captions of synth-captions.
_DOMAIN_NOUNS = {"photo": ("photo", "picture", "photograph"),
                 "sketch": ("sketch", "pencil drawing", "drawing"),
                 "cartoon": ("cartoon", "cartoon drawing", "clip art picture"),
                 "noisy": ("noisy photo", "blurry photo", "grainy photo"),
                 "mono": ("monochrome photo", "tinted photo", "single-colour photo")}
MAX_CAPTIONS = 8
# Draws tried per image for its extra captions; a duplicate of an earlier caption is skipped.
_CAPTION_TRIES = 4 * MAX_CAPTIONS
_CAPTION_STREAM = int.from_bytes(b"captions", "little")  # seed-sequence tag of the extra captions


def _caption_variant(domain: str, attrs: dict[str, np.ndarray], i: int, draw: np.ndarray) -> str:
    """Another caption of image ``i``, from eight uniforms: the attributes named (more of them,
    more often, than in :func:`render_caption`), their order, a noun for the domain and one of four
    sentence frames."""
    words = [SIZES[attrs["size"][i]]] if draw[1] < 0.6 else []
    if domain not in COLOURLESS and draw[2] < 0.8:
        words.append(COLOURS[attrs["colour"][i]])
    words.append(CLASSNAMES[attrs["label"][i]])
    tail = []
    if draw[3] < 0.6:
        tail.append(_POSITION_PHRASE[POSITIONS[attrs["position"][i]]])
    background = DOMAIN_BACKGROUNDS[domain][attrs["background"][i]]
    if background in _BACKGROUND_PHRASE and draw[4] < 0.5:
        tail.append(_BACKGROUND_PHRASE[background])
    if draw[5] < 0.5:
        tail.reverse()
    thing = " ".join([article(words[0]), *words, *tail])
    nouns = _DOMAIN_NOUNS[domain]
    noun = nouns[min(int(draw[7] * len(nouns)), len(nouns) - 1)]
    frame = min(int(draw[6] * 4), 3)
    if frame == 0:
        return f"{article(noun)} {noun} of {thing}"
    if frame == 1:
        return f"{article(noun)} {noun} showing {thing}"
    if frame == 2:
        return f"there is {thing} in this {noun}"
    return f"{thing} in {article(noun)} {noun}"


def caption_sets(domain: str, attrs: dict[str, np.ndarray], first: Sequence[str], seed: int,
                 per_image: int) -> list[list[str]]:
    """``per_image`` distinct captions of each rendered image; the first is its render caption.

    The extra captions come from their own uniforms, seeded by (seed, domain, "captions", chunk)
    and independent of the pixels, drawn in fixed-size blocks per chunk: asking for more captions
    per image or more images extends, never changes, what a smaller request returned. Should
    :data:`_CAPTION_TRIES` draws give too few distinct texts, the image keeps fewer captions.
    """
    if not 1 <= per_image <= MAX_CAPTIONS:
        raise ValueError(f"per_image must be in 1..{MAX_CAPTIONS}, got {per_image}")
    out: list[list[str]] = []
    for start in range(0, len(first), CHUNK):
        seq = np.random.SeedSequence([seed, DOMAIN_ID[domain], _CAPTION_STREAM, start // CHUNK])
        draws = np.random.default_rng(seq).random((CHUNK, _CAPTION_TRIES, 8))
        for i in range(start, min(len(first), start + CHUNK)):
            captions = [first[i]]
            for draw in draws[i - start]:
                if len(captions) == per_image:
                    break
                text = _caption_variant(domain, attrs, i, draw)
                if text not in captions:
                    captions.append(text)
            out.append(captions)
    return out
