"""Where each image's shape is: signed-distance fields of the ten shapes and their placement.

Distances are in units of the shape's circumradius (negative inside) until :func:`placed_distance`
scales them to pixels; the painters (:mod:`.painters`) turn them into coverage, outlines and
shading, so every domain draws the same geometry.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from tracer_plugins.datasets.synth.world import F32

# Circumradius as a fraction of the image side; "small" is still ~8 px at 32 px.
_SIZE_FRACTION = np.array([0.25, 0.32, 0.39], dtype=np.float32)


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


def shape_distance(attrs: dict[str, np.ndarray], side: int) -> tuple[np.ndarray, ...]:
    """Signed distance to each image's shape in pixels, and the shape-local coordinates."""
    radius = _SIZE_FRACTION[attrs["size"]] * side
    grid = np.stack([attrs["position"] % 3, attrs["position"] // 3], axis=1).astype(F32) - 1
    # Keep the shape inside the frame whatever its size; jitter moves it within its grid cell.
    reach = np.maximum(0.5 * side - radius - 0.04 * side, 0)[:, None]
    centre = 0.5 * side + grid * reach + attrs["jitter"] * 0.06 * side
    return placed_distance(attrs["label"], centre, attrs["rotation"], radius, side)


def placed_distance(labels: np.ndarray, centre: np.ndarray, rotation: np.ndarray,
                    radius: np.ndarray, side: int) -> tuple[np.ndarray, ...]:
    """Signed distance (pixels) to shape ``labels[i]`` at pixel ``centre[i]`` (x, y), rotated by
    ``rotation[i]`` degrees with circumradius ``radius[i]`` pixels, and the shape-local
    coordinates ``u, v`` (in circumradii) of every pixel."""
    theta = np.deg2rad(rotation).astype(F32)
    coords = np.arange(side, dtype=F32) + 0.5
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
