"""How each domain looks: the pixel helpers and one painter per domain.

A painter turns one chunk's attributes and shape distances (:mod:`.shapes`) into float RGB
images: ``photo`` (shaded fill, photographic ground, distractors, mild noise), ``sketch``
(wobbly pencil outline on paper), ``cartoon`` (flat fill, thick outline, striped or dotted
ground), ``noisy`` (a low-contrast, blurred photo under heavy noise) and the validation look
``mono`` (a tinted monochrome print). Painters draw from their own random stream only, in a fixed
order: changing that order changes every image (and the embedded CLIP was trained on them).
"""

from __future__ import annotations

import numpy as np

from tracer_plugins.datasets.synth.world import BACKGROUNDS, DOMAIN_BACKGROUNDS, F32, PALETTE

# --- pixel helpers ------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, n: int, side: int, cells: int,
                  channels: int = 1) -> np.ndarray:
    """Band-limited noise (about unit variance): a coarse random grid, bilinearly upsampled."""
    coarse = rng.standard_normal((n, channels, cells + 1, cells + 1)).astype(F32)
    pos = (np.arange(side, dtype=F32) + 0.5) / side * cells
    lo = np.minimum(pos.astype(int), cells - 1)
    frac = pos - lo
    interp = np.zeros((side, cells + 1), dtype=F32)
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
    taps = np.arange(-2, 3, dtype=F32)
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
    start = rng.uniform(0, side, size=(n, slots, 2)).astype(F32)
    start = np.where(rng.random((n, slots, 1)) < keep, start, F32(-1e4))
    angle = rng.uniform(0, 2 * np.pi, size=(n, slots)).astype(F32)
    span = rng.uniform(*length, size=(n, slots)).astype(F32) * side
    delta = np.stack([np.cos(angle), np.sin(angle)], -1) * span[..., None]
    coords = np.arange(side, dtype=F32) + 0.5
    px = coords[None, None, None, :] - start[..., 0, None, None]
    py = coords[None, None, :, None] - start[..., 1, None, None]
    bx, by = delta[..., 0, None, None], delta[..., 1, None, None]
    h = np.clip((px * bx + py * by) / (bx * bx + by * by + 1e-6), 0, 1)
    return np.sqrt((px - bx * h) ** 2 + (py - by * h) ** 2).min(axis=1)


def _contrasting(rng: np.random.Generator, colour: np.ndarray, fill: np.ndarray,
                 minimum: float) -> np.ndarray:
    """Replace background colours too close to the fill, so no shape vanishes into its ground."""
    close = np.linalg.norm(colour - fill, axis=-1) < minimum
    flipped = np.clip(1 - fill, 0.05, 0.95) * 0.8 + 0.1 * rng.random(fill.shape, dtype=F32)
    return np.where(close[:, None], flipped, colour)


# --- domains ------------------------------------------------------------------------------------


def _photo_background(rng: np.random.Generator, kind: np.ndarray, fill: np.ndarray,
                      side: int, contrast: float) -> np.ndarray:
    """Plain, gradient or textured grounds; muted so the saturated fill stands out."""
    n = len(kind)
    muted = lambda c: 0.55 * c + 0.45 * rng.uniform(0.2, 0.8, size=(n, 1)).astype(F32)
    first = _contrasting(rng, muted(rng.random((n, 3), dtype=F32)), fill, contrast)
    second = _contrasting(rng, muted(rng.random((n, 3), dtype=F32)), fill, contrast)
    angle = rng.uniform(0, 2 * np.pi, size=n).astype(F32)
    coords = (np.arange(side, dtype=F32) + 0.5) / side - 0.5
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
    fill = np.array(list(PALETTE.values()), dtype=F32)[attrs["colour"]]
    fill = np.clip(fill + rng.uniform(-0.05, 0.05, size=(n, 3)).astype(F32), 0, 1)
    # Noise drowns colour differences first, so the noisy domain needs a bigger colour gap.
    image = _photo_background(rng, attrs["background"], fill, side, 0.75 if noisy else 0.5)
    if not noisy:  # distractors drawn before the shape, so they never hide it
        spots = _segments(rng, n, side, 3, (0.02, 0.12), keep=0.6)
        reach = rng.uniform(1.0, 2.2, (n, 1, 1)).astype(F32) * side / 32
        alpha = np.clip(reach - spots + 0.5, 0, 1)
        image = _over(image, rng.random((n, 3), dtype=F32), alpha)
    light = rng.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(F32)
    shade = np.clip(1 + 0.2 * (u * np.cos(light) + v * np.sin(light)), 0.7, 1.25)
    image = _over(image, fill[:, None, None, :] * shade[..., None], _coverage(dist))
    return image + 0.025 * rng.standard_normal(image.shape, dtype=F32)


