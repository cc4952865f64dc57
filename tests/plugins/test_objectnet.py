"""The ObjectNet dataset plugin on a fake ``objectnet-1.0`` tree in tmp_path: its classes, the
2-pixel border crop, and its scoring through ImageNet-1k (max over the mapped classes)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import open_clip
import pytest
import torch

from tests.conftest import LOGIT_TOLERANCE
from tests.layouts import class_tree, framed_png, label_of, timm_list
from tracer_cli.engine.modes import eval_mode
from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_cli.sdk.host import PluginHost
from tracer_plugins.backbones.openclip import make_backbone
from tracer_plugins.datasets import objectnet
from tracer_plugins.datasets.imagenet import imagenet_templates
from tracer_plugins.datasets.objectnet import make_objectnet
from tracer_plugins.tasks.classification import make_task, zero_shot_head

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
    indices = [clocks, [WNIDS.index("n02769748")], [WNIDS.index("n07753592")]]
    assert bundle.info["imagenet_indices"] == indices
    # The default (reference) protocol: scored through ImageNet-1k with the ImageNet prompts,
    # each class the max over its ImageNet classes ("Alarm clock": analog + digital clock).
    assert bundle.info["head"] == "imagenet" and bundle.class_subset is None
    assert bundle.class_groups == indices and list(bundle.parent_classnames) == NAMES
    assert [NAMES[i] for i in clocks] == ["analog clock", "digital clock"]
    assert list(bundle.templates) == imagenet_templates("openai")


def test_objectnet_crops_exactly_two_pixels_a_side(tmp_path):
    _objectnet(tmp_path)
    image = make_objectnet({"root": str(tmp_path)}, "test", None).dataset[0]["image"]
    # framed_png(8): a red ring, a green ring, blue inside; 2 pixels off each side leaves the
    # 4x4 blue inside, nothing of either ring and nothing of the inside lost.
    blue = torch.tensor([0, 90 / 255, 200 / 255])[:, None, None].expand(3, 4, 4)
    assert image.shape == (3, 4, 4)
    torch.testing.assert_close(image, blue, rtol=0, atol=1e-6)


def test_objectnet_head_option(tmp_path):
    _objectnet(tmp_path)
    bundle = make_objectnet({"root": str(tmp_path), "head": "objectnet"}, "test", None)
    assert list(bundle.classnames) == ["Alarm clock", "Backpack", "Banana"]
    assert bundle.class_groups is None and bundle.parent_classnames is None
    assert bundle.class_subset is None  # "Alarm clock" is two ImageNet classes
    with pytest.raises(RecipeError, match="data.head.*allowed: imagenet, objectnet"):
        make_objectnet({"root": str(tmp_path), "head": "wordnet"}, "test", None)


def test_objectnet_folder_keys_and_mapping_file(tmp_path):
    base = _objectnet(tmp_path / "data")
    mapping = tmp_path / "mine.json"
    mapping.write_text(json.dumps({"backpack": "backpack, back pack, knapsack, packsack, "
                                               "rucksack, haversack", "banana": "banana"}))
    bundle = make_objectnet({"root": str(base), "mapping_file": str(mapping),
                             "head": "objectnet"}, "test", None)
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


@pytest.mark.numerics
def test_objectnet_scored_as_the_max_over_its_imagenet_classes(tmp_path):
    """End to end through the classification task: each ObjectNet logit is the largest logit of
    the ImageNet classes it maps to, from a head of ImageNet names and prompts."""
    _objectnet(tmp_path)
    torch.manual_seed(0)
    backbone = make_backbone({"arch": "tracer-tiny-rn"})
    templates = ["a photo of a {}."]
    bundle = make_objectnet({"root": str(tmp_path), "templates": templates}, "test",
                            backbone.preprocess_eval)
    items = [bundle.dataset[i] for i in range(len(bundle.dataset))]
    batch = {"image": torch.stack([it["image"] for it in items]),
             "label": torch.tensor([it["label"] for it in items])}
    out = make_task({}).evaluate(backbone, backbone.model, {"objectnet": (bundle, [batch])},
                                 torch.device("cpu"), contextlib.nullcontext)["objectnet"]
    clock, backpack, banana = (NAMES.index(n) for n in ("analog clock", "backpack", "banana"))
    digital = NAMES.index("digital clock")
    columns = [clock, digital, backpack, banana]
    with torch.no_grad(), eval_mode(backbone.model):
        head = zero_shot_head(backbone, backbone.model, [NAMES[i] for i in columns], templates,
                              torch.device("cpu"), contextlib.nullcontext)
        imagenet = backbone.logit_scale(backbone.model).float() * (
            backbone.encode_image(backbone.model, batch["image"]).float() @ head.T)
    expected = torch.stack([torch.maximum(imagenet[:, 0], imagenet[:, 1]), imagenet[:, 2],
                            imagenet[:, 3]], dim=1)
    torch.testing.assert_close(out["logits"], expected, **LOGIT_TOLERANCE)
