"""The ``hf`` dataset plugin on tiny ``datasets`` objects saved into tmp_path (no network)."""

from __future__ import annotations

import io
import time

import datasets
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as HFImage
from PIL import Image

from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_plugins.datasets import hf
from tracer_plugins.datasets.hf import make_hf

NAMES = ["golden_retriever", "tabby_cat", "airplane"]


def _images(n: int, size: int = 8) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), color=(20 * i, 0, 255 - 20 * i)) for i in range(n)]


def _labelled(n: int) -> Dataset:
    features = Features({"image": HFImage(), "label": ClassLabel(names=NAMES)})
    return Dataset.from_dict({"image": _images(n), "label": [i % 3 for i in range(n)]},
                             features=features)


@pytest.fixture
def saved_dict(tmp_path):
    path = tmp_path / "pets"
    DatasetDict({"train": _labelled(6), "test": _labelled(3)}).save_to_disk(str(path))
    return path


def test_save_to_disk_dict_by_split(saved_dict):
    train = make_hf({"path": str(saved_dict), "_path": "data.train"}, "train", None)
    test = make_hf({"path": str(saved_dict)}, "test", None)
    assert (len(train.dataset), len(test.dataset)) == (6, 3)
    # ClassLabel names, underscores read as spaces
    assert list(train.classnames) == ["golden retriever", "tabby cat", "airplane"]
    assert list(train.templates) == ["a photo of a {}."]
    assert not train.has_captions
    item = train.dataset[4]
    assert set(item) == {"image", "label"} and item["label"] == 1
    assert isinstance(item["image"], torch.Tensor) and item["image"].shape == (3, 8, 8)


def test_transform_receives_rgb_pil(saved_dict):
    seen = []

    def transform(image):
        seen.append(image.mode)
        return torch.ones(2)

    bundle = make_hf({"path": str(saved_dict)}, "test", transform)
    seen.clear()  # construction decodes one image to check the column
    assert bundle.dataset[0]["image"].shape == (2,) and seen == ["RGB"]


def test_split_fallback_and_split_map(tmp_path):
    path = tmp_path / "d"
    DatasetDict({"train": _labelled(4), "validation": _labelled(2)}).save_to_disk(str(path))
    assert len(make_hf({"path": str(path)}, "test", None).dataset) == 2  # test -> validation
    mapped = make_hf({"path": str(path), "split_map": {"test": "train"}}, "test", None)
    assert len(mapped.dataset) == 4
    with pytest.raises(MissingResourceError) as err:
        make_hf({"path": str(path), "split_map": {"train": "extra"}, "_path": "data.train"},
                "train", None)
    assert "'extra'" in str(err.value) and "'validation'" in str(err.value)
    assert "data.train.split_map.train" in str(err.value)
    with pytest.raises(RecipeError) as err:
        make_hf({"path": str(path), "split_map": {"validation": "x"}}, "test", None)
    assert err.value.key == "data.split_map.validation" and "test, train" in str(err.value)


def test_single_saved_dataset_and_split_placeholder(tmp_path):
    _labelled(5).save_to_disk(str(tmp_path / "train"))
    _labelled(2).save_to_disk(str(tmp_path / "test"))
    spec = {"path": str(tmp_path / "{split}")}
    assert len(make_hf(spec, "train", None).dataset) == 5
    assert len(make_hf(spec, "test", None).dataset) == 2


def test_caption_column_without_labels(tmp_path):
    features = Features({"image": HFImage(), "text": Value("string")})
    data = Dataset.from_dict({"image": _images(3), "text": ["a", "b", "c"]}, features=features)
    data.save_to_disk(str(tmp_path / "caps"))
    bundle = make_hf({"path": str(tmp_path / "caps"), "caption_column": "text"}, "train", None)
    assert bundle.has_captions and list(bundle.classnames) == []
    item = bundle.dataset[1]
    assert (item["label"], item["caption"]) == (-1, "b")
    # An explicitly named label column must exist.
    with pytest.raises(RecipeError) as err:
        make_hf({"path": str(tmp_path / "caps"), "caption_column": "text",
                 "label_column": "label"}, "train", None)
    assert err.value.key == "data.label_column" and "image, text" in str(err.value)


