"""Tests for rendering the synth world (``tracer_plugins.datasets.synth.rendering``)."""

from __future__ import annotations

import numpy as np
import pytest

from tracer_plugins.datasets import synth
from tracer_plugins.datasets.synth import rendering


@pytest.mark.parametrize("domain", synth.DOMAINS)
def test_render_is_deterministic_and_shaped(domain):
    images, labels, captions = synth.render(domain, 60, seed=3)
    rendering._render_cached.cache_clear()  # force a genuine second generation
    again, labels2, captions2 = synth.render(domain, 60, seed=3)
    assert images.shape == (60, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and len(captions) == 60
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels2)
    assert captions == captions2
    assert images.reshape(60, -1).std(axis=1).min() > 5  # never a blank frame


def test_longer_request_extends_shorter_one():
    short, _, short_caps = synth.render("photo", 40, seed=5)
    long, _, long_caps = synth.render("photo", 300, seed=5)
    np.testing.assert_array_equal(short, long[:40])
    assert short_caps == long_caps[:40]


def test_seed_and_domain_change_images():
    base = synth.render("photo", 20, seed=1)[0]
    assert not np.array_equal(base, synth.render("photo", 20, seed=2)[0])
    assert not np.array_equal(base, synth.render("cartoon", 20, seed=1)[0])


def test_results_are_read_only():
    images, labels, _ = synth.render("sketch", 10, seed=0)
    with pytest.raises(ValueError):
        images[0, 0, 0, 0] = 1
    with pytest.raises(ValueError):
        labels[0] = 1


def test_labels_are_balanced():
    _, labels, _ = synth.render("photo", 1000, seed=11)
    assert np.bincount(labels, minlength=10).tolist() == [100] * 10


def test_attributes_are_independent_of_the_class():
    _, labels, _, attrs = synth.render("photo", 2000, seed=4, return_attributes=True)
    for key, values in (("colour", synth.COLOURS), ("background", synth.BACKGROUNDS),
                        ("size", synth.SIZES), ("position", synth.POSITIONS)):
        codes = np.array([values.index(a[key]) for a in attrs])
        table = np.zeros((10, len(values)))
        np.add.at(table, (labels, codes), 1)
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        chi2 = ((table - expected) ** 2 / expected).sum()
        dof = 9 * (len(values) - 1)
        assert chi2 < dof + 6 * np.sqrt(2 * dof), (key, chi2)


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown domain"):
        synth.render("painting", 5, seed=0)
    with pytest.raises(ValueError, match="allowed: stripes, dots"):
        synth.render("cartoon", 5, seed=0, backgrounds=["plain"])
