"""The Flowers-102 dataset plugin: a Hugging Face copy and the torchvision layout in tmp_path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_cli.sdk.host import PluginHost
from tracer_plugins.datasets import flowers102
from tracer_plugins.datasets.flowers102 import make_flowers102

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


def test_registered_through_the_hook():
    host = PluginHost(load_entry_points=False, plugins=(flowers102,))
    assert host.datasets.names() == ["flowers102"]
    assert host.datasets.get("flowers102").factory is make_flowers102
