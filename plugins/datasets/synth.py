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
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tracer_cli import hookimpl
from tracer_cli.contracts import DatasetBundle
from tracer_cli.errors import RecipeError
from tracer_cli.options import Options

CLASSNAMES = ("circle", "square", "triangle", "star", "cross",
              "ring", "diamond", "hexagon", "arrow", "heart")
DOMAINS = ("photo", "sketch", "cartoon", "noisy")
# Domains used only to choose hyperparameters: renderable, but never mixed into synth-world.
VALIDATION_DOMAINS = ("mono",)
RENDER_DOMAINS = DOMAINS + VALIDATION_DOMAINS
# Seed stream of each domain; the first four are positions in DOMAINS, as they always were.
_DOMAIN_ID = {domain: i for i, domain in enumerate(RENDER_DOMAINS)}
# Domains whose pixels carry no colour, so captions and questions never mention one.
_COLOURLESS = ("sketch", "mono")
PALETTE = {
    "red": (0.86, 0.12, 0.12), "green": (0.16, 0.66, 0.20), "blue": (0.14, 0.30, 0.88),
    "yellow": (0.96, 0.86, 0.10), "purple": (0.56, 0.20, 0.72), "orange": (0.97, 0.55, 0.08),
    "cyan": (0.10, 0.80, 0.86), "pink": (0.97, 0.50, 0.74),
}
COLOURS = tuple(PALETTE)
BACKGROUNDS = ("plain", "gradient", "texture")
# Which background kinds each domain draws; photo and noisy share the photographic ones.
DOMAIN_BACKGROUNDS = {"photo": BACKGROUNDS, "noisy": BACKGROUNDS, "mono": BACKGROUNDS,
                      "sketch": ("paper",), "cartoon": ("stripes", "dots")}
SIZES = ("small", "medium", "large")
# Circumradius as a fraction of the image side; "small" is still ~8 px at 32 px.
_SIZE_FRACTION = np.array([0.25, 0.32, 0.39], dtype=np.float32)
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
_POSITION_PHRASE = {"top left": "at the top left", "top": "at the top",
                    "top right": "at the top right", "left": "on the left",
                    "center": "in the center", "right": "on the right",
                    "bottom left": "at the bottom left", "bottom": "at the bottom",
                    "bottom right": "at the bottom right"}
_BACKGROUND_PHRASE = {"plain": "on a plain background", "gradient": "on a gradient background",
                      "texture": "on a textured background", "stripes": "on a striped background",
                      "dots": "on a dotted background"}
ROTATION_RANGE = 60.0  # degrees either way: hearts and arrows stay readable at any draw
TEMPLATES = ("a photo of a {}.", "a sketch of a {}.", "a cartoon of a {}.",
             "a noisy photo of a {}.", "a blurry photo of a {}.", "a {}.")
DEFAULT_SIZE = {"train": 20000, "test": 5000}
DEFAULT_MIX = {"photo": 0.7, "sketch": 0.1, "cartoon": 0.1, "noisy": 0.1}
CHUNK = 250  # a multiple of 10, so every chunk holds each class exactly 25 times
_SPLIT_ID = {"train": 0, "test": 1}
_F = np.float32


# --- signed distances, in units of the shape's circumradius (negative inside) -----------------

def _sd_box(u, v, bx, by):
    qx, qy = np.abs(u) - bx, np.abs(v) - by
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


def _sd_circle(u, v):
    return np.sqrt(u * u + v * v) - 0.88


def _sd_square(u, v):
    return _sd_box(u, v, 0.68, 0.68)


def _sd_triangle(u, v):
    # Equilateral, apex up, shifted down so its bounding box (not its centroid) is centred.
    k, r = math.sqrt(3.0), 1.1 * math.sqrt(3.0) / 2
    px, py = np.abs(u) - r, v + 0.28 + r / k
    fold = px + k * py > 0
    px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * r, 0)
    return -np.sqrt(px * px + py * py) * np.sign(py)


def _sd_star(u, v, points=5, inner=0.45):
    # Fold the plane into half a spike, then measure to the edge from tip (1, 0) to inner corner.
    half = math.pi / points
    angle = np.mod(np.arctan2(u, v) + half, 2 * half) - half
    length = np.sqrt(u * u + v * v)
    px, py = length * np.cos(angle) - 1.0, length * np.abs(np.sin(angle))
    ex, ey = inner * math.cos(half) - 1.0, inner * math.sin(half)
    t = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0, 1)
    dist = np.sqrt((px - ex * t) ** 2 + (py - ey * t) ** 2)
    return dist * np.sign(px * ey - py * ex)


def _sd_cross(u, v):
    return np.minimum(_sd_box(u, v, 0.92, 0.3), _sd_box(u, v, 0.3, 0.92))


def _sd_ring(u, v):
    return np.abs(np.sqrt(u * u + v * v) - 0.7) - 0.25


def _sd_rhombus(u, v, bx=0.62, by=1.0):
    px, py = np.abs(u), np.abs(v)
    h = np.clip(((bx - 2 * px) * bx - (by - 2 * py) * by) / (bx * bx + by * by), -1, 1)
    dx, dy = px - 0.5 * bx * (1 - h), py - 0.5 * by * (1 + h)
    return np.sqrt(dx * dx + dy * dy) * np.sign(px * by + py * bx - bx * by)


def _sd_hexagon(u, v, apothem=0.84):
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    px, py = np.abs(u), np.abs(v)
    dot = np.minimum(kx * px + ky * py, 0)
    px, py = px - 2 * dot * kx, py - 2 * dot * ky
    px, py = px - np.clip(px, -kz * apothem, kz * apothem), py - apothem
    return np.sqrt(px * px + py * py) * np.sign(py)


def _sd_isosceles(px, py, qx, qy):
    """Isosceles triangle with its apex at the origin and its base at ``py = qy > 0``."""
    px = np.abs(px)
    t = np.clip((px * qx + py * qy) / (qx * qx + qy * qy), 0, 1)
    ax, ay = px - qx * t, py - qy * t
    bx, by = px - qx * np.clip(px / qx, 0, 1), py - qy
    dist = np.minimum(ax * ax + ay * ay, bx * bx + by * by)
    side = np.minimum(-(px * qy - py * qx), -(py - qy))
    return -np.sqrt(dist) * np.sign(side)


