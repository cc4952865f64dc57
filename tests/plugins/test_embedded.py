"""The embedded tiny CLIP: built on first use through the normal engine, cached, then reused.

The engine builds it (the ``openclip`` factory's ``weights_build`` capability) before it calls
the factory; the plugin never calls the engine."""

from __future__ import annotations

from pathlib import Path

import torch

from tracer_cli.engine.build import backbone_from_options
from tracer_cli.errors import MissingResourceError
from tracer_cli.events import Reporter, use_reporter
from tracer_plugins.backbones import embedded
from tracer_plugins.backbones.openclip import make_backbone

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

TINY_PRETRAIN = """
[run]
name = "tiny_pretrain"
[model]
arch = "tracer-tiny-rn"
pretrained = "none"
[data]
train = { name = "synth-world", size = 32 }
[task]
train_text = "captions"
[train]
steps = 2
batch_size = 16
lr = 1e-3
[teacher]
kind = "none"
"""


class _Notices(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def notice(self, message: str) -> None:
        self.lines.append(message)


def test_packaged_recipe_is_the_repository_recipe():
    assert embedded.pretrain_recipe_text() == (RECIPES / "tiny_pretrain.toml").read_text()


def test_built_on_first_use_then_reused(tmp_path, monkeypatch):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "pretrain_recipe_text", lambda: TINY_PRETRAIN)
    notices = _Notices()
    with use_reporter(notices):
        backbone = backbone_from_options("openclip", {"arch": "tracer-tiny-rn",
                                                      "pretrained": "embedded"})
    path = embedded.embedded_path("tracer-tiny-rn")
    assert path.is_file() and path.parent == tmp_path / "cache" / "embedded"
    assert path.with_suffix(".lock.toml").is_file()
    assert any("building the embedded tiny CLIP" in n for n in notices.lines)
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(backbone.model.state_dict()["text_projection"], saved["text_projection"])

    again = _Notices()
    with use_reporter(again):
        backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded"})
    assert again.lines == []  # cached: no second build


def test_the_factory_alone_never_trains_and_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    import pytest

    with pytest.raises(MissingResourceError, match="tiny_pretrain.toml"):
        make_backbone({"arch": "tracer-tiny-rn", "pretrained": "embedded"})
    assert not (tmp_path / "cache").exists()


def test_recipe_change_means_new_cache_file(monkeypatch, tmp_path):
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    first = embedded.embedded_path("tracer-tiny-rn")
    monkeypatch.setattr(embedded, "pretrain_recipe_text", lambda: TINY_PRETRAIN)
    assert embedded.embedded_path("tracer-tiny-rn") != first
    assert embedded.embedded_path("tracer-tiny-vit") != embedded.embedded_path("tracer-tiny-rn")


def test_build_version_change_means_new_cache_file(monkeypatch, tmp_path):
    """Engine code that changes what a build computes bumps BUILD_VERSION: a cache built by the
    older code is then never reused."""
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    first = embedded.embedded_path("tracer-tiny-rn")
    monkeypatch.setattr(embedded, "BUILD_VERSION", embedded.BUILD_VERSION + 1)
    assert embedded.embedded_path("tracer-tiny-rn") != first


def test_arch_config_change_means_new_cache_file(monkeypatch, tmp_path):
    """Editing an arch's config (its width, say) changes the digest: weights of the old shape
    are never offered for the new one."""
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))
    first = embedded.embedded_path("tracer-tiny-rn")
    configs = tmp_path / "configs"
    configs.mkdir()
    text = (embedded.CONFIG_DIR / "tracer-tiny-rn.json").read_text()
    (configs / "tracer-tiny-rn.json").write_text(text)
    monkeypatch.setattr(embedded, "CONFIG_DIR", configs)
    assert embedded.embedded_path("tracer-tiny-rn") == first  # same text, same file
    (configs / "tracer-tiny-rn.json").write_text(text.replace('"layers": 2', '"layers": 3'))
    assert embedded.embedded_path("tracer-tiny-rn") != first


def test_embedded_seed_builds_its_own_pretraining(tmp_path, monkeypatch):
    """``model.embedded_seed`` is a separate pretraining run (its own file, its own weights);
    seed 0 keeps the recipe's file name, and the key is refused for non-embedded weights."""
    import pytest

    from tracer_cli.errors import RecipeError

    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "pretrain_recipe_text", lambda: TINY_PRETRAIN)
    with use_reporter(_Notices()):
        zero = backbone_from_options("openclip", {"arch": "tracer-tiny-rn",
                                                  "pretrained": "embedded"})
        one = backbone_from_options("openclip", {"arch": "tracer-tiny-rn",
                                                 "pretrained": "embedded", "embedded_seed": 1})
    assert embedded.embedded_path("tracer-tiny-rn", 0) == embedded.embedded_path("tracer-tiny-rn")
    assert embedded.embedded_path("tracer-tiny-rn", 1).name.endswith("-seed1.pt")
    assert embedded.embedded_path("tracer-tiny-rn", 1).is_file()
    a, b = zero.model.state_dict(), one.model.state_dict()
    assert not torch.equal(a["text_projection"], b["text_projection"])
    assert one.describe()["embedded_seed"] == 1
    with pytest.raises(RecipeError) as err:
        make_backbone({"arch": "tracer-tiny-rn", "pretrained": "none", "embedded_seed": 1})
    assert err.value.key == "model.embedded_seed"


def test_building_twice_gives_identical_weights(tmp_path, monkeypatch):
    """The same build repeated on one machine (two empty caches, same recipe and seed) gives
    bit-identical weights: initialisation, data order, augmentation and the optimizer are seeded.
    Bit-exact comparison is right here, the computation is the same one repeated."""
    monkeypatch.setattr(embedded, "pretrain_recipe_text",
                        lambda: TINY_PRETRAIN.replace("steps = 2", "steps = 4"))
    built = []
    for name in ("first", "second"):
        monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / name))
        with use_reporter(_Notices()):
            backbone_from_options("openclip", {"arch": "tracer-tiny-rn", "pretrained": "embedded",
                                               "embedded_seed": 3})
        path = embedded.embedded_path("tracer-tiny-rn", 3)
        assert path.parent.parent == tmp_path / name
        built.append(torch.load(path, weights_only=True)["state_dict"])
    first, second = built
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key
    # The build did train: its lock file records the steps run.
    assert "steps = 4" in path.with_suffix(".lock.toml").read_text()
