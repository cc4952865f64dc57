"""Weights decide the architecture: the openclip backbone builds the activation and the
preprocessing that open_clip's pretrained config of a tag says the weights were trained with, for
open_clip's tags and for every shipped recipe, and refuses a recipe that asks for another.

Nothing is downloaded: a tag's weights file is placed in a private, offline Hugging Face cache
(``tests/hub.py``) and open_clip's ``load_checkpoint`` records the file it is handed instead of
reading 100-430 M random parameters; everything before it (the tag's config, the cache lookup,
the model built) is the real path. ViT-L/14 (~430 M parameters, ~20 s to build on a CPU) is built
once; its other cases check the activation the backbone decides on before building.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from torch import nn
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from tests.hub import offline_hub, weights_path
from tracer_cli.errors import RecipeError
from tracer_cli.recipe import load
from tracer_plugins.backbones.openclip import (TINY_ARCHS, ToNormalizedTensor, make_backbone,
                                               quick_gelu_for)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
# What each tag's weights were trained with (open_clip's pretrained.py; OpenAI trained with
# QuickGELU, LAION's open_clip runs of these archs with GELU).
TRAINED_QUICK_GELU = {("RN50", "openai"): True, ("RN50", "yfcc15m"): True,
                      ("ViT-B-16", "openai"): True, ("ViT-B-16", "laion2b_s34b_b88k"): False,
                      ("ViT-L-14", "openai"): True, ("ViT-L-14", "laion400m_e31"): False}
SMALL = [pair for pair in TRAINED_QUICK_GELU if pair[0] != "ViT-L-14"]


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Path:
    return offline_hub(monkeypatch, tmp_path / "hf")


@pytest.fixture
def loaded(monkeypatch) -> list[str]:
    """The files open_clip was asked to load (and did not read)."""
    files: list[str] = []
    monkeypatch.setattr(open_clip.factory, "load_checkpoint",
                        lambda model, path, **kwargs: files.append(path))
    return files


def _build_tagged(hub: Path, loaded: list[str], options: dict):
    """The backbone of ``options`` (an open_clip tag) from the faked cache; checks that the tag's
    own file was the one loaded."""
    path = weights_path(hub, options["arch"], options["pretrained"])
    path.write_bytes(b"")  # never read: load_checkpoint is replaced
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = make_backbone(options)
    assert [Path(p).resolve() for p in loaded] == [path.resolve()]
    assert not [w for w in caught if "QuickGELU mismatch" in str(w.message)]
    return backbone


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size) * (2 // len(size))


def _activations(module: nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if isinstance(m, (QuickGELU, nn.GELU))}


def _assert_built_as_trained(backbone, arch: str, tag: str | None, quick_gelu: bool) -> None:
    """The modules have the activation, and the transforms the preprocessing, the weights need."""
    assert _activations(backbone.model) == {"QuickGELU" if quick_gelu else "GELU"}
    assert backbone.describe()["activation"] == ("QuickGELU" if quick_gelu else "GELU")
    assert backbone.model_config()["quick_gelu"] is quick_gelu
    want = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    want = {"size": _pair(open_clip.get_model_config(arch)["vision_cfg"]["image_size"]),
            "mean": tuple(want.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            "std": tuple(want.get("std", open_clip.OPENAI_DATASET_STD)),
            "interpolation": want.get("interpolation", "bicubic"),
            "resize_mode": want.get("resize_mode", "shortest")}
    cfg = backbone.preprocess_cfg
    got = {k: getattr(cfg, k) for k in want}
    assert {**got, "size": _pair(got["size"])} == want
    resize, crop, *_, normalize = backbone.preprocess_eval.transforms
    assert isinstance(resize, transforms.Resize) and _pair(resize.size) == want["size"]
    assert resize.interpolation == InterpolationMode(want["interpolation"])
    assert _pair(crop.size) == want["size"]
    assert isinstance(normalize, ToNormalizedTensor)
    assert (normalize.mean, normalize.std) == (tuple(want["mean"]), tuple(want["std"]))


@pytest.mark.parametrize("pair", list(TRAINED_QUICK_GELU), ids="-".join)
def test_the_decided_activation_is_the_one_the_tag_was_trained_with(pair):
    arch, tag = pair
    assert quick_gelu_for(arch, tag, None) is TRAINED_QUICK_GELU[pair]
    assert quick_gelu_for(arch, tag, TRAINED_QUICK_GELU[pair]) is TRAINED_QUICK_GELU[pair]


@pytest.mark.slow
@pytest.mark.parametrize("pair", SMALL, ids="-".join)
def test_tagged_weights_build_the_network_they_were_trained_as(hub, loaded, pair):
    arch, tag = pair
    backbone = _build_tagged(hub, loaded, {"arch": arch, "pretrained": tag})
    _assert_built_as_trained(backbone, arch, tag, TRAINED_QUICK_GELU[pair])


@pytest.mark.slow
def test_openai_vit_l14_is_built_with_quick_gelu(hub, loaded):
    """The one ViT-L/14 built: OpenAI's weights under the plain arch name (a GELU config)."""
    backbone = _build_tagged(hub, loaded, {"arch": "ViT-L-14", "pretrained": "openai"})
    _assert_built_as_trained(backbone, "ViT-L-14", "openai", True)


