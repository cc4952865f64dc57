"""Tests for the procedural multi-domain shape world (``tracer_plugins.datasets.synth``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tracer_cli.errors import RecipeError
from tracer_plugins.datasets import synth

DOMAIN_WORDS = {"photo": ("a photo of",), "sketch": ("a sketch of",),
                "cartoon": ("a cartoon of",), "noisy": ("a noisy photo of", "a blurry photo of")}


class _Registry:
    def __init__(self):
        self.factories = {}

    def add(self, name, factory):
        self.factories[name] = factory


@pytest.fixture(scope="module")
def factories():
    registry = _Registry()
    synth.tracer_register_datasets(registry=registry)
    return registry.factories


def test_registers_every_dataset(factories):
    assert sorted(factories) == sorted(["synth-world", "synth-photo", "synth-photo-narrow",
                                        "synth-sketch", "synth-cartoon", "synth-noisy",
                                        "synth-mono", "synth-captions", "synth-vqa"])


def test_hook_loads_through_the_plugin_host():
    from tracer_cli.plugins import PluginHost

    host = PluginHost(load_entry_points=False, plugins=(synth,))
    assert "synth-photo-narrow" in host.datasets.names()


def test_classnames_order():
    assert synth.CLASSNAMES == ("circle", "square", "triangle", "star", "cross",
                                "ring", "diamond", "hexagon", "arrow", "heart")


@pytest.mark.parametrize("domain", synth.DOMAINS)
def test_render_is_deterministic_and_shaped(domain):
    images, labels, captions = synth.render(domain, 60, seed=3)
    synth._render_cached.cache_clear()  # force a genuine second generation
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


def test_factory_bundle_and_items(factories):
    bundle = factories["synth-cartoon"]({"size": 30, "seed": 1}, "test", None)
    assert list(bundle.classnames) == list(synth.CLASSNAMES)
    assert bundle.has_captions and all("{}" in t for t in bundle.templates)
    assert bundle.info == {"domain": "cartoon", "split": "test", "size": 30,
                           "image_size": 32, "seed": 1}
    item = bundle.dataset[0]
    assert len(bundle.dataset) == 30
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
    assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert isinstance(item["label"], int) and item["caption"].startswith("a cartoon of")


def test_factory_applies_transform_to_pil_images(factories):
    seen = []

    def transform(image):
        seen.append(image.size)
        return torch.zeros(1)

    bundle = factories["synth-photo"]({"size": 5, "image_size": 48}, "train", transform)
    assert bundle.dataset[2]["image"].shape == (1,) and seen == [(48, 48)]


def test_world_seed_and_split(factories):
    def images(seed, split):
        return factories["synth-photo"]({"size": 20, "seed": seed}, split, None).dataset.images

    train = images(7, "train")
    np.testing.assert_array_equal(train, images(7, "train"))
    assert not np.array_equal(train, images(7, "test"))
    assert not np.array_equal(train, images(8, "train"))


def test_world_mixes_domains_by_weight(factories):
    spec = {"size": 200, "mix": {"photo": 3, "sketch": 1}}
    bundle = factories["synth-world"](spec, "train", None)
    captions = bundle.dataset.captions
    assert sum(c.startswith("a photo of") for c in captions) == 150
    assert sum(c.startswith("a sketch of") for c in captions) == 50
    assert bundle.info["mix"] == {"photo": 3.0, "sketch": 1.0}
    head = [c.startswith("a sketch of") for c in captions[:50]]
    assert 0 < sum(head) < 50  # shuffled, not domain blocks
    assert np.bincount(bundle.dataset.labels, minlength=10).min() >= 12  # roughly uniform


def test_world_ignores_mix_key_order(factories):
    make = factories["synth-world"]
    one = make({"size": 40, "mix": {"photo": 1, "cartoon": 1}}, "test", None).dataset
    two = make({"size": 40, "mix": {"cartoon": 1, "photo": 1}}, "test", None).dataset
    np.testing.assert_array_equal(one.images, two.images)
    assert one.captions == two.captions


def test_narrow_slice_draws_only_its_colours_and_backgrounds(factories):
    *_, attrs = synth.render("photo", 300, seed=0, colours=["red", "blue"],
                             backgrounds=["plain"], return_attributes=True)
    assert {a["colour"] for a in attrs} == {"red", "blue"}
    assert {a["background"] for a in attrs} == {"plain"}
    bundle = factories["synth-photo-narrow"]({"size": 300, "colours": ["green"],
                                             "backgrounds": ["gradient", "texture"]}, "train", None)
    assert bundle.info["colours"] == ["green"]
    words = {w for c in bundle.dataset.captions for w in c.split()}
    assert "green" in words and not words & (set(synth.COLOURS) - {"green"})
    assert "plain" not in words


def test_narrow_defaults(factories):
    bundle = factories["synth-photo-narrow"]({"size": 10}, "test", None)
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
def test_bad_options_name_the_key_path(factories, name, spec, key):
    with pytest.raises(RecipeError) as info:
        factories[name](spec, "train", None)
    assert info.value.key == key


def test_unknown_colour_lists_allowed_values(factories):
    with pytest.raises(RecipeError, match="allowed: red, green, blue"):
        factories["synth-photo-narrow"]({"colours": ["teal"]}, "train", None)


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown domain"):
        synth.render("painting", 5, seed=0)
    with pytest.raises(ValueError, match="allowed: stripes, dots"):
        synth.render("cartoon", 5, seed=0, backgrounds=["plain"])


def test_mono_is_a_tinted_monochrome_validation_domain(factories):
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
    bundle = factories["synth-mono"]({"size": 20}, "test", None)
    assert bundle.info["validation_only"] is True and bundle.info["domain"] == "mono"
    assert list(bundle.classnames) == list(synth.CLASSNAMES)
    assert list(bundle.templates) == list(synth.TEMPLATES)
    assert "validation_only" not in factories["synth-photo"]({"size": 5}, "test", None).info


def test_world_never_mixes_in_the_validation_domain(factories):
    with pytest.raises(RecipeError) as info:
        factories["synth-world"]({"mix": {"mono": 1}}, "train", None)
    assert info.value.key == "data.mix.mono"
