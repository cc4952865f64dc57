"""The vocabulary of the synthetic world: its classes, domains, colours, sizes, positions and
backgrounds, the prompt templates, and the chunk size that makes rendering deterministic.

Every other module of the package reads these names; none of them draws or renders anything.
"""

from __future__ import annotations

import numpy as np

CLASSNAMES = ("circle", "square", "triangle", "star", "cross",
              "ring", "diamond", "hexagon", "arrow", "heart")
DOMAINS = ("photo", "sketch", "cartoon", "noisy")
# Domains used only to choose hyperparameters: renderable, but never mixed into synth-world.
VALIDATION_DOMAINS = ("mono",)
RENDER_DOMAINS = DOMAINS + VALIDATION_DOMAINS
# Seed stream of each domain; the first four are positions in DOMAINS, as they always were.
DOMAIN_ID = {domain: i for i, domain in enumerate(RENDER_DOMAINS)}
# Domains whose pixels carry no colour, so captions and questions never mention one.
COLOURLESS = ("sketch", "mono")
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
POSITIONS = ("top left", "top", "top right", "left", "center", "right",
             "bottom left", "bottom", "bottom right")
ROTATION_RANGE = 60.0  # degrees either way: hearts and arrows stay readable at any draw
TEMPLATES = ("a photo of a {}.", "a sketch of a {}.", "a cartoon of a {}.",
             "a noisy photo of a {}.", "a blurry photo of a {}.", "a {}.")
CHUNK = 250  # a multiple of 10, so every chunk holds each class exactly 25 times
# The pixel arithmetic's precision; every drawn array is cast to it, so renders are bit-stable.
F32 = np.float32