def _recipe_models() -> list:
    out = []
    for path in sorted(RECIPES.glob("*.toml")):
        model = load(path).model
        if model.backbone == "openclip":
            out.append(pytest.param(model.options, id=path.name))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("options", _recipe_models())
def test_every_recipe_builds_what_its_weights_were_trained_as(hub, loaded, options):
    arch, pretrained = options["arch"], options.get("pretrained", "none")
    if (arch, pretrained) in TRAINED_QUICK_GELU:
        trained = TRAINED_QUICK_GELU[(arch, pretrained)]
    else:  # the embedded tiny CLIPs, pretrained by tracer with their GELU configs
        assert arch in TINY_ARCHS and pretrained in ("embedded", "none"), options
        trained = False
    assert quick_gelu_for(arch, pretrained, options.get("quick_gelu")) is trained
    if arch == "ViT-L-14":
        return  # built once above, with the activation that differs from its arch config
    if arch in TINY_ARCHS:  # the same network as their embedded weights, without building them
        backbone = make_backbone({**options, "pretrained": "none"})
        tag = None
    else:
        backbone = _build_tagged(hub, loaded, options)
        tag = pretrained
    _assert_built_as_trained(backbone, arch, tag, trained)


def test_the_paper_recipes_use_the_references_augmentation():
    """The reference flips where it loads OpenAI's weights (its clip/clip.py) and uses
    open_clip's transform, which does not flip, for its ViT-L-14 (laion400m_e31)."""
    augment = {p.name: load(p).model.options.get("train_augment", "crop")
               for p in sorted(RECIPES.glob("*.toml"))}
    paper = {"rn50_flowers.toml": "crop-flip", "vitb16_imagenet.toml": "crop-flip",
             "vitb16_iwildcam.toml": "crop-flip", "vitl14_imagenet.toml": "crop"}
    assert {name: augment[name] for name in paper} == paper
    assert load(RECIPES / "vitl14_imagenet.toml").model.options["pretrained"] == "laion400m_e31"
    assert {a for name, a in augment.items() if name not in paper} == {"crop"}


def test_crop_flip_adds_a_horizontal_flip_after_open_clips_crop():
    plain = make_backbone({"arch": "tracer-tiny-rn"})
    flip = make_backbone({"arch": "tracer-tiny-rn", "train_augment": "crop-flip"})
    assert plain.describe()["train_augment"] == "crop"
    assert flip.describe()["train_augment"] == "crop-flip"
    want = [type(t) for t in plain.preprocess_train.transforms]
    want.insert(1, transforms.RandomHorizontalFlip)
    assert [type(t) for t in flip.preprocess_train.transforms] == want
    crop = flip.preprocess_train.transforms[0]
    assert isinstance(crop, transforms.RandomResizedCrop) and crop.scale == (0.9, 1.0)
    assert crop.interpolation == InterpolationMode.BICUBIC  # the reference's crop
    assert flip.preprocess_train.transforms[1].p == 0.5
    # Evaluation is never augmented.
    assert repr(flip.preprocess_eval) == repr(plain.preprocess_eval)


