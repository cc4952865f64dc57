"""The ``imagefolder`` and ``csv`` dataset plugins on tiny trees and CSV files built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_cli.sdk.host import PluginHost
from tracer_plugins.datasets import files
from tracer_plugins.datasets.files import make_csv, make_imagefolder


def _image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L" if value % 2 else "RGB", (8, 8), color=value).save(path)
    return path


def _tree(root: Path, classes: dict[str, int], suffix: str = ".png") -> Path:
    """``root/<class>/<i><suffix>`` with ``classes[name]`` images per class."""
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            _image(root / name / f"{i}{suffix}", value=10 * c + i)
    return root


def _csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- imagefolder


def test_imagefolder_classes_labels_and_items(tmp_path):
    root = _tree(tmp_path / "pets", {"tabby_cat": 2, "dog": 3})
    bundle = make_imagefolder({"root": str(root), "_path": "data.train"}, "train", None)
    assert list(bundle.classnames) == ["dog", "tabby cat"]  # sorted folders, '_' -> ' '
    assert list(bundle.templates) == ["a photo of a {}."]
    assert not bundle.has_captions
    assert len(bundle.dataset) == 5
    labels = [bundle.dataset[i]["label"] for i in range(5)]
    assert labels == [0, 0, 0, 1, 1]
    item = bundle.dataset[4]
    assert set(item) == {"image", "label"}
    # Grayscale files come back as RGB tensors through the default ToTensor.
    assert isinstance(item["image"], torch.Tensor) and item["image"].shape == (3, 8, 8)


def test_imagefolder_uses_given_transform(tmp_path):
    root = _tree(tmp_path / "d", {"a": 1})
    seen = []

    def transform(image):
        seen.append((image.mode, image.size))
        return torch.zeros(1)

    bundle = make_imagefolder({"root": str(root)}, "test", transform)
    assert bundle.dataset[0]["image"].shape == (1,)
    assert seen == [("RGB", (8, 8))]


@pytest.mark.parametrize("test_dir", ["test", "val"])
def test_imagefolder_split_subfolders(tmp_path, test_dir):
    _tree(tmp_path / "d" / "train", {"a": 3, "b": 3})
    _tree(tmp_path / "d" / test_dir, {"a": 1, "b": 1})
    train = make_imagefolder({"root": str(tmp_path / "d")}, "train", None)
    test = make_imagefolder({"root": str(tmp_path / "d")}, "test", None)
    assert (len(train.dataset), len(test.dataset)) == (6, 2)
    assert list(train.classnames) == list(test.classnames) == ["a", "b"]
    assert test.info["root"] == str(tmp_path / "d" / test_dir)


def test_imagefolder_split_placeholder(tmp_path):
    _tree(tmp_path / "train_data", {"a": 2, "b": 1})
    _tree(tmp_path / "test_data", {"a": 1, "b": 1})
    spec = {"root": str(tmp_path / "{split}_data")}
    assert len(make_imagefolder(spec, "train", None).dataset) == 3
    assert len(make_imagefolder(spec, "test", None).dataset) == 2


def test_imagefolder_missing_split_folder(tmp_path):
    _tree(tmp_path / "d" / "train", {"a": 1})
    with pytest.raises(MissingResourceError, match="no 'test' split") as err:
        make_imagefolder({"root": str(tmp_path / "d")}, "test", None)
    assert str(tmp_path / "d" / "test") in str(err.value)


def test_imagefolder_classnames_templates_and_extensions(tmp_path):
    root = _tree(tmp_path / "d", {"n01": 2, "n02": 1})
    _image(root / "n01" / "extra.jpg")
    (root / "n02" / "notes.txt").write_text("not an image")
    spec = {"root": str(root), "classnames": ["tench", "goldfish"],
            "templates": ["itap of a {}.", "a {} in the wild."], "extensions": ["PNG"]}
    bundle = make_imagefolder(spec, "train", None)
    assert list(bundle.classnames) == ["tench", "goldfish"]
    assert list(bundle.templates) == ["itap of a {}.", "a {} in the wild."]
    assert len(bundle.dataset) == 3  # the .jpg is not in 'extensions'


def test_imagefolder_classnames_length_mismatch(tmp_path):
    root = _tree(tmp_path / "d", {"a": 1, "b": 1})
    with pytest.raises(RecipeError) as err:
        make_imagefolder({"root": str(root), "classnames": ["x"], "_path": "data.id[0]"},
                         "test", None)
    assert err.value.key == "data.id[0].classnames"


def test_imagefolder_bad_template(tmp_path):
    root = _tree(tmp_path / "d", {"a": 1})
    with pytest.raises(RecipeError) as err:
        make_imagefolder({"root": str(root), "templates": ["no placeholder"]}, "test", None)
    assert err.value.key == "data.templates"


def test_imagefolder_missing_root_shows_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(MissingResourceError) as err:
        make_imagefolder({"root": str(missing), "_path": "data.ood[1]"}, "train", None)
    message = str(err.value)
    assert str(missing) in message and "does not exist" in message
    assert "<root>/<class name>/<image>.jpg" in message
    # the recipe key and the command-line form
    assert 'set data.ood[1].root = "/path/to/images" in the recipe' in message
    assert "--set data.ood[1].root=/path/to/images" in message


def test_imagefolder_no_classes_or_no_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingResourceError, match="no class folders"):
        make_imagefolder({"root": str(tmp_path / "empty")}, "train", None)
    root = _tree(tmp_path / "d", {"a": 1})
    (root / "b").mkdir()
    with pytest.raises(MissingResourceError, match="class folder\\(s\\) b"):
        make_imagefolder({"root": str(root)}, "train", None)


def test_imagefolder_unknown_key_names_key_path(tmp_path):
    root = _tree(tmp_path / "d", {"a": 1})
    with pytest.raises(RecipeError) as err:
        make_imagefolder({"root": str(root), "clasnames": ["x"], "_path": "data.ood[1]"},
                         "test", None)
    assert err.value.key == "data.ood[1].clasnames"
    assert "classnames" in str(err.value)  # the known keys are listed


def test_imagefolder_typo_reported_before_the_disk_is_read(tmp_path):
    with pytest.raises(RecipeError) as err:
        make_imagefolder({"root": str(tmp_path / "nowhere"), "extentions": [".png"]},
                         "train", None)
    assert err.value.key == "data.extentions" and "extensions" in str(err.value)


def test_imagefolder_requires_root():
    with pytest.raises(RecipeError) as err:
        make_imagefolder({"_path": "data.train"}, "train", None)
    assert err.value.key == "data.train.root"


# --------------------------------------------------------------------------- csv


def test_csv_text_labels_several_rows_per_image(tmp_path):
    _image(tmp_path / "imgs" / "a.png", 1)
    _image(tmp_path / "imgs" / "b.png", 2)
    path = _csv(tmp_path / "index.csv",
                "filepath,label\nimgs/a.png,zebra\nimgs/b.png,ant\nimgs/a.png,ant\n")
    bundle = make_csv({"path": str(path), "label_column": "label"}, "train", None)
    assert list(bundle.classnames) == ["ant", "zebra"]
    assert [bundle.dataset[i]["label"] for i in range(3)] == [1, 0, 0]
    assert not bundle.has_captions and "caption" not in bundle.dataset[0]
    assert bundle.dataset[2]["image"].shape == (3, 8, 8)
    assert bundle.info["num_rows"] == 3 and bundle.info["num_images"] == 2


def test_csv_integer_labels(tmp_path):
    _image(tmp_path / "x.png")
    path = _csv(tmp_path / "i.csv", "filepath,y\nx.png,2\nx.png,0\n")
    bundle = make_csv({"path": str(path), "label_column": "y"}, "train", None)
    assert list(bundle.classnames) == ["0", "1", "2"]
    assert [bundle.dataset[i]["label"] for i in range(2)] == [2, 0]
    named = make_csv({"path": str(path), "label_column": "y",
                      "classnames": ["cat", "dog", "owl"]}, "train", None)
    assert list(named.classnames) == ["cat", "dog", "owl"]
    with pytest.raises(RecipeError) as err:
        make_csv({"path": str(path), "label_column": "y", "classnames": ["cat"]}, "train", None)
    assert err.value.key == "data.classnames"


def test_csv_text_labels_with_classnames(tmp_path):
    _image(tmp_path / "x.png")
    path = _csv(tmp_path / "i.csv", "filepath,label\nx.png,dog\nx.png,cat\n")
    # Classnames that contain every label value define the order...
    by_name = make_csv({"path": str(path), "label_column": "label",
                        "classnames": ["dog", "bird", "cat"]}, "train", None)
    assert [by_name.dataset[i]["label"] for i in range(2)] == [0, 2]
    # ...otherwise they rename the sorted label values, like imagefolder's folder names.
    renamed = make_csv({"path": str(path), "label_column": "label",
                        "classnames": ["kitty", "puppy"]}, "train", None)
    assert list(renamed.classnames) == ["kitty", "puppy"]
    assert [renamed.dataset[i]["label"] for i in range(2)] == [1, 0]


def test_csv_captions_without_labels(tmp_path):
    _image(tmp_path / "a.png")
    path = _csv(tmp_path / "c.csv", 'filepath,text\na.png,"a red, square thing"\na.png,dot\n')
    bundle = make_csv({"path": str(path), "caption_column": "text"}, "train", None)
    assert bundle.has_captions and list(bundle.classnames) == []
    assert bundle.dataset[0]["caption"] == "a red, square thing"
    assert bundle.dataset[1]["label"] == -1
    with pytest.raises(RecipeError) as err:
        make_csv({"path": str(path), "caption_column": "text", "classnames": ["x"]},
                 "train", None)
    assert err.value.key == "data.classnames"


def test_csv_labels_and_captions(tmp_path):
    _image(tmp_path / "a.png")
    path = _csv(tmp_path / "c.csv", "img;cls;cap\na.png;cat;a cat\n")
    bundle = make_csv({"path": str(path), "image_column": "img", "label_column": "cls",
                       "caption_column": "cap", "delimiter": ";"}, "test", None)
    assert bundle.has_captions
    assert bundle.dataset[0]["label"] == 0 and bundle.dataset[0]["caption"] == "a cat"


def test_csv_split_placeholder_root_and_absolute_paths(tmp_path):
    _image(tmp_path / "images" / "a.png")
    absolute = _image(tmp_path / "elsewhere" / "b.png")
    _csv(tmp_path / "meta" / "train.csv", f"filepath,label\na.png,x\n{absolute},y\n")
    _csv(tmp_path / "meta" / "test.csv", "filepath,label\na.png,x\n")
    spec = {"path": str(tmp_path / "meta" / "{split}.csv"), "label_column": "label",
            "root": str(tmp_path / "images")}
    assert len(make_csv(spec, "train", None).dataset) == 2
    assert len(make_csv(spec, "test", None).dataset) == 1


def test_csv_missing_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(MissingResourceError, match="does not exist") as err:
        make_csv({"path": str(missing), "label_column": "label"}, "train", None)
    assert str(missing) in str(err.value)


def test_csv_missing_column_lists_present_columns(tmp_path):
    _image(tmp_path / "a.png")
    path = _csv(tmp_path / "c.csv", "path,label\na.png,x\n")
    with pytest.raises(RecipeError) as err:
        make_csv({"path": str(path), "label_column": "label", "_path": "data.train"},
                 "train", None)
    assert err.value.key == "data.train.image_column"
    assert "'filepath'" in str(err.value) and "path, label" in str(err.value)
    with pytest.raises(RecipeError) as err:
        make_csv({"path": str(path), "image_column": "path", "label_column": "class"},
                 "train", None)
    assert err.value.key == "data.label_column" and "'class'" in str(err.value)


def test_csv_missing_images_listed_at_construction(tmp_path):
    _image(tmp_path / "ok.png")
    rows = "".join(f"gone{i}.png,x\n" for i in range(8))
    path = _csv(tmp_path / "c.csv", "filepath,label\nok.png,x\n" + rows)
    with pytest.raises(MissingResourceError) as err:
        make_csv({"path": str(path), "label_column": "label"}, "train", None)
    message = str(err.value)
    assert "8 image file(s)" in message
    assert "gone0.png" in message and "3 more" in message
    assert str(tmp_path) in message  # says where relative paths were looked up


def test_csv_requires_label_or_caption(tmp_path):
    path = _csv(tmp_path / "c.csv", "filepath\na.png\n")
    with pytest.raises(RecipeError, match="label_column or caption_column"):
        make_csv({"path": str(path)}, "train", None)


def test_csv_empty_label_cell(tmp_path):
    _image(tmp_path / "a.png")
    path = _csv(tmp_path / "c.csv", "filepath,label\na.png,x\na.png,\n")
    with pytest.raises(MissingResourceError, match="line\\(s\\) 3"):
        make_csv({"path": str(path), "label_column": "label"}, "train", None)


def test_csv_unknown_key_names_key_path(tmp_path):
    _image(tmp_path / "a.png")
    path = _csv(tmp_path / "c.csv", "filepath,label\na.png,x\n")
    with pytest.raises(RecipeError) as err:
        make_csv({"path": str(path), "label_column": "label", "delimeter": ";",
                  "_path": "data.id[0]"}, "test", None)
    assert err.value.key == "data.id[0].delimeter"


def test_csv_typo_reported_before_the_file_is_read(tmp_path):
    with pytest.raises(RecipeError) as err:
        make_csv({"path": str(tmp_path / "nope.csv"), "labelcolumn": "y"}, "train", None)
    assert err.value.key == "data.labelcolumn" and "label_column" in str(err.value)


def test_registered_through_the_hook():
    host = PluginHost(load_entry_points=False, plugins=(files,))
    assert host.datasets.names() == ["csv", "imagefolder"]
    assert host.datasets.get("csv").factory is make_csv
