"""Tests for the domain painters (``tracer_plugins.datasets.synth.painters``)."""

from __future__ import annotations

import numpy as np

from tracer_plugins.datasets import synth


def test_mono_is_a_tinted_monochrome_validation_domain(synth_factories):
    images, labels, captions = synth.render("mono", 250, seed=1)
    assert "mono" not in synth.DOMAINS and "mono" in synth.RENDER_DOMAINS
    assert np.bincount(labels, minlength=10).tolist() == [25] * 10
    # Every pixel of a print lies on one line of colours (dark tint -> light tint): the centred
    # pixel matrix is rank one up to rounding. Photos are not.
    def second_to_first(batch):
        ratios = []
        for image in batch.reshape(len(batch), -1, 3).astype(np.float64):
            s = np.linalg.svd(image - image.mean(0), compute_uv=False)
            ratios.append(s[1] / s[0])
        return np.array(ratios)
    assert second_to_first(images[:40]).max() < 0.05
    assert np.median(second_to_first(synth.render("photo", 40, seed=1)[0])) > 0.1
    assert images.reshape(250, -1).std(axis=1).min() > 5
    assert all(c.startswith(("a monochrome photo of", "a tinted photo of")) for c in captions)
    assert not any(set(c.split()) & set(synth.COLOURS) for c in captions)
    bundle = synth_factories["synth-mono"]({"size": 20}, "test", None)
    assert bundle.info["validation_only"] is True and bundle.info["domain"] == "mono"
    assert list(bundle.classnames) == list(synth.CLASSNAMES)
    assert list(bundle.templates) == list(synth.TEMPLATES)
    assert "validation_only" not in synth_factories["synth-photo"]({"size": 5}, "test", None).info
