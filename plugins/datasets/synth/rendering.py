"""Rendering single-shape images: seeded attribute draws, chunked rendering, caching and
:func:`render`.

Generation is deterministic: chunk ``k`` of ``render(domain, n, seed)`` depends only on
``(seed, domain, k)``, so results do not depend on request order and a longer request extends a
shorter one. Renders are cached in-process (eval sets are reused) and returned read-only.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from tracer_plugins.datasets.synth.captions import render_caption
from tracer_plugins.datasets.synth.painters import PAINTERS
from tracer_plugins.datasets.synth.shapes import shape_distance
from tracer_plugins.datasets.synth.world import (
    CHUNK, CLASSNAMES, COLOURLESS, COLOURS, DOMAIN_BACKGROUNDS, DOMAIN_ID, F32, POSITIONS,
    RENDER_DOMAINS, ROTATION_RANGE, SIZES)


def sample_attributes(rng: np.random.Generator, colours: Sequence[int],
                      backgrounds: Sequence[int]) -> dict[str, np.ndarray]:
    """One chunk's semantic attributes, each drawn independently of the class.

    Always draws exactly ``CHUNK`` of everything, so a chunk's content never depends on how many
    of its images a caller keeps.
    """
    n = CHUNK
    return {
        "label": rng.permutation(np.arange(n) % len(CLASSNAMES)),
        "colour": np.asarray(colours)[rng.integers(len(colours), size=n)],
        "size": rng.integers(len(SIZES), size=n),
        "position": rng.integers(len(POSITIONS), size=n),
        "jitter": rng.uniform(-1, 1, size=(n, 2)).astype(F32),
        "rotation": rng.uniform(-ROTATION_RANGE, ROTATION_RANGE, size=n).astype(F32),
        "background": np.asarray(backgrounds)[rng.integers(len(backgrounds), size=n)],
        "caption": rng.random(size=(n, 6)),
    }


class Chunk(NamedTuple):
    """One rendered chunk: ``CHUNK`` images, their raw attributes and their captions."""

    images: np.ndarray
    attrs: dict[str, np.ndarray]
    captions: list[str]


_BIAS_STREAM = int.from_bytes(b"bias", "little")  # seed-sequence tag of the colour-bias draws


def class_colours(colours: Sequence[int]) -> np.ndarray:
    """The colour each class takes under a colour bias: class ``i`` gets ``colours[i % k]``."""
    return np.asarray(colours)[np.arange(len(CLASSNAMES)) % len(colours)]


def bias_colours(attrs: dict[str, np.ndarray], domain: str, seed: int, index: int,
                 colours: Sequence[int], colour_bias: float) -> None:
    """Give each image of the chunk its class's colour (:func:`class_colours`) with probability
    ``colour_bias``, in place; the other images keep their independent draw.

    The draws come from a stream of their own, so a chunk's other attributes and pixels are the
    same at every bias, and a bias of 0 changes nothing.
    """
    if colour_bias <= 0:
        return
    rng = np.random.default_rng([seed, DOMAIN_ID[domain], _BIAS_STREAM, index])
    biased = rng.random(CHUNK) < colour_bias
    attrs["colour"] = np.where(biased, class_colours(colours)[attrs["label"]], attrs["colour"])


def _render_chunk(domain: str, seed: int, index: int, side: int,
                  colours: tuple[int, ...], backgrounds: tuple[int, ...],
                  colour_bias: float = 0.0) -> Chunk:
    # Attributes and pixels get separate streams, so attributes do not depend on the resolution.
    attr_seq, pixel_seq = np.random.SeedSequence([seed, DOMAIN_ID[domain], index]).spawn(2)
    attrs = sample_attributes(np.random.default_rng(attr_seq), colours, backgrounds)
    bias_colours(attrs, domain, seed, index, colours, colour_bias)
    dist, u, v = shape_distance(attrs, side)
    image = PAINTERS[domain](np.random.default_rng(pixel_seq), attrs, dist, u, v, side)
    images = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Chunk(images, attrs, [render_caption(domain, attrs, i) for i in range(CHUNK)])


def _indices(names: Sequence[str] | None, allowed: Sequence[str], what: str) -> tuple[int, ...]:
    if names is None:
        return tuple(range(len(allowed)))
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown or '(empty list)'}; "
                         f"allowed: {', '.join(allowed)}")
    return tuple(allowed.index(name) for name in dict.fromkeys(names))


def run_chunks(work: Callable[[int], Chunk], n: int) -> list[Chunk]:
    """``work(k)`` for every chunk ``k`` that holds part of the first ``n`` images."""
    chunks = -(-n // CHUNK)
    # numpy releases the GIL in its kernels, so threads overlap well on independent chunks.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1, chunks))) as pool:
        return list(pool.map(work, range(chunks)))


@functools.lru_cache(maxsize=8)
def _render_cached(domain: str, n: int, seed: int, side: int, colours: tuple[int, ...],
                   backgrounds: tuple[int, ...], colour_bias: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, np.ndarray]]:
    work = functools.partial(_render_chunk, domain, seed, side=side, colours=colours,
                             backgrounds=backgrounds, colour_bias=colour_bias)
    parts = run_chunks(work, n)
    images = np.concatenate([p.images for p in parts])[:n]
    attrs = {key: np.concatenate([p.attrs[key] for p in parts])[:n] for key in parts[0].attrs}
    captions = [c for p in parts for c in p.captions][:n]
    labels = attrs["label"].astype(np.int64)
    for array in (images, labels, *attrs.values()):
        array.flags.writeable = False
    return images, labels, captions, attrs


def check_render(domain: str, n: int, image_size: int, colour_bias: float = 0.0) -> None:
    """Reject an unknown domain, a negative count, an image side under 8 pixels, or a colour
    bias outside [0, 1] or on a domain without colour."""
    if domain not in RENDER_DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; allowed: {', '.join(RENDER_DOMAINS)}")
    if n < 0 or image_size < 8:
        raise ValueError(f"need n >= 0 and image_size >= 8, got n={n}, image_size={image_size}")
    if not 0 <= colour_bias <= 1:
        raise ValueError(f"colour_bias must lie in [0, 1], got {colour_bias}")
    if colour_bias and domain in COLOURLESS:
        raise ValueError(f"domain {domain!r} draws no colour, so it takes no colour_bias")


def render_arrays(domain: str, n: int, seed: int, image_size: int,
                  colours: Sequence[str] | None = None,
                  backgrounds: Sequence[str] | None = None, colour_bias: float = 0.0):
    """:func:`render`'s cached arrays for ``n >= 1``: images, labels, captions, raw attributes."""
    colour_ids = _indices(colours, COLOURS, "colours")
    background_ids = _indices(backgrounds, DOMAIN_BACKGROUNDS[domain], f"{domain} backgrounds")
    return _render_cached(domain, n, seed, image_size, colour_ids, background_ids,
                          float(colour_bias))


