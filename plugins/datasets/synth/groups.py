"""Group images for counting questions: 1-3 copies of one shape in one colour
(:func:`render_groups`).

Same determinism and caching as :func:`~tracer_plugins.datasets.synth.rendering.render`, from
a separate seed stream, so group images never repeat the single-shape images of the same seed.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tracer_plugins.datasets.synth.painters import PAINTERS
from tracer_plugins.datasets.synth.rendering import (
    Chunk, check_render, run_chunks, sample_attributes)
from tracer_plugins.datasets.synth.shapes import placed_distance
from tracer_plugins.datasets.synth.world import (
    CHUNK, CLASSNAMES, COLOURLESS, COLOURS, DOMAIN_BACKGROUNDS, DOMAIN_ID, F32, ROTATION_RANGE)

MAX_GROUP = 3
# Circumradius / side. The triangle, the widest shape, reaches 1.26 circumradii from its centre,
# so with the jitter below two copies in neighbouring cells of the 2x2 grid never overlap; only a
# thick outline (cartoon, sketch) at 32 px may touch its neighbour's, about once in 700 images.
_GROUP_RADIUS = 0.17
_GROUP_JITTER = 0.02
_GROUP_STREAM = int.from_bytes(b"groups", "little")  # seed-sequence tag of the group images


def _group_layout(rng: np.random.Generator, side: int) -> tuple[np.ndarray, ...]:
    """One chunk's copy counts (1..3, each a third of the chunk) and, per copy slot, a centre in
    its own cell of a 2x2 grid (so copies never touch) and a rotation."""
    count = rng.permutation(np.arange(CHUNK) % MAX_GROUP) + 1
    cells = np.argsort(rng.random((CHUNK, 4)), axis=1)[:, :MAX_GROUP]
    jitter = rng.uniform(-1, 1, size=(CHUNK, MAX_GROUP, 2)).astype(F32)
    rotation = rng.uniform(-ROTATION_RANGE, ROTATION_RANGE, size=(CHUNK, MAX_GROUP)).astype(F32)
    grid = np.stack([cells % 2, cells // 2], axis=-1).astype(F32)
    centre = (0.25 + 0.5 * grid) * side + jitter * F32(_GROUP_JITTER * side)
    return count, centre, rotation


def _render_group_chunk(domain: str, seed: int, index: int, side: int) -> Chunk:
    """Chunk ``index`` of group images: each shows ``count`` copies of one shape in one colour.

    The copies' distance fields are joined by their minimum (the union of the shapes), and each
    pixel keeps the shape-local coordinates of its nearest copy, so every painter draws a group
    exactly as it draws one shape: same fill, outline, shading and background.
    """
    seqs = np.random.SeedSequence([seed, DOMAIN_ID[domain], _GROUP_STREAM, index]).spawn(3)
    attr_rng, layout_rng, pixel_rng = (np.random.default_rng(q) for q in seqs)
    attrs = sample_attributes(attr_rng, tuple(range(len(COLOURS))),
                              tuple(range(len(DOMAIN_BACKGROUNDS[domain]))))
    count, centre, rotation = _group_layout(layout_rng, side)
    radius = np.full(CHUNK, _GROUP_RADIUS * side, dtype=F32)
    copies = [placed_distance(attrs["label"], centre[:, c], rotation[:, c], radius, side)
              for c in range(MAX_GROUP)]
    dist, u, v = (np.stack([copy[k] for copy in copies]) for k in range(3))
    dist[np.arange(MAX_GROUP)[:, None] >= count[None, :]] = np.inf  # slots beyond the count
    nearest = dist.argmin(axis=0)[None]
    dist, u, v = (np.take_along_axis(a, nearest, axis=0)[0] for a in (dist, u, v))
    attrs["count"] = count
    image = PAINTERS[domain](pixel_rng, attrs, dist, u, v, side)
    return Chunk((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), attrs, [])


@functools.lru_cache(maxsize=8)
def _render_groups_cached(domain: str, n: int, seed: int,
                          side: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    parts = run_chunks(functools.partial(_render_group_chunk, domain, seed, side=side), n)
    images = np.concatenate([p.images for p in parts])[:n]
    attrs = {key: np.concatenate([p.attrs[key] for p in parts])[:n] for key in parts[0].attrs}
    for array in (images, *attrs.values()):
        array.flags.writeable = False
    return images, attrs


def render_groups(domain: str, n: int, seed: int,
                  image_size: int = 32) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Render ``n`` group images of ``domain``: 1-3 copies (a third each) of one shape, one
    colour, each copy in its own cell of a 2x2 grid with its own rotation.

    Returns a read-only uint8 array N×H×W×3 and one dict per image (domain, label, shape, colour,
    count, background). Same determinism and caching as :func:`render`, from a separate stream:
    group images never repeat the single-shape images of the same seed.
    """
    check_render(domain, n, image_size)
    if n == 0:
        return np.zeros((0, image_size, image_size, 3), np.uint8), []
    images, attrs = _render_groups_cached(domain, n, seed, image_size)
    return images, [_describe_group(domain, attrs, i) for i in range(n)]


def _describe_group(domain: str, attrs: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    return {"domain": domain, "label": int(attrs["label"][i]),
            "shape": CLASSNAMES[attrs["label"][i]],
            "colour": None if domain in COLOURLESS else COLOURS[attrs["colour"][i]],
            "count": int(attrs["count"][i]),
            "background": DOMAIN_BACKGROUNDS[domain][attrs["background"][i]]}
