"""The openclip backbone's tokenizer rows are cached per text: same tensor as open_clip's own
tokenizer, whatever the order, repeats or mix of cached and new texts."""

from __future__ import annotations

import open_clip
import torch

from tracer_plugins.backbones.openclip import make_backbone


def test_cached_rows_equal_the_tokenizer_output():
    backbone = make_backbone({"arch": "tracer-tiny-rn", "pretrained": "none"})
    plain = open_clip.get_tokenizer("tracer-tiny-rn")
    first = ["a photo of a star.", "a sketch of a ring.", "a photo of a star."]
    assert torch.equal(backbone.tokenize(first), plain(first))
    assert len(backbone._token_rows) == 2  # one row per distinct text
    second = ["a sketch of a ring.", "a cartoon of a heart with a very long caption " * 3]
    tokens = backbone.tokenize(second)
    assert torch.equal(tokens, plain(second)) and tokens.dtype == plain(second).dtype
    # A row handed out is a copy: changing it cannot change the cache.
    tokens.zero_()
    assert torch.equal(backbone.tokenize(second), plain(second))
    assert backbone.tokenize([]).shape == plain([]).shape
