"""The helpers the dataset plugins share (``tracer_plugins.datasets.common``).

The plugins' own tests cover them through every dataset; these pin the shared contract itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.layouts import png
from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_cli.sdk.contracts import SkippedItem
from tracer_plugins.datasets import common


class _Files(common.LazyImageDataset):
    """A minimal subclass: one file per item, its index as the only other field."""

    def __init__(self, paths: list[Path]):
        super().__init__(lambda image: image.size)
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def source(self, index: int) -> Path:
        return self.paths[index]

    def read(self, index: int) -> tuple[Image.Image, dict]:
        return common.open_rgb(self.paths[index]), {"index": index}


def test_lazy_dataset_transforms_and_skips(tmp_path):
    good, bad, gone = tmp_path / "good.png", tmp_path / "bad.png", tmp_path / "gone.png"
    good.write_bytes(png(size=5))
    bad.write_bytes(png(size=5)[:30])  # a truncated file
    data = _Files([good, bad, gone])
    assert data[0] == {"image": (5, 5), "index": 0}
    for index, path in ((1, bad), (2, gone)):
        skipped = data[index]
        assert isinstance(skipped, SkippedItem) and skipped.source == str(path)
        assert skipped.reason.split(":")[0] in {"OSError", "FileNotFoundError",
                                                "UnidentifiedImageError", "SyntaxError"}


def test_lazy_dataset_needs_source_and_read():
    class Incomplete(common.LazyImageDataset):
        def __len__(self) -> int:
            return 0

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(lambda image: image)


def test_list_datasets_item_shapes(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png(size=4))
    rows = common.ImageListDataset([(path, 3, None), (path, 1, "a cat")], lambda image: "x")
    assert rows[0] == {"image": "x", "label": 3}
    assert rows[1] == {"image": "x", "label": 1, "caption": "a cat"}
    captions = common.CaptionListDataset([path], [["one", "two"]], lambda image: "x")
    assert captions[0] == {"image": "x", "caption": "one", "captions": ["one", "two"],
                           "image_id": 0}


def test_preview_and_extensions():
    assert common.preview(list(range(3))) == "0, 1, 2"
    assert common.preview(list(range(8))) == "0, 1, 2, 3, 4, ... (3 more)"
    opts = common.options_for({"extensions": ["PNG", ".Jpg"], "_path": "data.ood"})
    assert common.read_extensions(opts) == (".png", ".jpg")
    with pytest.raises(RecipeError) as err:
        common.read_extensions(common.options_for({"extensions": [], "_path": "data.ood"}))
    assert err.value.key == "data.ood.extensions"


def test_root_resolution_and_error(tmp_path, monkeypatch):
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path))
    opts = common.options_for({"_path": "data.id"})
    root, origin = common.resolve_root(opts, "things")
    assert root == tmp_path / "things" and common.DATA_ENV in origin
    where = common.Where("things", root, origin, ("<root>/", "  a/", "  b/"), "data.id.root")
    with pytest.raises(MissingResourceError) as err:
        common.data_dir(where, ("sub",), root_ok=True)
    assert "does not exist" in str(err.value) and "data.id.root" in str(err.value)
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    assert common.data_dir(where, ("sub",), root_ok=False) == root / "sub"
    assert common.subdirs(root) == ["sub"]
