"""The openclip backbone's image transforms: open_clip's own, with ``MaybeToTensor`` and
``Normalize`` fused into one step that computes the same tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from tracer_plugins.backbones.openclip import ToNormalizedTensor, make_backbone


@pytest.fixture(scope="module")
def backbone():
    return make_backbone({"arch": "tracer-tiny-rn", "pretrained": "none"})


def _images() -> list:
    rng = np.random.default_rng(0)
    rgb = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
           for h, w in ((32, 32), (40, 29), (7, 64))]
    return rgb + [Image.fromarray(rng.integers(0, 256, (33, 31), dtype=np.uint8)),  # mode L
                  Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8))]  # RGBA


@pytest.mark.parametrize("train", [False, True])
def test_fused_transforms_compute_open_clips_tensors(backbone, train):
    """Same images (random crops under the same seed), same tensors, to float32 rounding
    (the arithmetic is the same; the tolerance only allows for a different kernel)."""
    ours = backbone.preprocess_train if train else backbone.preprocess_eval
    theirs = image_transform_v2(backbone.preprocess_cfg, is_train=train)
    assert any(isinstance(t, ToNormalizedTensor) for t in ours.transforms)
    assert len(ours.transforms) == len(theirs.transforms) - 1
    for image in _images():
        torch.manual_seed(3)
        got = ours(image)
        torch.manual_seed(3)
        expected = theirs(image)
        assert got.dtype == expected.dtype == torch.float32
        assert got.is_contiguous() and got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_fused_step_takes_tensors_and_keeps_its_input():
    step = ToNormalizedTensor((0.5, 0.25, 0.0), (0.5, 0.5, 2.0))
    tensor = torch.rand(3, 4, 4)
    kept = tensor.clone()
    out = step(tensor)
    assert torch.equal(tensor, kept)  # not normalised in place
    expected = (kept - torch.tensor([0.5, 0.25, 0.0]).view(3, 1, 1)) / torch.tensor(
        [0.5, 0.5, 2.0]).view(3, 1, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert "ToNormalizedTensor" in repr(step)


def test_an_inplace_normalize_is_left_as_it_is():
    cfg = PreprocessCfg(size=32)
    compose = image_transform_v2(cfg, is_train=False)
    compose.transforms[-1].inplace = True
    from tracer_plugins.backbones.openclip import fuse_to_tensor

    assert [type(t) for t in fuse_to_tensor(compose).transforms] == \
        [type(t) for t in compose.transforms]