def _sketch(rng, attrs, dist, u, v, side):
    n, scale = len(dist), side / 32
    paper = rng.uniform(0.88, 0.98, size=(n, 1)).astype(F32) + np.array([0.01, 0, -0.03], F32)
    image = np.broadcast_to(paper[:, None, None, :], (n, side, side, 3))
    image = image + _smooth_noise(rng, n, side, 6) * 0.02
    lead = rng.uniform(0.15, 0.45, size=(n, 1)).astype(F32).repeat(3, 1)
    width = rng.uniform(0.9, 1.5, size=(n, 1, 1)).astype(F32) * scale
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
    return image + 0.015 * rng.standard_normal(image.shape, dtype=F32)


def _cartoon_background(rng, kind, side):
    n, scale = len(kind), side / 32
    pastel = lambda: 0.45 * rng.random((n, 3), dtype=F32) + 0.55
    first, second = pastel(), pastel() * 0.85
    period = rng.uniform(4, 8, size=(n, 1, 1)).astype(F32) * scale
    angle = rng.uniform(0, np.pi, size=(n, 1, 1)).astype(F32)
    coords = np.arange(side, dtype=F32) + 0.5
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
    fill = np.array(list(PALETTE.values()), dtype=F32)[attrs["colour"]]
    image = _over(image, fill, _coverage(dist))
    width = rng.uniform(1.6, 2.4, size=(n, 1, 1)).astype(F32) * side / 32
    ink = rng.uniform(0.02, 0.15, size=(n, 1)).astype(F32).repeat(3, 1)
    return _over(image, ink, np.clip(width / 2 + 0.5 - np.abs(dist), 0, 1))


def _noisy(rng, attrs, dist, u, v, side):
    n = len(dist)
    image = _photo(rng, attrs, dist, u, v, side, noisy=True)
    mean = image.mean(axis=(1, 2), keepdims=True)
    contrast = rng.uniform(0.45, 0.65, size=(n, 1, 1, 1)).astype(F32)
    image = mean + contrast * (image - mean)
    image = _blur(image, rng.uniform(0.5, 0.9, size=n).astype(F32) * side / 32)
    sigma = rng.uniform(0.05, 0.09, size=(n, 1, 1, 1)).astype(F32)
    return image + sigma * rng.standard_normal(image.shape, dtype=F32)


# Channel weights of black-and-white colour filters: neutral (ITU-R BT.601), red, green, blue, flat.
_MONO_FILTERS = np.array([[0.299, 0.587, 0.114], [0.7, 0.2, 0.1], [0.1, 0.7, 0.2],
                          [0.1, 0.2, 0.7], [1 / 3, 1 / 3, 1 / 3]], dtype=F32)


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
    contrast = rng.uniform(0.8, 1.5, size=(n, 1, 1)).astype(F32)
    luma = np.clip(mean + contrast * (luma - mean), 0, 1)
    hue = rng.random((n, 3), dtype=F32)
    hue = hue / hue.max(axis=1, keepdims=True)  # a saturated tint at full brightness
    dark = hue * rng.uniform(0.0, 0.2, size=(n, 1)).astype(F32)
    light = 0.35 * hue + rng.uniform(0.55, 0.65, size=(n, 1)).astype(F32)
    return _over(np.broadcast_to(dark[:, None, None, :], luma.shape + (3,)), light, luma)


PAINTERS = {"photo": _photo, "sketch": _sketch, "cartoon": _cartoon, "noisy": _noisy,
            "mono": _mono}