def _sd_arrow(u, v):
    head = _sd_isosceles(v, 0.95 - u, 0.7, 0.95)
    return np.minimum(_sd_box(u + 0.4, v, 0.52, 0.25), head)


def _sd_heart(u, v, scale=1.55):
    x, y = np.abs(u) / scale, v / scale + 0.55
    lobe = np.sqrt((x - 0.25) ** 2 + (y - 0.75) ** 2) - math.sqrt(2.0) / 4
    t = 0.5 * np.maximum(x + y, 0)
    tip = np.sqrt(np.minimum(x * x + (y - 1) ** 2, (x - t) ** 2 + (y - t) ** 2)) * np.sign(x - y)
    return np.where(x + y > 1, lobe, tip) * scale


_SHAPES: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _sd_circle, _sd_square, _sd_triangle, _sd_star, _sd_cross,
    _sd_ring, _sd_rhombus, _sd_hexagon, _sd_arrow, _sd_heart)


# --- attributes ---------------------------------------------------------------------------------

def _sample_attributes(rng: np.random.Generator, colours: Sequence[int],
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
        "jitter": rng.uniform(-1, 1, size=(n, 2)).astype(_F),
        "rotation": rng.uniform(-ROTATION_RANGE, ROTATION_RANGE, size=n).astype(_F),
        "background": np.asarray(backgrounds)[rng.integers(len(backgrounds), size=n)],
        "caption": rng.random(size=(n, 6)),
    }


