"""The ObjectNet dataset plugin on a fake ``objectnet-1.0`` tree in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest

from tests.layouts import class_tree, framed_png, label_of, timm_list
from tracer_cli.errors import MissingResourceError
from tracer_cli.plugins import PluginHost
from tracer_plugins.datasets import objectnet
from tracer_plugins.datasets.objectnet import make_objectnet

WNIDS = timm_list("imagenet_synsets.txt")
NAMES = list(open_clip.IMAGENET_CLASSNAMES)


OBJECTNET_MAP = {"Alarm clock": "analog clock; digital clock",
                 "Backpack": "backpack, back pack, knapsack, packsack, rucksack, haversack",
                 "Banana": "banana"}
FOLDER_LABELS = {"alarm_clock": "Alarm clock", "backpack": "Backpack", "banana": "Banana",
                 "air_freshener": "Air freshener"}


def _objectnet(root: Path) -> Path:
    base = root / "objectnet-1.0"
    class_tree(base / "images", FOLDER_LABELS, suffix=".png", per_class=2, data=framed_png())
    (base / "mappings").mkdir()
    (base / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(OBJECTNET_MAP))
    (base / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(FOLDER_LABELS))
    return base


def test_objectnet_mapped_classes(tmp_path):
    _objectnet(tmp_path)
    bundle = make_objectnet({"root": str(tmp_path)}, "test", None)
    assert list(bundle.classnames) == ["Alarm clock", "Backpack", "Banana"]  # by folder
    assert len(bundle.dataset) == 6  # air_freshener is not an ImageNet class
    assert [label_of(bundle, f) for f in ("alarm_clock", "backpack", "banana")] == [0, 1, 2]
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


def test_registered_through_the_hook():
    host = PluginHost(load_entry_points=False, plugins=(objectnet,))
    assert host.datasets.names() == ["objectnet"]
    assert host.datasets.get("objectnet").factory is make_objectnet
