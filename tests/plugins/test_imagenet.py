"""The ImageNet-family dataset plugins on fake trees in tmp_path.

The ImageNet-style trees need every class folder, so they hold 1000 (or 200) folders with one
tiny image each; they are built once per module.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from tests.layouts import class_tree, label_of, png, timm_list
from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_cli.sdk.host import PluginHost
from tracer_plugins.datasets import flowers102, imagenet, objectnet
from tracer_plugins.datasets.imagenet import (
    make_imagenet, make_imagenet_a, make_imagenet_r, make_imagenet_sketch, make_imagenet_v2)


WNIDS = timm_list("imagenet_synsets.txt")
R_WNIDS = timm_list("imagenet_r_synsets.txt")
A_WNIDS = timm_list("imagenet_a_synsets.txt")
NAMES = list(open_clip.IMAGENET_CLASSNAMES)


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    class_tree(root / "val", WNIDS)
    for i in (1, 2):  # class 999 gets three images, for max_per_class
        (root / "val" / WNIDS[999] / f"{i}.JPEG").write_bytes(png())
    return root


@pytest.fixture(scope="module")
def r_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("r")
    class_tree(root / "imagenet-r", R_WNIDS, suffix=".jpg")
    (root / "imagenet-r" / "README.txt").write_text("files next to the folders are ignored")
    return root


@pytest.fixture(scope="module")
def a_root(tmp_path_factory) -> Path:
    # The class folders sit in the root itself.
    return class_tree(tmp_path_factory.mktemp("a"), A_WNIDS, suffix=".jpg")


# --------------------------------------------------------------------------- ImageNet family


def test_imagenet_labels_names_and_items(imagenet_root):
    bundle = make_imagenet({"root": str(imagenet_root), "_path": "data.id"}, "test", None)
    assert len(bundle.dataset) == 1002
    assert list(bundle.classnames) == NAMES and bundle.class_subset is None
    for k in (0, 1, 517, 999):
        assert label_of(bundle, WNIDS[k]) == k
    item = bundle.dataset[0]
    assert set(item) == {"image", "label"} and item["label"] == 0
    assert isinstance(item["image"], torch.Tensor) and item["image"].shape == (3, 8, 8)
    assert bundle.info["root"] == str(imagenet_root / "val")


def test_openai_templates_are_80_format_strings(imagenet_root):
    bundle = make_imagenet({"root": str(imagenet_root)}, "test", None)
    assert len(bundle.templates) == 80
    assert all(isinstance(t, str) and t.count("{}") == 1 for t in bundle.templates)
    assert bundle.templates[0].format("dog") == open_clip.OPENAI_IMAGENET_TEMPLATES[0]("dog")


def test_template_choices(imagenet_root):
    simple = make_imagenet({"root": str(imagenet_root), "templates": "simple"}, "test", None)
    assert len(simple.templates) == len(open_clip.SIMPLE_IMAGENET_TEMPLATES)
    assert all(t.count("{}") == 1 for t in simple.templates)
    own = make_imagenet({"root": str(imagenet_root), "templates": ["a {}.", "art of {}"]},
                        "test", None)
    assert list(own.templates) == ["a {}.", "art of {}"]
    for bad in ("fancy", ["no placeholder"]):
        with pytest.raises(RecipeError) as err:
            make_imagenet({"root": str(imagenet_root), "templates": bad, "_path": "data.id"},
                          "test", None)
        assert err.value.key == "data.id.templates"
    with pytest.raises(RecipeError, match="openai"):
        make_imagenet({"root": str(imagenet_root), "templates": "fancy"}, "test", None)


def test_max_per_class_and_extensions(imagenet_root):
    bundle = make_imagenet({"root": str(imagenet_root), "max_per_class": 2}, "test", None)
    assert len(bundle.dataset) == 1001  # class 999: 2 of its 3 images
    with pytest.raises(MissingResourceError, match=r"no images \(\.png\)"):
        make_imagenet({"root": str(imagenet_root), "extensions": ["png"]}, "test", None)


def test_transform_receives_rgb_pil(imagenet_root):
    seen = []

    def transform(image):
        seen.append(image.mode)
        return torch.zeros(1)

    bundle = make_imagenet({"root": str(imagenet_root)}, "test", transform)
    assert bundle.dataset[3]["image"].shape == (1,) and seen == ["RGB"]


@pytest.mark.parametrize("factory,fixture,wnids,indices", [
    (make_imagenet_r, "r_root", R_WNIDS, "imagenet_r_indices.txt"),
    (make_imagenet_a, "a_root", A_WNIDS, "imagenet_a_indices.txt"),
])
def test_subset_datasets(factory, fixture, wnids, indices, request):
    bundle = factory({"root": str(request.getfixturevalue(fixture))}, "test", None)
    assert len(bundle.classnames) == 200 and len(bundle.dataset) == 200
    assert list(bundle.class_subset) == [int(i) for i in timm_list(indices)]
    for i, index in enumerate(bundle.class_subset):
        assert bundle.classnames[i] == NAMES[index] and WNIDS[index] == sorted(wnids)[i]
    for w in (wnids[0], wnids[77], wnids[-1]):
        assert label_of(bundle, w) == sorted(wnids).index(w)
    assert len(bundle.templates) == 80


def test_imagenet_v2_labels_are_folder_numbers(tmp_path):
    class_tree(tmp_path / "imagenetv2-matched-frequency-format-val",
               [str(i) for i in range(1000)], suffix=".jpeg")
    bundle = make_imagenet_v2({"root": str(tmp_path)}, "test", None)
    assert len(bundle.dataset) == 1000 and list(bundle.classnames) == NAMES
    for k in (0, 9, 10, 100, 999):  # numeric, not lexicographic, order
        assert label_of(bundle, str(k)) == k


def test_tracer_data_fallback(tmp_path, monkeypatch):
    class_tree(tmp_path / "imagenet-sketch" / "sketch", WNIDS)
    monkeypatch.setenv("TRACER_DATA", str(tmp_path))
    bundle = make_imagenet_sketch({}, "test", None)
    assert len(bundle.dataset) == 1000 and label_of(bundle, WNIDS[321]) == 321
    assert bundle.info["root"] == str(tmp_path / "imagenet-sketch" / "sketch")


def test_home_fallback_when_nothing_is_set(tmp_path, monkeypatch):
    monkeypatch.delenv("TRACER_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MissingResourceError) as err:
        make_imagenet_r({"_path": "data.ood"}, "test", None)
    message = str(err.value)
    assert str(tmp_path / "data" / "imagenet-r") in message
    assert "neither data.ood.root nor TRACER_DATA is set" in message


# --------------------------------------------------------------------------- errors


def test_missing_root_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(MissingResourceError) as err:
        make_imagenet_r({"root": str(missing), "_path": "data.ood"}, "test", None)
    message = str(err.value)
    assert message.startswith("imagenet-r: the root does not exist")
    assert f"tried: {missing} (from data.ood.root)" in message
    assert "imagenet-r/n01443537/<image>.jpg" in message  # the layout sketch
    assert 'set data.ood.root = "/path/to/imagenet-r"' in message and "TRACER_DATA" in message
    assert "on the command line --set data.ood.root=/path/to/imagenet-r" in message


def test_tracer_data_path_is_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACER_DATA", str(tmp_path))
    with pytest.raises(MissingResourceError) as err:
        make_imagenet_v2({}, "test", None)
    assert f"tried: {tmp_path / 'imagenet-v2'} (from TRACER_DATA={tmp_path})" in str(err.value)
    assert "1000 folders named 0 ... 999" in str(err.value)


def test_imagenet_split_folder_required(imagenet_root):
    with pytest.raises(MissingResourceError) as err:
        make_imagenet({"root": str(imagenet_root)}, "train", None)
    message = str(err.value)
    assert "the root has no train/ folder" in message and "train/n01440764/" in message


def test_wrong_number_of_class_folders(tmp_path, imagenet_root):
    class_tree(tmp_path / "imagenet-r", R_WNIDS[:5])
    with pytest.raises(MissingResourceError) as err:
        make_imagenet_r({"root": str(tmp_path)}, "test", None)
    message = str(err.value)
    assert "has 5 class folders where 200 are expected" in message
    assert "the 200 ImageNet-R wnids" in message and f"missing: {R_WNIDS[5]}" in message
    # ImageNet val given as ImageNet-R: 1000 folders, 800 of them foreign
    with pytest.raises(MissingResourceError, match="1000 class folders where 200 are expected"):
        make_imagenet_r({"root": str(imagenet_root / "val")}, "test", None)


def test_folders_that_are_not_the_expected_wnids(tmp_path):
    folder = class_tree(tmp_path / "imagenet-a", A_WNIDS[1:] + ["cats"])
    with pytest.raises(MissingResourceError) as err:
        make_imagenet_a({"root": str(tmp_path)}, "test", None)
    assert "unexpected: cats" in str(err.value) and f"missing: {A_WNIDS[0]}" in str(err.value)
    (folder / "cats").rename(folder / A_WNIDS[0])
    (folder / "empty-ok").mkdir()
    with pytest.raises(MissingResourceError, match="unexpected: empty-ok"):
        make_imagenet_a({"root": str(tmp_path)}, "test", None)


def test_no_class_folders(tmp_path):
    (tmp_path / "sketch").mkdir()
    with pytest.raises(MissingResourceError, match="has no class folders"):
        make_imagenet_sketch({"root": str(tmp_path)}, "test", None)


def test_unknown_key_before_disk(tmp_path):
    with pytest.raises(RecipeError) as err:
        make_imagenet({"root": str(tmp_path / "none"), "max_per_clas": 3, "_path": "data.id"},
                      "test", None)
    assert err.value.key == "data.id.max_per_clas" and "max_per_class" in str(err.value)


def test_registered_through_the_hook():
    # ObjectNet and Flowers-102 have their own modules; together the three register what the
    # one imagenet module used to.
    host = PluginHost(load_entry_points=False, plugins=(imagenet, objectnet, flowers102))
    assert host.datasets.names() == ["flowers102", "imagenet", "imagenet-a", "imagenet-r",
                                     "imagenet-sketch", "imagenet-v2", "objectnet"]
    assert host.datasets.get("imagenet-r").factory is make_imagenet_r


def test_imagenet_module_registers_the_imagenet_family_only():
    host = PluginHost(load_entry_points=False, plugins=(imagenet,))
    assert host.datasets.names() == ["imagenet", "imagenet-a", "imagenet-r", "imagenet-sketch",
                                     "imagenet-v2"]