def render(domain: str, n: int, seed: int, image_size: int = 32,
           colours: Sequence[str] | None = None, backgrounds: Sequence[str] | None = None,
           return_attributes: bool = False, colour_bias: float = 0.0):
    """Render ``n`` images of ``domain`` (one of :data:`RENDER_DOMAINS`) from ``seed``.

    Returns ``(images, labels, captions)``: a read-only uint8 array N×H×W×3, read-only int64
    labels (indices into :data:`CLASSNAMES`) and a list of captions; with ``return_attributes``
    a fourth item, one dict per image (domain, label, shape, colour, size, position, rotation,
    background). ``colours`` / ``backgrounds`` restrict the draws to those names (backgrounds
    must belong to the domain: :data:`DOMAIN_BACKGROUNDS`). ``colour_bias`` gives each image
    its class's colour with that probability (:func:`bias_colours`), as a dataset whose classes
    come in typical colours does. Results are cached per argument set.
    """
    check_render(domain, n, image_size, colour_bias)
    if n == 0:
        empty = np.zeros((0, image_size, image_size, 3), np.uint8)
        return (empty, np.zeros(0, np.int64), [], *([[]] if return_attributes else []))
    images, labels, captions, attrs = render_arrays(domain, n, seed, image_size,
                                                    colours, backgrounds, colour_bias)
    if not return_attributes:
        return images, labels, list(captions)
    return images, labels, list(captions), [_describe(domain, attrs, i) for i in range(n)]


def _describe(domain: str, attrs: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """The human-readable attributes of image ``i`` (colour is None where it is not drawn)."""
    return {
        "domain": domain, "label": int(attrs["label"][i]),
        "shape": CLASSNAMES[attrs["label"][i]],
        "colour": None if domain in COLOURLESS else COLOURS[attrs["colour"][i]],
        "size": SIZES[attrs["size"][i]], "position": POSITIONS[attrs["position"][i]],
        "rotation": float(attrs["rotation"][i]),
        "background": DOMAIN_BACKGROUNDS[domain][attrs["background"][i]],
    }
