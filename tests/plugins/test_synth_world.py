"""Tests for the synth world's vocabulary (``tracer_plugins.datasets.synth.world``)."""

from __future__ import annotations

from tracer_plugins.datasets import synth


def test_classnames_order():
    assert synth.CLASSNAMES == ("circle", "square", "triangle", "star", "cross",
                                "ring", "diamond", "hexagon", "arrow", "heart")
