"""Tests for the synth classification datasets
(``tracer_plugins.datasets.synth.classification``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tracer_cli.errors import RecipeError
from tracer_plugins.datasets import synth


def test_factory_bundle_and_items(synth_factories):
    bundle = synth_factories["synth-cartoon"]({"size": 30, "seed": 1}, "test", None)
    assert list(bundle.classnames) == list(synth.CLASSNAMES)
    assert bundle.has_captions and all("{}" in t for t in bundle.templates)
    assert bundle.info == {"domain": "cartoon", "split": "test", "size": 30,
                           "image_size": 32, "seed": 1}
    item = bundle.dataset[0]
    assert len(bundle.dataset) == 30
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert isinstance(item["label"], int) and item["caption"].startswith("a cartoon of")


def test_factory_applies_transform_to_pil_images(synth_factories):
    seen = []

    def transform(image):
        seen.append(image.size)
        return torch.zeros(1)

    bundle = synth_factories["synth-photo"]({"size": 5, "image_size": 48}, "train", transform)
    assert bundle.dataset[2]["image"].shape == (1,) and seen == [(48, 48)]


def test_world_seed_and_split(synth_factories):
    def images(seed, split):
        bundle = synth_factories["synth-photo"]({"size": 20, "seed": seed}, split, None)
        return bundle.dataset.images

    train = images(7, "train")
    np.testing.assert_array_equal(train, images(7, "train"))
    assert not np.array_equal(train, images(7, "test"))
    assert not np.array_equal(train, images(8, "train"))


def test_world_mixes_domains_by_weight(synth_factories):
    spec = {"size": 200, "mix": {"photo": 3, "sketch": 1}}
    bundle = synth_factories["synth-world"](spec, "train", None)
    captions = bundle.dataset.captions
    assert sum(c.startswith("a photo of") for c in captions) == 150
    assert sum(c.startswith("a sketch of") for c in captions) == 50
    assert bundle.info["mix"] == {"photo": 3.0, "sketch": 1.0}
    head = [c.startswith("a sketch of") for c in captions[:50]]
    assert 0 < sum(head) < 50  # shuffled, not domain blocks
    assert np.bincount(bundle.dataset.labels, minlength=10).min() >= 12  # roughly uniform


def test_world_ignores_mix_key_order(synth_factories):
    make = synth_factories["synth-world"]
    one = make({"size": 40, "mix": {"photo": 1, "cartoon": 1}}, "test", None).dataset
    two = make({"size": 40, "mix": {"cartoon": 1, "photo": 1}}, "test", None).dataset
    np.testing.assert_array_equal(one.images, two.images)
    assert one.captions == two.captions


def test_narrow_slice_draws_only_its_colours_and_backgrounds(synth_factories):
    *_, attrs = synth.render("photo", 300, seed=0, colours=["red", "blue"],
                             backgrounds=["plain"], return_attributes=True)
    assert {a["colour"] for a in attrs} == {"red", "blue"}
    assert {a["background"] for a in attrs} == {"plain"}
    spec = {"size": 300, "colours": ["green"], "backgrounds": ["gradient", "texture"]}
    bundle = synth_factories["synth-photo-narrow"](spec, "train", None)
    assert bundle.info["colours"] == ["green"]
    words = {w for c in bundle.dataset.captions for w in c.split()}
    assert "green" in words and not words & (set(synth.COLOURS) - {"green"})
    assert "plain" not in words


def test_narrow_defaults(synth_factories):
    bundle = synth_factories["synth-photo-narrow"]({"size": 10}, "test", None)
    assert bundle.info["colours"] == ["red", "blue", "green", "yellow"]
    assert bundle.info["backgrounds"] == ["plain", "gradient", "texture"]


@pytest.mark.parametrize("name, spec, key", [
    ("synth-photo", {"sizes": 10}, "data.sizes"),
    ("synth-photo", {"_path": "data.eval.ood", "mix": {"photo": 1}}, "data.eval.ood.mix"),
    ("synth-world", {"mix": {"painting": 1}}, "data.mix.painting"),
    ("synth-world", {"mix": {"photo": -1}}, "data.mix.photo"),
    ("synth-world", {"mix": {"photo": 0}}, "data.mix"),
    ("synth-world", {"mix": {"photo": float("inf")}}, "data.mix.photo"),
    ("synth-world", {"mix": [0.5, 0.5]}, "data.mix"),
    ("synth-photo", {"seed": -1}, "data.seed"),
    ("synth-photo-narrow", {"colours": ["red", "teal"]}, "data.colours"),
    ("synth-photo-narrow", {"backgrounds": ["stripes"]}, "data.backgrounds"),
    ("synth-sketch", {"image_size": 8}, "data.image_size"),
    ("synth-sketch", {"image_size": 256}, "data.image_size"),
    ("synth-noisy", {"size": 0}, "data.size"),
])
def test_bad_options_name_the_key_path(synth_factories, name, spec, key):
    with pytest.raises(RecipeError) as info:
        synth_factories[name](spec, "train", None)
    assert info.value.key == key


def test_unknown_colour_lists_allowed_values(synth_factories):
    with pytest.raises(RecipeError, match="allowed: red, green, blue"):
        synth_factories["synth-photo-narrow"]({"colours": ["teal"]}, "train", None)


def test_world_never_mixes_in_the_validation_domain(synth_factories):
    with pytest.raises(RecipeError) as info:
        synth_factories["synth-world"]({"mix": {"mono": 1}}, "train", None)
    assert info.value.key == "data.mix.mono"


def test_colour_bias_ties_colours_to_classes_and_nothing_else(synth_factories):
    from tracer_plugins.datasets.synth.rendering import class_colours, render

    plain = render("photo", 2000, 5, return_attributes=True)
    biased = render("photo", 2000, 5, colour_bias=0.8, return_attributes=True)
    np.testing.assert_array_equal(plain[1], biased[1])  # same labels
    for key in ("size", "position", "rotation", "background"):
        assert [a[key] for a in plain[3]] == [a[key] for a in biased[3]]
    typical = [synth.COLOURS[class_colours(range(len(synth.COLOURS)))[a["label"]]]
               for a in biased[3]]
    share = np.mean([a["colour"] == c for a, c in zip(biased[3], typical)])
    # 80% take their class's colour, and 1 in 8 of the rest draws it anyway: 0.825.
    assert abs(share - 0.825) < 4 * np.sqrt(0.825 * 0.175 / 2000)
    assert np.mean([a["colour"] == c for a, c in zip(plain[3], typical)]) < 0.2
    every = render("photo", 300, 5, colour_bias=1.0, return_attributes=True)[3]
    assert all(a["colour"] == c for a, c in zip(every, typical))
    # A caption that names a colour names the one drawn: the text stays true to the pixels.
    captions = render("photo", 300, 5, colour_bias=1.0)[2]
    named = [(a["colour"], [c for c in synth.COLOURS if f" {c} " in f" {t} "])
             for a, t in zip(every, captions)]
    assert sum(bool(names) for _, names in named) > 50
    assert all(names == [colour] for colour, names in named if names)


def test_colour_bias_option(synth_factories):
    spec = {"size": 40, "colour_bias": 1.0}
    bundle = synth_factories["synth-photo"](spec, "test", None)
    assert bundle.info["colour_bias"] == 1.0
    plain = synth_factories["synth-photo"]({"size": 40}, "test", None)
    assert "colour_bias" not in plain.info  # bias 0 is the plain domain, images unchanged
    np.testing.assert_array_equal(
        plain.dataset.images, synth_factories["synth-photo"](
            {"size": 40, "colour_bias": 0}, "test", None).dataset.images)
    narrow = synth_factories["synth-photo-narrow"](
        {"size": 200, "colour_bias": 1.0, "colours": ["red", "blue"]}, "train", None)
    assert narrow.info["colour_bias"] == 1.0
    with pytest.raises(RecipeError, match=r"data\.colour_bias.*between 0\.0 and 1\.0"):
        synth_factories["synth-photo"]({"size": 4, "colour_bias": 1.5}, "test", None)
    with pytest.raises(RecipeError, match="colour_bias"):  # sketches have no colour to bias
        synth_factories["synth-sketch"]({"size": 4, "colour_bias": 0.5}, "test", None)