def _shape_distance(attrs: dict[str, np.ndarray], side: int) -> tuple[np.ndarray, ...]:
    """Signed distance to each image's shape in pixels, and the shape-local coordinates."""
    radius = _SIZE_FRACTION[attrs["size"]] * side
    grid = np.stack([attrs["position"] % 3, attrs["position"] // 3], axis=1).astype(_F) - 1
    # Keep the shape inside the frame whatever its size; jitter moves it within its grid cell.
    reach = np.maximum(0.5 * side - radius - 0.04 * side, 0)[:, None]
    centre = 0.5 * side + grid * reach + attrs["jitter"] * 0.06 * side
    return _placed_distance(attrs["label"], centre, attrs["rotation"], radius, side)


def _placed_distance(labels: np.ndarray, centre: np.ndarray, rotation: np.ndarray,
                     radius: np.ndarray, side: int) -> tuple[np.ndarray, ...]:
    """Signed distance (pixels) to shape ``labels[i]`` at pixel ``centre[i]`` (x, y), rotated by
    ``rotation[i]`` degrees with circumradius ``radius[i]`` pixels, and the shape-local
    coordinates ``u, v`` (in circumradii) of every pixel."""
    theta = np.deg2rad(rotation).astype(_F)
    coords = np.arange(side, dtype=_F) + 0.5
    dx = coords[None, None, :] - centre[:, 0, None, None]
    dy = centre[:, 1, None, None] - coords[None, :, None]  # y up, so "top" means top
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    inv = (1 / radius)[:, None, None]
    u, v = (dx * cos + dy * sin) * inv, (dy * cos - dx * sin) * inv
    dist = np.empty_like(u)
    for label, sdf in enumerate(_SHAPES):
        idx = np.flatnonzero(labels == label)
        if idx.size:
            dist[idx] = sdf(u[idx], v[idx])
    return dist * radius[:, None, None], u, v


# --- pixel helpers ------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, n: int, side: int, cells: int,
                  channels: int = 1) -> np.ndarray:
    """Band-limited noise (about unit variance): a coarse random grid, bilinearly upsampled."""
    coarse = rng.standard_normal((n, channels, cells + 1, cells + 1)).astype(_F)
    pos = (np.arange(side, dtype=_F) + 0.5) / side * cells
    lo = np.minimum(pos.astype(int), cells - 1)
    frac = pos - lo
    interp = np.zeros((side, cells + 1), dtype=_F)
    interp[np.arange(side), lo] = 1 - frac
    interp[np.arange(side), lo + 1] = frac
    return np.moveaxis(interp @ coarse @ interp.T, 1, -1)


def _over(image: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite ``colour`` (N×3 or N×H×W×3) over ``image`` with coverage ``alpha``, N×H×W."""
    if colour.ndim == 2:
        colour = colour[:, None, None, :]
    return image + alpha[..., None] * (colour - image)


def _coverage(dist: np.ndarray) -> np.ndarray:
    # A one-pixel linear ramp across the edge approximates box-filtered coverage.
    return np.clip(0.5 - dist, 0, 1)


def _blur(image: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Separable Gaussian blur, 5 taps, with a different sigma per image."""
    taps = np.arange(-2, 3, dtype=_F)
    weights = np.exp(-taps[None, :] ** 2 / (2 * sigma[:, None] ** 2))
    weights /= weights.sum(axis=1, keepdims=True)
    side = image.shape[1]
    for axis in (1, 2):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (2, 2)
        padded = np.pad(image, pad, mode="edge")
        out = np.zeros_like(image)
        for k in range(5):
            window = padded[:, k:k + side] if axis == 1 else padded[:, :, k:k + side]
            out += weights[:, k, None, None, None] * window
        image = out
    return image


def _segments(rng: np.random.Generator, n: int, side: int, slots: int,
              length: tuple[float, float], keep: float = 1.0) -> np.ndarray:
    """Distance (pixels) from each pixel to the nearest of up to ``slots`` random segments.

    Each slot holds a segment with probability ``keep``; an empty slot is parked far off-image.
    """
    start = rng.uniform(0, side, size=(n, slots, 2)).astype(_F)
    start = np.where(rng.random((n, slots, 1)) < keep, start, _F(-1e4))
    angle = rng.uniform(0, 2 * np.pi, size=(n, slots)).astype(_F)
    span = rng.uniform(*length, size=(n, slots)).astype(_F) * side
    delta = np.stack([np.cos(angle), np.sin(angle)], -1) * span[..., None]
    coords = np.arange(side, dtype=_F) + 0.5
    px = coords[None, None, None, :] - start[..., 0, None, None]
    py = coords[None, None, :, None] - start[..., 1, None, None]
    bx, by = delta[..., 0, None, None], delta[..., 1, None, None]
    h = np.clip((px * bx + py * by) / (bx * bx + by * by + 1e-6), 0, 1)
    return np.sqrt((px - bx * h) ** 2 + (py - by * h) ** 2).min(axis=1)


def _contrasting(rng: np.random.Generator, colour: np.ndarray, fill: np.ndarray,
                 minimum: float) -> np.ndarray:
    """Replace background colours too close to the fill, so no shape vanishes into its ground."""
    close = np.linalg.norm(colour - fill, axis=-1) < minimum
    flipped = np.clip(1 - fill, 0.05, 0.95) * 0.8 + 0.1 * rng.random(fill.shape, dtype=_F)
    return np.where(close[:, None], flipped, colour)


# --- domains ------------------------------------------------------------------------------------

def _photo_background(rng: np.random.Generator, kind: np.ndarray, fill: np.ndarray,
                      side: int, contrast: float) -> np.ndarray:
    """Plain, gradient or textured grounds; muted so the saturated fill stands out."""
    n = len(kind)
    muted = lambda c: 0.55 * c + 0.45 * rng.uniform(0.2, 0.8, size=(n, 1)).astype(_F)
    first = _contrasting(rng, muted(rng.random((n, 3), dtype=_F)), fill, contrast)
    second = _contrasting(rng, muted(rng.random((n, 3), dtype=_F)), fill, contrast)
    angle = rng.uniform(0, 2 * np.pi, size=n).astype(_F)
    coords = (np.arange(side, dtype=_F) + 0.5) / side - 0.5
    ramp = (coords[None, None, :] * np.cos(angle)[:, None, None]
            + coords[None, :, None] * np.sin(angle)[:, None, None]) * 1.2 + 0.5
    ramp = np.where((kind == BACKGROUNDS.index("gradient"))[:, None, None],
                    np.clip(ramp, 0, 1), 0)
    image = _over(np.broadcast_to(first[:, None, None, :], (n, side, side, 3)), second, ramp)
    grain = (_smooth_noise(rng, n, side, 4, 3) * 0.09 + _smooth_noise(rng, n, side, 10, 3) * 0.06)
    textured = (kind == BACKGROUNDS.index("texture"))[:, None, None, None]
    return image + np.where(textured, grain, 0)


def _photo(rng, attrs, dist, u, v, side, noisy=False):
    n = len(dist)
    fill = np.array(list(PALETTE.values()), dtype=_F)[attrs["colour"]]
    fill = np.clip(fill + rng.uniform(-0.05, 0.05, size=(n, 3)).astype(_F), 0, 1)
    # Noise drowns colour differences first, so the noisy domain needs a bigger colour gap.
    image = _photo_background(rng, attrs["background"], fill, side, 0.75 if noisy else 0.5)
    if not noisy:  # distractors drawn before the shape, so they never hide it
        spots = _segments(rng, n, side, 3, (0.02, 0.12), keep=0.6)
        alpha = np.clip(rng.uniform(1.0, 2.2, (n, 1, 1)).astype(_F) * side / 32 - spots + 0.5, 0, 1)
        image = _over(image, rng.random((n, 3), dtype=_F), alpha)
    light = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(_F)
    shade = np.clip(1 + 0.2 * (u * np.cos(light) + v * np.sin(light)), 0.7, 1.25)
    image = _over(image, fill[:, None, None, :] * shade[..., None], _coverage(dist))
    return image + 0.025 * rng.standard_normal(image.shape, dtype=_F)


def _sketch(rng, attrs, dist, u, v, side):
    n, scale = len(dist), side / 32
    paper = rng.uniform(0.88, 0.98, size=(n, 1)).astype(_F) + np.array([0.01, 0, -0.03], _F)
    image = np.broadcast_to(paper[:, None, None, :], (n, side, side, 3))
    image = image + _smooth_noise(rng, n, side, 6) * 0.02
    lead = rng.uniform(0.15, 0.45, size=(n, 1)).astype(_F).repeat(3, 1)
    width = rng.uniform(0.9, 1.5, size=(n, 1, 1)).astype(_F) * scale
    for opacity in (1.0, 0.5):  # a firm stroke, then a fainter second pass beside it
        wobble = _smooth_noise(rng, n, side, 5)[..., 0] * 0.5 * scale
        pressure = 0.7 + 0.3 * np.clip(_smooth_noise(rng, n, side, 8)[..., 0], -1, 1)
        ink = np.clip(width / 2 + 0.5 - np.abs(dist + wobble), 0, 1) * pressure * opacity
        image = _over(image, lead, ink)
    hatch = np.sin((u + v) * 9.0) > 0.55
    hatched = rng.random((n, 1, 1)) < 0.35
    image = _over(image, lead, _coverage(dist) * (hatch & hatched) * 0.35)
    strays = _segments(rng, n, side, 4, (0.15, 0.45), keep=0.6)
    image = _over(image, lead, np.clip(0.9 * scale - strays, 0, 1) * 0.45)
    return image + 0.015 * rng.standard_normal(image.shape, dtype=_F)


def _cartoon_background(rng, kind, side):
    n, scale = len(kind), side / 32
    pastel = lambda: 0.45 * rng.random((n, 3), dtype=_F) + 0.55
    first, second = pastel(), pastel() * 0.85
    period = rng.uniform(4, 8, size=(n, 1, 1)).astype(_F) * scale
    angle = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(_F)
    coords = np.arange(side, dtype=_F) + 0.5
    x, y = coords[None, None, :], coords[None, :, None]
    along = (x * np.cos(angle) + y * np.sin(angle)) / period
    stripes = np.clip(np.sin(2 * np.pi * along) * 3 + 0.5, 0, 1)
    fx = np.mod(x / period, 1) - 0.5
    fy = np.mod(y / period, 1) - 0.5
    dots = np.clip(0.28 * period - np.sqrt(fx * fx + fy * fy) * period + 0.5, 0, 1)
    is_dots = (kind == DOMAIN_BACKGROUNDS["cartoon"].index("dots"))[:, None, None]
    image = np.broadcast_to(first[:, None, None, :], (n, side, side, 3))
    return _over(image, second, np.where(is_dots, dots, stripes))


def _cartoon(rng, attrs, dist, u, v, side):
    n = len(dist)
    image = _cartoon_background(rng, attrs["background"], side)
    fill = np.array(list(PALETTE.values()), dtype=_F)[attrs["colour"]]
    image = _over(image, fill, _coverage(dist))
    width = rng.uniform(1.6, 2.4, size=(n, 1, 1)).astype(_F) * side / 32
    ink = rng.uniform(0.02, 0.15, size=(n, 1)).astype(_F).repeat(3, 1)
    return _over(image, ink, np.clip(width / 2 + 0.5 - np.abs(dist), 0, 1))


def _noisy(rng, attrs, dist, u, v, side):
    n = len(dist)
    image = _photo(rng, attrs, dist, u, v, side, noisy=True)
    mean = image.mean(axis=(1, 2), keepdims=True)
    contrast = rng.uniform(0.45, 0.65, size=(n, 1, 1, 1)).astype(_F)
    image = mean + contrast * (image - mean)
    image = _blur(image, rng.uniform(0.5, 0.9, size=n).astype(_F) * side / 32)
    sigma = rng.uniform(0.05, 0.09, size=(n, 1, 1, 1)).astype(_F)
    return image + sigma * rng.standard_normal(image.shape, dtype=_F)


# Channel weights of black-and-white colour filters: neutral (ITU-R BT.601), red, green, blue, flat.
_MONO_FILTERS = np.array([[0.299, 0.587, 0.114], [0.7, 0.2, 0.1], [0.1, 0.7, 0.2],
                          [0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]], dtype=_F)


def _mono(rng, attrs, dist, u, v, side):
    """A photo as a tinted monochrome print: one grey channel, contrast changed, one random hue.

    Colour is gone (only a brightness survives), so this shift differs from every reported
    domain: sketches lose fill and texture, cartoons keep colour, noisy photos keep colour under
    blur and noise. Plain luminance would make about one shape in ten vanish into a ground of
    equal brightness, so each print uses the colour filter that separates shape and ground best,
    as a black-and-white photographer would.
    """
    n = len(dist)
    greys = _photo(rng, attrs, dist, u, v, side) @ _MONO_FILTERS.T  # N×H×W×filters
    inside = _coverage(dist)[..., None]
    gap = np.abs((greys * inside).sum((1, 2)) / inside.sum((1, 2))
                 - (greys * (1 - inside)).sum((1, 2)) / (1 - inside).sum((1, 2)))
    luma = np.take_along_axis(greys, gap.argmax(axis=1)[:, None, None, None], axis=3)[..., 0]
    mean = luma.mean(axis=(1, 2), keepdims=True)
    contrast = rng.uniform(0.8, 1.5, size=(n, 1, 1)).astype(_F)
    luma = np.clip(mean + contrast * (luma - mean), 0, 1)
    hue = rng.random((n, 3), dtype=_F)
    hue = hue / hue.max(axis=1, keepdims=True)  # a saturated tint at full brightness
    dark = hue * rng.uniform(0.0, 0.2, size=(n, 1)).astype(_F)
    light = 0.35 * hue + rng.uniform(0.55, 0.65, size=(n, 1)).astype(_F)
    return _over(np.broadcast_to(dark[:, None, None, :], luma.shape + (3,)), light, luma)


_PAINTERS = {"photo": _photo, "sketch": _sketch, "cartoon": _cartoon, "noisy": _noisy,
             "mono": _mono}


# --- captions -----------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _caption(domain: str, attrs: dict[str, np.ndarray], i: int) -> str:
    """Caption of image ``i``: its caption uniforms pick the attributes named and their order."""
    draw = attrs["caption"][i]
    prefix = {"photo": "a photo of", "sketch": "a sketch of", "cartoon": "a cartoon of",
              "noisy": "a noisy photo of" if draw[0] < 0.5 else "a blurry photo of",
              "mono": "a monochrome photo of" if draw[0] < 0.5 else "a tinted photo of"}[domain]
    words = [SIZES[attrs["size"][i]]] if draw[1] < 0.5 else []
    if domain not in _COLOURLESS and draw[2] < 0.6:  # no colour in sketches or mono prints
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
    return " ".join([prefix, _article(words[0]), *words, *tail])


def _describe(domain: str, attrs: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """The human-readable attributes of image ``i`` (colour is None where it is not drawn)."""
    return {
        "domain": domain, "label": int(attrs["label"][i]),
        "shape": CLASSNAMES[attrs["label"][i]],
        "colour": None if domain in _COLOURLESS else COLOURS[attrs["colour"][i]],
        "size": SIZES[attrs["size"][i]], "position": POSITIONS[attrs["position"][i]],
        "rotation": float(attrs["rotation"][i]),
        "background": DOMAIN_BACKGROUNDS[domain][attrs["background"][i]],
    }


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
    more often, than in :func:`_caption`), their order, a noun for the domain and one of four
    sentence frames."""
    words = [SIZES[attrs["size"][i]]] if draw[1] < 0.6 else []
    if domain not in _COLOURLESS and draw[2] < 0.8:
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
    thing = " ".join([_article(words[0]), *words, *tail])
    nouns = _DOMAIN_NOUNS[domain]
    noun = nouns[min(int(draw[7] * len(nouns)), len(nouns) - 1)]
    frame = min(int(draw[6] * 4), 3)
    if frame == 0:
        return f"{_article(noun)} {noun} of {thing}"
    if frame == 1:
        return f"{_article(noun)} {noun} showing {thing}"
    if frame == 2:
        return f"there is {thing} in this {noun}"
    return f"{thing} in {_article(noun)} {noun}"


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
        seq = np.random.SeedSequence([seed, _DOMAIN_ID[domain], _CAPTION_STREAM, start // CHUNK])
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


# --- rendering ----------------------------------------------------------------------------------

class _Chunk(NamedTuple):
    images: np.ndarray
    attrs: dict[str, np.ndarray]
    captions: list[str]


def _render_chunk(domain: str, seed: int, index: int, side: int,
                  colours: tuple[int, ...], backgrounds: tuple[int, ...]) -> _Chunk:
    # Attributes and pixels get separate streams, so attributes do not depend on the resolution.
    attr_seq, pixel_seq = np.random.SeedSequence([seed, _DOMAIN_ID[domain], index]).spawn(2)
    attrs = _sample_attributes(np.random.default_rng(attr_seq), colours, backgrounds)
    dist, u, v = _shape_distance(attrs, side)
    image = _PAINTERS[domain](np.random.default_rng(pixel_seq), attrs, dist, u, v, side)
    images = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return _Chunk(images, attrs, [_caption(domain, attrs, i) for i in range(CHUNK)])


def _indices(names: Sequence[str] | None, allowed: Sequence[str], what: str) -> tuple[int, ...]:
    if names is None:
        return tuple(range(len(allowed)))
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown {what} {unknown or '(empty list)'}; "
                         f"allowed: {', '.join(allowed)}")
    return tuple(allowed.index(name) for name in dict.fromkeys(names))


def _run_chunks(work: Callable[[int], _Chunk], n: int) -> list[_Chunk]:
    """``work(k)`` for every chunk ``k`` that holds part of the first ``n`` images."""
    chunks = -(-n // CHUNK)
    # numpy releases the GIL in its kernels, so threads overlap well on independent chunks.
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1, chunks))) as pool:
        return list(pool.map(work, range(chunks)))


@functools.lru_cache(maxsize=8)
def _render_cached(domain: str, n: int, seed: int, side: int, colours: tuple[int, ...],
                   backgrounds: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, list[str],
                                                          dict[str, np.ndarray]]:
    work = functools.partial(_render_chunk, domain, seed, side=side, colours=colours,
                             backgrounds=backgrounds)
    parts = _run_chunks(work, n)
    images = np.concatenate([p.images for p in parts])[:n]
    attrs = {key: np.concatenate([p.attrs[key] for p in parts])[:n] for key in parts[0].attrs}
    captions = [c for p in parts for c in p.captions][:n]
    labels = attrs["label"].astype(np.int64)
    for array in (images, labels, *attrs.values()):
        array.flags.writeable = False
    return images, labels, captions, attrs


def _check_render(domain: str, n: int, image_size: int) -> None:
    if domain not in RENDER_DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; allowed: {', '.join(RENDER_DOMAINS)}")
    if n < 0 or image_size < 8:
        raise ValueError(f"need n >= 0 and image_size >= 8, got n={n}, image_size={image_size}")


def _render_arrays(domain: str, n: int, seed: int, image_size: int,
                   colours: Sequence[str] | None = None,
                   backgrounds: Sequence[str] | None = None):
    """:func:`render`'s cached arrays for ``n >= 1``: images, labels, captions, raw attributes."""
    colour_ids = _indices(colours, COLOURS, "colours")
    background_ids = _indices(backgrounds, DOMAIN_BACKGROUNDS[domain], f"{domain} backgrounds")
    return _render_cached(domain, n, seed, image_size, colour_ids, background_ids)


def render(domain: str, n: int, seed: int, image_size: int = 32,
           colours: Sequence[str] | None = None, backgrounds: Sequence[str] | None = None,
           return_attributes: bool = False):
    """Render ``n`` images of ``domain`` (one of :data:`RENDER_DOMAINS`) from ``seed``.

    Returns ``(images, labels, captions)``: a read-only uint8 array N×H×W×3, read-only int64
    labels (indices into :data:`CLASSNAMES`) and a list of captions; with ``return_attributes``
    a fourth item, one dict per image (domain, label, shape, colour, size, position, rotation,
    background). ``colours`` / ``backgrounds`` restrict the draws to those names (backgrounds
    must belong to the domain: :data:`DOMAIN_BACKGROUNDS`). Results are cached per argument set.
    """
    _check_render(domain, n, image_size)
    if n == 0:
        empty = np.zeros((0, image_size, image_size, 3), np.uint8)
        return (empty, np.zeros(0, np.int64), [], *([[]] if return_attributes else []))
    images, labels, captions, attrs = _render_arrays(domain, n, seed, image_size,
                                                     colours, backgrounds)
    if not return_attributes:
        return images, labels, list(captions)
    return images, labels, list(captions), [_describe(domain, attrs, i) for i in range(n)]


# --- group images (1-3 copies of one shape), for counting ---------------------------------------

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
    jitter = rng.uniform(-1, 1, size=(CHUNK, MAX_GROUP, 2)).astype(_F)
    rotation = rng.uniform(-ROTATION_RANGE, ROTATION_RANGE, size=(CHUNK, MAX_GROUP)).astype(_F)
    grid = np.stack([cells % 2, cells // 2], axis=-1).astype(_F)
    centre = (0.25 + 0.5 * grid) * side + jitter * _F(_GROUP_JITTER * side)
    return count, centre, rotation


def _render_group_chunk(domain: str, seed: int, index: int, side: int) -> _Chunk:
    """Chunk ``index`` of group images: each shows ``count`` copies of one shape in one colour.

    The copies' distance fields are joined by their minimum (the union of the shapes), and each
    pixel keeps the shape-local coordinates of its nearest copy, so every painter draws a group
    exactly as it draws one shape: same fill, outline, shading and background.
    """
    seqs = np.random.SeedSequence([seed, _DOMAIN_ID[domain], _GROUP_STREAM, index]).spawn(3)
    attr_rng, layout_rng, pixel_rng = (np.random.default_rng(q) for q in seqs)
    attrs = _sample_attributes(attr_rng, tuple(range(len(COLOURS))),
                               tuple(range(len(DOMAIN_BACKGROUNDS[domain]))))
    count, centre, rotation = _group_layout(layout_rng, side)
    radius = np.full(CHUNK, _GROUP_RADIUS * side, dtype=_F)
    copies = [_placed_distance(attrs["label"], centre[:, c], rotation[:, c], radius, side)
              for c in range(MAX_GROUP)]
    dist, u, v = (np.stack([copy[k] for copy in copies]) for k in range(3))
    dist[np.arange(MAX_GROUP)[:, None] >= count[None, :]] = np.inf  # slots beyond the count
    nearest = dist.argmin(axis=0)[None]
    dist, u, v = (np.take_along_axis(a, nearest, axis=0)[0] for a in (dist, u, v))
    attrs["count"] = count
    image = _PAINTERS[domain](pixel_rng, attrs, dist, u, v, side)
    return _Chunk((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), attrs, [])


@functools.lru_cache(maxsize=8)
def _render_groups_cached(domain: str, n: int, seed: int,
                          side: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    parts = _run_chunks(functools.partial(_render_group_chunk, domain, seed, side=side), n)
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
    _check_render(domain, n, image_size)
    if n == 0:
        return np.zeros((0, image_size, image_size, 3), np.uint8), []
    images, attrs = _render_groups_cached(domain, n, seed, image_size)
    return images, [_describe_group(domain, attrs, i) for i in range(n)]


def _describe_group(domain: str, attrs: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    return {"domain": domain, "label": int(attrs["label"][i]),
            "shape": CLASSNAMES[attrs["label"][i]],
            "colour": None if domain in _COLOURLESS else COLOURS[attrs["colour"][i]],
            "count": int(attrs["count"][i]),
            "background": DOMAIN_BACKGROUNDS[domain][attrs["background"][i]]}


# --- dataset and factories ----------------------------------------------------------------------

class SynthDataset(Dataset):
    """Pre-rendered images; items are ``{"image", "label", "caption"}`` dicts."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, captions: Sequence[str],
                 transform: Callable[[Image.Image], Any] | None):
        self.images, self.labels, self.captions = images, labels, list(captions)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": _as_image(self.images[i], self.transform), "label": int(self.labels[i]),
                "caption": self.captions[i]}


def _as_image(pixels: np.ndarray, transform: Callable[[Image.Image], Any] | None) -> Any:
    """A float CHW tensor in [0, 1] without a transform, else the transform of the PIL image."""
    if transform is None:
        return torch.tensor(pixels).permute(2, 0, 1).float().div_(255)
    return transform(Image.fromarray(pixels))


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
        return {"image": _as_image(self.images[i], self.transform), "label": int(self.labels[i]),
                "caption": self.captions[i][0], "captions": list(self.captions[i]),
                "image_id": int(i)}


# The answer to a synthetic question is fixed by how the image was drawn, so every annotator would
# give it: items list it once per annotator of VQAv2's ten, and the VQA soft score
# min(#agreeing / 3, 1) equals accuracy, as it should for an unambiguous question.
SYNTH_ANNOTATORS = 10


class SynthVQADataset(Dataset):
    """One item per question: ``{"image", "question", "answer", "answers", "question_id",
    "image_id"}``; an image asked several questions is stored once (``image_ids`` point to it).
    ``answers`` holds the answer :data:`SYNTH_ANNOTATORS` times."""

    def __init__(self, images: np.ndarray, image_ids: Sequence[int], questions: Sequence[str],
                 answers: Sequence[str], transform: Callable[[Image.Image], Any] | None):
        self.images, self.image_ids = images, list(image_ids)
        self.questions, self.answers = list(questions), list(answers)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image_id = self.image_ids[i]
        return {"image": _as_image(self.images[image_id], self.transform),
                "question": self.questions[i], "answer": self.answers[i],
                "answers": [self.answers[i]] * SYNTH_ANNOTATORS, "question_id": int(i),
                "image_id": image_id}


def split_seed(seed: int, split: str) -> int:
    """The render seed of one split of world ``seed`` (train and test are independent draws)."""
    if split not in _SPLIT_ID:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    return int(np.random.SeedSequence([seed, _SPLIT_ID[split]]).generate_state(1)[0])


def _open(spec: dict[str, Any], split: str,
          default_size: dict[str, int] = DEFAULT_SIZE) -> tuple[Options, dict[str, Any]]:
    """Read the options every synth dataset has; the caller reads its own and calls done()."""
    table = dict(spec)
    opts = Options(table, path=table.pop("_path", "data"))
    if split not in _SPLIT_ID:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    common = {"size": opts.int("size", default=default_size[split], minimum=1),
              "image_size": opts.int("image_size", default=32, minimum=16),
              "seed": opts.int("seed", default=0, minimum=0)}
    if common["image_size"] > 128:
        raise RecipeError(opts.key("image_size"), f"got {common['image_size']}; must be <= 128")
    return opts, common


def _bundle(images, labels, captions, transform, info: dict[str, Any]) -> DatasetBundle:
    return DatasetBundle(dataset=SynthDataset(images, labels, captions, transform),
                         classnames=list(CLASSNAMES), templates=list(TEMPLATES),
                         has_captions=True, info=info)


def _domain_factory(domain: str) -> Callable[..., DatasetBundle]:
    # A validation domain says so in its info, for reports that must never list it as a test.
    role = {"validation_only": True} if domain in VALIDATION_DOMAINS else {}

    def factory(spec: dict[str, Any], split: str, transform=None) -> DatasetBundle:
        opts, common = _open(spec, split)
        opts.done()
        images, labels, captions = render(domain, common["size"],
                                          split_seed(common["seed"], split), common["image_size"])
        return _bundle(images, labels, captions, transform,
                       {"domain": domain, "split": split, **common, **role})
    factory.__name__ = f"synth_{domain}"
    return factory


def _names(opts: Options, key: str, default: Sequence[str], allowed: Sequence[str]) -> list[str]:
    names = opts.str_list(key, default=list(default))
    if not names:
        raise RecipeError(opts.key(key), f"must name at least one of: {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            raise RecipeError(opts.key(key),
                              f"unknown value {name!r}; allowed: {', '.join(allowed)}")
    return list(dict.fromkeys(names))


NARROW_COLOURS = ("red", "blue", "green", "yellow")


def synth_photo_narrow(spec: dict[str, Any], split: str, transform=None) -> DatasetBundle:
    """Photos restricted to a few colours and backgrounds: the narrow finetuning slice.

    The default is four of the eight colours on every background. A narrower default (two
    colours on plain backgrounds) made the slice a distribution shift of its own: finetuning on it
    lowered accuracy on photos as a whole, so the world no longer showed the phenomenon it stands
    for (ID up, OOD down); see README, "The embedded world".
    """
    opts, common = _open(spec, split)
    colours = _names(opts, "colours", NARROW_COLOURS, COLOURS)
    backgrounds = _names(opts, "backgrounds", BACKGROUNDS, BACKGROUNDS)
    opts.done()
    images, labels, captions = render("photo", common["size"], split_seed(common["seed"], split),
                                      common["image_size"], colours, backgrounds)
    return _bundle(images, labels, captions, transform,
                   {"domain": "photo-narrow", "split": split, **common,
                    "colours": colours, "backgrounds": backgrounds})


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
    opts, common = _open(spec, split)
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


# --- vision-language datasets -------------------------------------------------------------------

DEFAULT_CAPTION_SIZE = {"train": 4000, "test": 1000}  # images; test big enough for stable recall


def synth_captions(spec: dict[str, Any], split: str, transform=None) -> DatasetBundle:
    """One domain's images with ``captions_per_image`` distinct captions each, for retrieval.

    The images (and first captions) are those of ``synth-<domain>`` with the same seed, size and
    colours; the other captions name more of the image's attributes in other sentence frames
    (:func:`caption_sets`). ``info["captions"]`` holds every image's captions, so a task can
    encode all texts without reading the images.
    """
    opts, common = _open(spec, split, DEFAULT_CAPTION_SIZE)
    domain = opts.str("domain", default="photo", choices=RENDER_DOMAINS)
    per_image = opts.int("captions_per_image", default=3, minimum=1)
    if per_image > MAX_CAPTIONS:
        raise RecipeError(opts.key("captions_per_image"), f"got {per_image}; must be <= "
                                                          f"{MAX_CAPTIONS}")
    colours = _names(opts, "colours", COLOURS, COLOURS)
    opts.done()
    seed = split_seed(common["seed"], split)
    images, labels, first, attrs = _render_arrays(domain, common["size"], seed,
                                                  common["image_size"], colours)
    captions = caption_sets(domain, attrs, first, seed, per_image)
    return DatasetBundle(
        dataset=SynthCaptionDataset(images, labels, captions, transform),
        classnames=list(CLASSNAMES), templates=list(TEMPLATES), has_captions=True,
        info={"kind": "captions", "captions": captions, "domain": domain, "split": split,
              **common, "captions_per_image": per_image, "colours": colours})


QUESTION_KINDS = ("shape", "colour", "size", "position", "domain", "count")
DEFAULT_VQA_SIZE = {"train": 6000, "test": 2000}  # questions
DOMAIN_ANSWERS = {"photo": "photo", "sketch": "sketch", "cartoon": "cartoon",
                  "noisy": "noisy photo", "mono": "monochrome photo"}
# Size and position describe one shape, so group images (1-3 copies) are not asked them; a
# single-shape image is not asked to count (its answer would always be 1).
_GROUP_KINDS = ("count", "shape", "colour", "domain")
_SINGLE_KINDS = ("shape", "colour", "size", "position", "domain")
_PHRASINGS = 3  # phrasings per question kind
_VQA_STREAM = int.from_bytes(b"vqa", "little")  # seed-sequence tag of the question plan
_PLAN_BLOCK = 1024


def question_texts(domains: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The phrasings of each question kind; the enumerating domain question lists the world's
    four domains, plus the monochrome photo when ``domains`` includes ``mono``."""
    sizes = ", ".join(SIZES[:-1]) + f" or {SIZES[-1]}"
    named = [DOMAIN_ANSWERS[d] for d in RENDER_DOMAINS if d in DOMAINS or d in domains]
    listed = [f"{_article(a)} {a}" for a in named]
    return {
        "shape": ("what shape is this?", "what shape is shown?", "which shape is in the picture?"),
        "colour": ("what colour is the shape?", "what color is the shape?",
                   "which colour does the shape have?"),
        "size": (f"is the shape {sizes}?", "how big is the shape?", "what size is the shape?"),
        "position": ("where is the shape?", "where in the picture is the shape?",
                     "in which part of the image is the shape?"),
        "domain": ("is this " + ", ".join(listed[:-1]) + f" or {listed[-1]}?",
                   "what kind of picture is this?", "what style is this image in?"),
        "count": ("how many shapes are there?", "how many shapes are in the picture?",
                  "how many shapes can you see?"),
    }


def answer_space(kinds: Sequence[str], domains: Sequence[str]) -> list[str]:
    """Every answer questions of ``kinds`` about ``domains`` can have, in kind order."""
    space = {"shape": CLASSNAMES, "colour": COLOURS, "size": SIZES, "position": POSITIONS,
             "domain": [DOMAIN_ANSWERS[d] for d in domains],
             "count": [str(c) for c in range(1, MAX_GROUP + 1)]}
    return list(dict.fromkeys(a for kind in kinds for a in space[kind]))


def _askable(kinds: Sequence[str], domain: str, group: bool) -> list[str]:
    allowed = _GROUP_KINDS if group else _SINGLE_KINDS
    return [k for k in kinds if k in allowed and not (k == "colour" and domain in _COLOURLESS)]


def _group_share(kinds: Sequence[str], per_image: int) -> float:
    """Share of group images such that count questions (one per group image) make up about
    1 / len(kinds) of all questions.

    With ``a`` questions per group image and ``b`` per single-shape image, a share ``f`` gives
    count questions f / (f a + (1 - f) b) of the total; setting that to 1 / K gives
    f = b / (K - a + b). (Colourless domains, asked fewer questions, are ignored here.)
    """
    if "count" not in kinds:
        return 0.0
    a = min(per_image, len([k for k in kinds if k in _GROUP_KINDS]))
    b = min(per_image, len([k for k in kinds if k in _SINGLE_KINDS]))
    return b / (len(kinds) - a + b) if b else 1.0


def _plan_vqa(seed: int, n: int, domains: Sequence[str], kinds: Sequence[str],
              per_image: int) -> list[tuple[str, bool, list[tuple[str, int]]]]:
    """(domain, is a group image, [(kind, phrasing)]) per image, until ``n`` questions.

    Draws come in fixed-size blocks from one stream seeded by (seed, "vqa"), so a larger ``n``
    extends a smaller one's plan. A group image is always asked the count question first; the
    other kinds are taken in a random priority order, at most ``per_image`` in all.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _VQA_STREAM]))
    share = _group_share(kinds, per_image)
    plan: list[tuple[str, bool, list[tuple[str, int]]]] = []
    total = 0
    while total < n:
        domain_ids = rng.integers(len(domains), size=_PLAN_BLOCK)
        groups = rng.random(_PLAN_BLOCK) < share
        priority = rng.random((_PLAN_BLOCK, len(QUESTION_KINDS)))
        phrasing = rng.integers(_PHRASINGS, size=(_PLAN_BLOCK, len(QUESTION_KINDS)))
        for b in range(_PLAN_BLOCK):
            domain, group = domains[domain_ids[b]], bool(groups[b])
            order = sorted(_askable(kinds, domain, group),
                           key=lambda k: (k != "count", priority[b, QUESTION_KINDS.index(k)]))
            asked = order[:min(per_image, n - total)]
            if asked:
                plan.append((domain, group, [(k, int(phrasing[b, QUESTION_KINDS.index(k)]))
                                             for k in asked]))
                total += len(asked)
            if total >= n:
                break
    return plan


def _plan_images(plan, seed: int, side: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The plan's images in plan order, and each one's attributes (a dict as render returns)."""
    needed: dict[tuple[str, bool], int] = {}
    slots = []
    for domain, group, _ in plan:
        slots.append(((domain, group), needed.get((domain, group), 0)))
        needed[(domain, group)] = slots[-1][1] + 1
    blocks, attrs, offset = [], {}, {}
    for key in sorted(needed, key=lambda k: (_DOMAIN_ID[k[0]], k[1])):
        domain, group = key
        if group:
            images, described = render_groups(domain, needed[key], seed, side)
        else:
            images, _, _, described = render(domain, needed[key], seed, side,
                                             return_attributes=True)
        offset[key] = sum(len(b) for b in blocks)
        blocks.append(images)
        attrs[key] = described
    order = np.array([offset[key] + i for key, i in slots])
    return np.concatenate(blocks)[order], [attrs[key][i] for key, i in slots]


def _answer(kind: str, attrs: dict[str, Any]) -> str:
    if kind == "domain":
        return DOMAIN_ANSWERS[attrs["domain"]]
    return str(attrs[kind])


def _read_vqa_options(opts: Options) -> tuple[list[str], list[str], int]:
    domains = _names(opts, "domains", ["photo"], RENDER_DOMAINS)
    kinds = _names(opts, "kinds", QUESTION_KINDS, QUESTION_KINDS)
    per_image = opts.int("questions_per_image", default=2, minimum=1)
    opts.done()
    if "colour" in kinds and all(d in _COLOURLESS for d in domains):
        raise RecipeError(opts.key("kinds"), f"'colour' cannot be asked about {', '.join(domains)}"
                                             " images (they have no colour); remove it or add a "
                                             "coloured domain to 'domains'")
    # Canonical orders, so the order of names in the recipe cannot change the data.
    return ([d for d in RENDER_DOMAINS if d in domains],
            [k for k in QUESTION_KINDS if k in kinds], per_image)


def synth_vqa(spec: dict[str, Any], split: str, transform=None) -> DatasetBundle:
    """Questions about the world's images, answered from a closed vocabulary.

    One item per (image, question); ``size`` counts questions. Single-shape images (those of
    ``synth-<domain>`` with the same seed) are asked about shape, colour, size, position and
    domain; group images (1-3 copies of one shape, :func:`render_groups`) about count, shape,
    colour and domain. Colour is never asked about colourless domains (sketch, mono). Answers are
    exact attribute names (``answer_space`` in info); each item has one annotator answer.
    """
    opts, common = _open(spec, split, DEFAULT_VQA_SIZE)
    domains, kinds, per_image = _read_vqa_options(opts)
    seed = split_seed(common["seed"], split)
    plan = _plan_vqa(seed, common["size"], domains, kinds, per_image)
    images, attrs = _plan_images(plan, seed, common["image_size"])
    texts = question_texts(domains)
    image_ids, asked, questions, answers = [], [], [], []
    for image_id, (_, _, pairs) in enumerate(plan):
        for kind, phrasing in pairs:
            image_ids.append(image_id)
            asked.append(kind)
            questions.append(texts[kind][phrasing])
            answers.append(_answer(kind, attrs[image_id]))
    return DatasetBundle(
        dataset=SynthVQADataset(images, image_ids, questions, answers, transform),
        classnames=[], templates=[], has_captions=False,
        info={"kind": "vqa", "answers": answers, "questions": questions,
              "question_kinds": asked, "answer_space": answer_space(kinds, domains),
              "domains": domains, "kinds": kinds, "questions_per_image": per_image,
              "split": split, **common, "num_images": len(plan)})


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("synth-world", synth_world)
    registry.add("synth-photo", _domain_factory("photo"))
    registry.add("synth-photo-narrow", synth_photo_narrow)
    registry.add("synth-sketch", _domain_factory("sketch"))
    registry.add("synth-cartoon", _domain_factory("cartoon"))
    registry.add("synth-noisy", _domain_factory("noisy"))
    registry.add("synth-mono", _domain_factory("mono"))
    registry.add("synth-captions", synth_captions)
    registry.add("synth-vqa", synth_vqa)