def test_caption_column_with_labels(tmp_path):
    data = _labelled(3).add_column("caption", ["x", "y", "z"])
    data.save_to_disk(str(tmp_path / "both"))
    bundle = make_hf({"path": str(tmp_path / "both"), "caption_column": "caption"}, "test", None)
    assert bundle.has_captions
    assert bundle.dataset[2]["label"] == 2 and bundle.dataset[2]["caption"] == "z"


def test_string_labels_and_undecoded_images(tmp_path):
    buffers = []
    for image in _images(3):
        out = io.BytesIO()
        image.save(out, format="PNG")
        buffers.append({"bytes": out.getvalue(), "path": None})
    features = Features({"img": HFImage(decode=False), "species": Value("string")})
    data = Dataset.from_dict({"img": buffers, "species": ["owl", "cat", "owl"]},
                             features=features)
    data.save_to_disk(str(tmp_path / "raw"))
    bundle = make_hf({"path": str(tmp_path / "raw"), "image_column": "img",
                      "label_column": "species"}, "train", None)
    assert list(bundle.classnames) == ["cat", "owl"]
    assert [bundle.dataset[i]["label"] for i in range(3)] == [1, 0, 1]
    assert bundle.dataset[0]["image"].shape == (3, 8, 8)


def test_classnames_override_and_mismatch(saved_dict):
    bundle = make_hf({"path": str(saved_dict), "classnames": ["dog", "cat", "plane"],
                      "templates": ["a {} photo."]}, "test", None)
    assert list(bundle.classnames) == ["dog", "cat", "plane"]
    assert list(bundle.templates) == ["a {} photo."]
    with pytest.raises(RecipeError) as err:
        make_hf({"path": str(saved_dict), "classnames": ["dog"], "_path": "data.ood[0]"},
                "test", None)
    assert err.value.key == "data.ood[0].classnames"


def test_missing_image_column_and_unknown_key(saved_dict):
    with pytest.raises(RecipeError) as err:
        make_hf({"path": str(saved_dict), "image_column": "pixels"}, "test", None)
    assert err.value.key == "data.image_column" and "image, label" in str(err.value)
    with pytest.raises(RecipeError) as err:
        make_hf({"path": str(saved_dict), "splitmap": {}, "_path": "data.train"}, "test", None)
    assert err.value.key == "data.train.splitmap"


def test_typo_reported_before_loading(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecipeError) as err:
        make_hf({"path": "some-owner/some-dataset", "caption_colum": "text"}, "train", None)
    assert err.value.key == "data.caption_colum" and "caption_column" in str(err.value)


def test_name_key_points_to_path(saved_dict):
    with pytest.raises(RecipeError) as err:
        make_hf({"name": str(saved_dict)}, "test", None)
    assert err.value.key == "data.name" and "'path'" in str(err.value)


def test_local_imagefolder_through_load_dataset(tmp_path):
    for split, count in (("train", 2), ("test", 1)):
        for name in ("red_fox", "owl"):
            for i in range(count):
                folder = tmp_path / "tree" / split / name
                folder.mkdir(parents=True, exist_ok=True)
                _images(1)[0].save(folder / f"{i}.png")
    spec = {"path": str(tmp_path / "tree"), "cache_dir": str(tmp_path / "cache")}
    train = make_hf(spec, "train", None)
    assert len(train.dataset) == 4 and list(train.classnames) == ["owl", "red fox"]
    assert len(make_hf(spec, "test", None).dataset) == 2


def test_missing_local_path(tmp_path):
    missing = tmp_path / "not-saved"
    with pytest.raises(MissingResourceError) as err:
        make_hf({"path": str(missing)}, "train", None)
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)


def test_hub_name_offline_is_a_missing_resource(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so the id cannot resolve to a local folder
    before = datasets.config.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(MissingResourceError) as err:
        make_hf({"path": "no-such-owner/no-such-dataset", "cache_dir": str(tmp_path / "c")},
                "train", None)
    # Offline mode must short-circuit the hub client's retries (about 25 s without network).
    assert time.monotonic() - start < 15
    message = str(err.value)
    assert "no-such-owner/no-such-dataset" in message
    assert "save_to_disk" in message and "HF_DATASETS_OFFLINE=1" in message
    assert datasets.config.HF_HUB_OFFLINE == before  # the switch is undone afterwards


def test_registered_through_the_hook():
    seen = {}

    class Registrar:
        def add(self, name, factory):
            seen[name] = factory

    hf.tracer_register_datasets(registry=Registrar())
    assert seen == {"hf": make_hf}
