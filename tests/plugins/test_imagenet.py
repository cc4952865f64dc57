"""The ImageNet-family, ObjectNet and Flowers-102 dataset plugins on fake trees in tmp_path.

The ImageNet-style trees need every class folder, so they hold 1000 (or 200) folders with one
tiny image each; they are built once per module.
"""

from __future__ import annotations

import importlib.util
import io
import json
from importlib import resources
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image

from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_cli.plugins import PluginHost
from tracer_plugins.datasets import imagenet
from tracer_plugins.datasets.imagenet import (
    make_flowers102, make_imagenet, make_imagenet_a, make_imagenet_r, make_imagenet_sketch,
    make_imagenet_v2, make_objectnet)


def _timm(name: str) -> list[str]:
    return resources.files("timm.data").joinpath("_info").joinpath(name).read_text().split()


WNIDS = _timm("imagenet_synsets.txt")
R_WNIDS = _timm("imagenet_r_synsets.txt")
A_WNIDS = _timm("imagenet_a_synsets.txt")
NAMES = list(open_clip.IMAGENET_CLASSNAMES)


def _png(size: int = 8, border: bool = False) -> bytes:
    image = Image.new("RGB", (size, size), color=(0, 90, 200))
    if border:  # ObjectNet's red frame
        for i in range(size):
            for xy in ((i, 0), (i, size - 1), (0, i), (size - 1, i)):
                image.putpixel(xy, (255, 0, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _tree(folder: Path, classes, suffix: str = ".JPEG", per_class: int = 1,
          data: bytes | None = None) -> Path:
    """``folder/<class>/<i><suffix>``; the same encoded bytes everywhere keeps this fast."""
    data = data or _png()
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            (folder / name / f"{i}{suffix}").write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet")
    _tree(root / "val", WNIDS)
    for i in (1, 2):  # class 999 gets three images, for max_per_class
        (root / "val" / WNIDS[999] / f"{i}.JPEG").write_bytes(_png())
    return root


@pytest.fixture(scope="module")
def r_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("r")
    _tree(root / "imagenet-r", R_WNIDS, suffix=".jpg")
    (root / "imagenet-r" / "README.txt").write_text("files next to the folders are ignored")
    return root


@pytest.fixture(scope="module")
def a_root(tmp_path_factory) -> Path:
    return _tree(tmp_path_factory.mktemp("a"), A_WNIDS, suffix=".jpg")  # folders in root itself


def _label_of(bundle, folder: str) -> int:
    """The label of the (first) image stored under class folder ``folder``."""
    rows = bundle.dataset.rows
    return next(label for path, label, _ in rows if path.parent.name == folder)


# --------------------------------------------------------------------------- ImageNet family


def test_imagenet_labels_names_and_items(imagenet_root):
    bundle = make_imagenet({"root": str(imagenet_root), "_path": "data.id"}, "test", None)
    assert len(bundle.dataset) == 1002
    assert list(bundle.classnames) == NAMES and bundle.class_subset is None
    for k in (0, 1, 517, 999):
        assert _label_of(bundle, WNIDS[k]) == k
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
    assert list(bundle.class_subset) == [int(i) for i in _timm(indices)]
    for i, index in enumerate(bundle.class_subset):
        assert bundle.classnames[i] == NAMES[index] and WNIDS[index] == sorted(wnids)[i]
    for w in (wnids[0], wnids[77], wnids[-1]):
        assert _label_of(bundle, w) == sorted(wnids).index(w)
    assert len(bundle.templates) == 80


def test_imagenet_v2_labels_are_folder_numbers(tmp_path):
    _tree(tmp_path / "imagenetv2-matched-frequency-format-val", [str(i) for i in range(1000)],
          suffix=".jpeg")
    bundle = make_imagenet_v2({"root": str(tmp_path)}, "test", None)
    assert len(bundle.dataset) == 1000 and list(bundle.classnames) == NAMES
    for k in (0, 9, 10, 100, 999):  # numeric, not lexicographic, order
        assert _label_of(bundle, str(k)) == k


def test_tracer_data_fallback(tmp_path, monkeypatch):
    _tree(tmp_path / "imagenet-sketch" / "sketch", WNIDS)
    monkeypatch.setenv("TRACER_DATA", str(tmp_path))
    bundle = make_imagenet_sketch({}, "test", None)
    assert len(bundle.dataset) == 1000 and _label_of(bundle, WNIDS[321]) == 321
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
    _tree(tmp_path / "imagenet-r", R_WNIDS[:5])
    with pytest.raises(MissingResourceError) as err:
        make_imagenet_r({"root": str(tmp_path)}, "test", None)
    message = str(err.value)
    assert "has 5 class folders where 200 are expected" in message
    assert "the 200 ImageNet-R wnids" in message and f"missing: {R_WNIDS[5]}" in message
    # ImageNet val given as ImageNet-R: 1000 folders, 800 of them foreign
    with pytest.raises(MissingResourceError, match="1000 class folders where 200 are expected"):
        make_imagenet_r({"root": str(imagenet_root / "val")}, "test", None)


def test_folders_that_are_not_the_expected_wnids(tmp_path):
    folder = _tree(tmp_path / "imagenet-a", A_WNIDS[1:] + ["cats"])
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
    host = PluginHost(load_entry_points=False, plugins=(imagenet,))
    assert host.datasets.names() == ["flowers102", "imagenet", "imagenet-a", "imagenet-r",
                                     "imagenet-sketch", "imagenet-v2", "objectnet"]
    assert host.datasets.get("imagenet-r").factory is make_imagenet_r


# --------------------------------------------------------------------------- ObjectNet

OBJECTNET_MAP = {"Alarm clock": "analog clock; digital clock",
                 "Backpack": "backpack, back pack, knapsack, packsack, rucksack, haversack",
                 "Banana": "banana"}
FOLDER_LABELS = {"alarm_clock": "Alarm clock", "backpack": "Backpack", "banana": "Banana",
                 "air_freshener": "Air freshener"}


def _objectnet(root: Path) -> Path:
    base = root / "objectnet-1.0"
    _tree(base / "images", FOLDER_LABELS, suffix=".png", per_class=2, data=_png(border=True))
    (base / "mappings").mkdir()
    (base / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(OBJECTNET_MAP))
    (base / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(FOLDER_LABELS))
    return base


def test_objectnet_mapped_classes(tmp_path):
    _objectnet(tmp_path)
    bundle = make_objectnet({"root": str(tmp_path)}, "test", None)
    assert list(bundle.classnames) == ["Alarm clock", "Backpack", "Banana"]  # by folder
    assert len(bundle.dataset) == 6  # air_freshener is not an ImageNet class
    assert [_label_of(bundle, f) for f in ("alarm_clock", "backpack", "banana")] == [0, 1, 2]
    clocks = sorted(WNIDS.index(w) for w in ("n02708093", "n03196217"))
    assert bundle.info["imagenet_indices"] == [clocks, [WNIDS.index("n02769748")],
                                               [WNIDS.index("n07753592")]]
    assert bundle.class_subset is None  # "Alarm clock" is two ImageNet classes
    image = bundle.dataset[0]["image"]
    assert image.shape == (3, 6, 6) and image[0].max() < 0.5  # red frame cropped off


def test_objectnet_folder_keys_and_mapping_file(tmp_path):
    base = _objectnet(tmp_path / "data")
    mapping = tmp_path / "mine.json"
    mapping.write_text(json.dumps({"backpack": "backpack, back pack, knapsack, packsack, "
                                               "rucksack, haversack", "banana": "banana"}))
    bundle = make_objectnet({"root": str(base), "mapping_file": str(mapping)}, "test", None)
    assert list(bundle.classnames) == ["backpack", "banana"]
    assert list(bundle.class_subset) == [WNIDS.index("n02769748"), WNIDS.index("n07753592")]
    assert [NAMES[i] for i in bundle.class_subset] == ["backpack", "banana"]


def test_objectnet_errors(tmp_path):
    base = _objectnet(tmp_path)
    (base / "mappings" / "objectnet_to_imagenet_1k.json").unlink()
    with pytest.raises(MissingResourceError) as err:
        make_objectnet({"root": str(tmp_path)}, "test", None)
    assert "objectnet_to_imagenet_1k.json does not exist; set mapping_file" in str(err.value)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Banana": "banana; flying saucer"}))
    with pytest.raises(MissingResourceError, match="match no single ImageNet-1k class: flying"):
        make_objectnet({"root": str(tmp_path), "mapping_file": str(bad)}, "test", None)
    bad.write_text(json.dumps({"Teapot": "teapot"}))
    with pytest.raises(MissingResourceError, match="have no folder in .*: Teapot"):
        make_objectnet({"root": str(tmp_path), "mapping_file": str(bad)}, "test", None)
    with pytest.raises(MissingResourceError, match="objectnet-1.0/images/alarm_clock"):
        make_objectnet({"root": str(tmp_path / "none")}, "test", None)


# --------------------------------------------------------------------------- Flowers-102

FLOWER_NAMES = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]


def test_flowers_from_hf_copy(tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as HFImage

    features = Features({"image": HFImage(), "label": ClassLabel(names=FLOWER_NAMES)})
    images = [Image.new("RGB", (8, 8), color=(10 * i, 0, 0)) for i in range(4)]
    split = Dataset.from_dict({"image": images, "label": [0, 1, 2, 1]}, features=features)
    DatasetDict({"train": split, "test": split.select([0, 1])}).save_to_disk(str(tmp_path / "f"))
    bundle = make_flowers102({"path": str(tmp_path / "f")}, "train", None)
    assert list(bundle.classnames) == FLOWER_NAMES and len(bundle.dataset) == 4
    assert list(bundle.templates) == ["a photo of a {}, a type of flower."]
    assert bundle.dataset[3]["label"] == 1 and bundle.info["dataset"] == "flowers102"
    test = make_flowers102({"source": "hf", "path": str(tmp_path / "f"), "templates": ["{}"]},
                           "test", None)
    assert len(test.dataset) == 2 and list(test.templates) == ["{}"]


def test_flowers_source_choice_errors(tmp_path):
    with pytest.raises(RecipeError) as err:
        make_flowers102({"path": "x", "root": "y", "_path": "data.train"}, "train", None)
    assert err.value.key == "data.train.source"
    with pytest.raises(RecipeError, match="needs 'path'"):
        make_flowers102({"source": "hf"}, "train", None)
    with pytest.raises(RecipeError) as err:
        make_flowers102({"root": str(tmp_path)}, "train", None)
    assert err.value.key == "data.classnames_file" and "102 names" in str(err.value)


def _flowers_tree(root: Path) -> Path:
    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    for name in ("imagelabels.mat", "setid.mat"):
        (base / name).write_bytes(b"")
    return base


def test_flowers_torchvision_layout_errors(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"flower {i}" for i in range(102)))
    with pytest.raises(MissingResourceError) as err:
        make_flowers102({"root": str(tmp_path / "none"), "classnames_file": str(names)},
                        "test", None)
    assert "flowers-102/jpg/image_00001.jpg" in str(err.value)
    base = _flowers_tree(tmp_path)
    (base / "setid.mat").unlink()
    with pytest.raises(MissingResourceError, match="lacks setid.mat"):
        make_flowers102({"root": str(tmp_path), "classnames_file": str(names)}, "test", None)
    short = tmp_path / "short.txt"
    short.write_text("a\nb\n")
    (base / "setid.mat").write_bytes(b"")
    with pytest.raises(RecipeError, match="lists 2 names; Flowers-102 has 102"):
        make_flowers102({"root": str(tmp_path), "classnames_file": str(short)}, "test", None)


@pytest.mark.skipif(importlib.util.find_spec("scipy") is not None, reason="scipy is installed")
def test_flowers_torchvision_layout_needs_scipy(tmp_path):
    _flowers_tree(tmp_path)
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"flower {i}" for i in range(102)))
    with pytest.raises(MissingResourceError) as err:
        make_flowers102({"root": str(tmp_path), "classnames_file": str(names)}, "test", None)
    message = str(err.value)
    assert "pip install scipy" in message and 'source = "hf"' in message