def test_crop_flip_mirrors_about_half_the_images():
    backbone = make_backbone({"arch": "tracer-tiny-rn", "train_augment": "crop-flip"})
    plain = make_backbone({"arch": "tracer-tiny-rn"})
    image = transforms.ToPILImage()(torch.linspace(0, 1, 3 * 32 * 32).view(3, 32, 32))
    mirrored = 0
    for seed in range(40):
        torch.manual_seed(seed)
        got = backbone.preprocess_train(image)
        torch.manual_seed(seed)
        crop = plain.preprocess_train(image)
        if not torch.equal(got, crop):
            mirrored += 1
    assert 10 <= mirrored <= 30


@pytest.mark.parametrize("options, message", [
    ({"arch": "ViT-B-16", "pretrained": "openai", "quick_gelu": False},
     "false contradicts the weights: open_clip's pretrained config says the 'openai' weights of "
     "'ViT-B-16' were trained with QuickGELU; remove model.quick_gelu"),
    ({"arch": "ViT-L-14", "pretrained": "laion400m_e31", "quick_gelu": True},
     "true contradicts the weights: open_clip's pretrained config says the 'laion400m_e31' "
     "weights of 'ViT-L-14' were trained with GELU; remove model.quick_gelu"),
    ({"arch": "ViT-B-16-quickgelu", "quick_gelu": False},
     "false contradicts the arch: 'ViT-B-16-quickgelu' is a QuickGELU config; remove "
     "model.quick_gelu, or use arch 'ViT-B-16' for GELU"),
    ({"arch": "tracer-tiny-rn", "pretrained": "embedded", "quick_gelu": True},
     "true contradicts the weights: the embedded weights of 'tracer-tiny-rn' were trained with "
     "GELU"),
    ({"arch": "local-dir:/nowhere", "quick_gelu": True},
     "does not apply to 'local-dir:/nowhere': its open_clip_config.json says"),
    ({"arch": "tracer-tiny-rn", "train_augment": "flip"}, "allowed: crop, crop-flip"),
    ({"arch": "tracer-tiny-rn", "quick_gelu": "yes"}, "expected true or false"),
])
def test_contradicting_choices_are_refused_before_anything_is_built(monkeypatch, options,
                                                                    message):
    monkeypatch.setattr(open_clip, "create_model",
                        lambda *a, **k: pytest.fail("built a model for a refused recipe"))
    with pytest.raises(RecipeError, match="model.(quick_gelu|train_augment)") as err:
        make_backbone(options)
    assert message in str(err.value)


@pytest.mark.slow
def test_quickgelu_arch_names_work_as_they_are(hub, loaded):
    """open_clip's ``-quickgelu`` names: their config has QuickGELU, their tags are OpenAI's."""
    assert quick_gelu_for("ViT-B-16-quickgelu", "none", None) is True
    backbone = _build_tagged(hub, loaded, {"arch": "ViT-B-16-quickgelu", "pretrained": "openai",
                                           "quick_gelu": True})
    _assert_built_as_trained(backbone, "ViT-B-16-quickgelu", "openai", True)


def test_a_local_file_builds_the_arch_configs_activation_unless_told(tmp_path):
    """A weights file cannot tell its activation: GELU (the arch config) unless
    model.quick_gelu says otherwise, and what was built is recorded (lock file, card)."""
    weights = tmp_path / "w.pt"
    torch.save(make_backbone({"arch": "tracer-tiny-vit"}).model.state_dict(), weights)
    plain = make_backbone({"arch": "tracer-tiny-vit", "pretrained": str(weights)})
    told = make_backbone({"arch": "tracer-tiny-vit", "pretrained": str(weights),
                          "quick_gelu": True})
    assert _activations(plain.model) == {"GELU"} and plain.describe()["activation"] == "GELU"
    assert _activations(told.model) == {"QuickGELU"}
    assert told.describe()["activation"] == "QuickGELU"
    assert told.model_config()["quick_gelu"] is True
    assert plain.model_config()["quick_gelu"] is False
