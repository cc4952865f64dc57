"""Tests for the captions of rendered images (``tracer_plugins.datasets.synth.captions``)."""

from __future__ import annotations

import pytest

from tracer_plugins.datasets import synth


DOMAIN_WORDS = {"photo": ("a photo of",), "sketch": ("a sketch of",),
                "cartoon": ("a cartoon of",), "noisy": ("a noisy photo of", "a blurry photo of")}


@pytest.mark.parametrize("domain", synth.DOMAINS)
def test_captions_name_domain_and_class(domain):
    _, labels, captions, attrs = synth.render(domain, 100, seed=2, return_attributes=True)
    for label, caption, attr in zip(labels, captions, attrs):
        assert caption.startswith(DOMAIN_WORDS[domain])
        assert synth.CLASSNAMES[label] in caption.split()
        assert attr["shape"] == synth.CLASSNAMES[label] and attr["domain"] == domain
    assert len({len(c.split()) for c in captions}) >= 3  # attributes are dropped at random
    if domain == "sketch":
        assert not any(colour in c.split() for c in captions for colour in synth.COLOURS)


def test_captions_use_an_before_vowels():
    captions = synth.render("photo", 500, seed=0)[2]
    assert not any(" a arrow" in c or " a orange" in c for c in captions)
    assert any(" an arrow" in c for c in captions)
