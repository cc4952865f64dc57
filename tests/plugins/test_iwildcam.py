"""The ``iwildcam`` dataset plugin on a tiny fabricated WILDS v2.0 layout in tmp_path: splits, the
reference's English names and prompts, and both macro-F1s of its OOD splits."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch

from tests.layouts import IWILDCAM_CLASSES, IWILDCAM_ENGLISH, write_iwildcam
from tracer_cli.errors import EXIT_USAGE, MissingResourceError, RecipeError
from tracer_cli.commands.evaluate import summarize
from tracer_cli.results.metrics import classification_metrics
from tracer_cli.sdk.host import PluginHost
from tracer_cli.sdk.task_metrics import classification_spec
from tracer_plugins.datasets import iwildcam
from tracer_plugins.datasets.iwildcam import WILDS_SPLITS, make_iwildcam

NAMES = [name for name, _ in IWILDCAM_CLASSES]
COUNTS = {"train": 3, "id_val": 1, "id_test": 2, "val": 1, "test": 2}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_iwildcam(tmp_path_factory.mktemp("iwildcam"), COUNTS)


def _rows(bundle):
    return [(path.name, label) for path, label, _ in bundle.dataset.rows]


def _metadata(root):
    with open(root / "metadata.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("split", WILDS_SPLITS)
def test_each_wilds_split_reads_its_rows(root, split):
    bundle = make_iwildcam({"root": str(root), "split": split, "_path": "data.ood[0]"}, "test",
                           None)
    expected = [(r["filename"], int(r["y"])) for r in _metadata(root) if r["split"] == split]
    assert _rows(bundle) == expected and len(expected) == COUNTS[split] * len(NAMES)
    assert bundle.info["wilds_split"] == split and bundle.info["classes_present"] == len(NAMES)


def test_default_splits_labels_names_and_items(root):
    train = make_iwildcam({"root": str(root)}, "train", None)
    test = make_iwildcam({"root": str(root)}, "test", None)
    assert train.info["wilds_split"] == "train" and test.info["wilds_split"] == "test"  # OOD
    # The reference's names (English, lower-cased) and its two prompts.
    assert list(train.classnames) == list(IWILDCAM_ENGLISH) and train.info["names"] == "english"
    assert list(train.templates) == ["a photo of {}.", "{} in the wild."]
    assert sorted({label for _, label in _rows(train)}) == [0, 1, 2, 3]
    item = test.dataset[len(test.dataset) - 1]
    assert set(item) == {"image", "label"} and item["label"] == 3
    assert isinstance(item["image"], torch.Tensor) and item["image"].shape == (3, 8, 8)
    # Each class was drawn in its own colour: the label travels with its own image.
    assert item["image"][0, 0, 0].item() == pytest.approx(120 / 255)


def test_options_templates_and_max_per_class(root):
    bundle = make_iwildcam({"root": str(root), "templates": ["a {} on camera."],
                            "max_per_class": 1}, "train", None)
    assert list(bundle.templates) == ["a {} on camera."]
    assert [label for _, label in _rows(bundle)] == [0, 1, 2, 3]


def test_wilds_names_option(root):
    bundle = make_iwildcam({"root": str(root), "names": "wilds"}, "test", None)
    assert list(bundle.classnames) == NAMES  # categories.csv's Latin names, by y
    with pytest.raises(RecipeError, match="data.names.*allowed: english, wilds"):
        make_iwildcam({"root": str(root), "names": "latin"}, "test", None)


def test_english_names_come_from_the_labels_file(root, tmp_path):
    copy = _copy(root, tmp_path)
    moved = tmp_path / "elsewhere.csv"
    (copy / "labels.csv").rename(moved)
    # No labels.csv: one error naming the file, where to get it and the alternative.
    with pytest.raises(MissingResourceError, match=r"needs .*labels\.csv: the labels\.csv that "
                                                   r"WiSE-FT.*set names = \"wilds\""):
        make_iwildcam({"root": str(copy)}, "test", None)
    bundle = make_iwildcam({"root": str(copy), "labels_file": str(moved)}, "test", None)
    assert list(bundle.classnames) == list(IWILDCAM_ENGLISH)  # lower-cased; y = 99999 ignored
    assert make_iwildcam({"root": str(copy), "names": "wilds"}, "test", None).classnames == NAMES


def test_english_names_need_wilds_label_order(root, tmp_path):
    copy = _copy(root, tmp_path)
    _rewrite(copy / "categories.csv", lambda rows: rows[2].__setitem__(2, "puma concolor"))
    with pytest.raises(MissingResourceError, match=r"y=1: 'puma concolor' \(labels\.csv: 'tayassu "
                                                   r"pecari'\); set names = \"wilds\""):
        make_iwildcam({"root": str(copy)}, "test", None)
    assert make_iwildcam({"root": str(copy), "names": "wilds"}, "test", None).classnames[1] == \
        "puma concolor"
    more = [["y", "category_id", "name"], *([y, y, f"species {y}"] for y in range(5))]
    _rewrite(copy / "categories.csv", lambda rows: rows.__setitem__(slice(None), more))
    with pytest.raises(MissingResourceError, match=r"has no English name for label\(s\) 4 of "
                                                   r"categories\.csv's 5"):
        make_iwildcam({"root": str(copy)}, "test", None)


def test_wilds_folder_under_root_and_tracer_data(tmp_path, monkeypatch, root):
    shutil.copytree(root, tmp_path / "iwildcam" / "iwildcam_v2.0")
    monkeypatch.setenv("TRACER_DATA", str(tmp_path))
    bundle = make_iwildcam({}, "test", None)
    assert bundle.info["root"] == str(tmp_path / "iwildcam" / "iwildcam_v2.0")
    assert len(bundle.dataset) == COUNTS["test"] * len(NAMES)


def test_registered_through_the_hook():
    host = PluginHost(load_entry_points=False, plugins=(iwildcam,))
    assert host.datasets.names() == ["iwildcam"]
    entry = PluginHost().datasets.get("iwildcam")  # the installed entry point
    assert entry.factory is make_iwildcam and entry.distribution == "tracer-clip"


# --------------------------------------------------------------------------- errors


def test_missing_root_shows_the_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACER_DATA", str(tmp_path))
    with pytest.raises(MissingResourceError) as err:
        make_iwildcam({"_path": "data.train"}, "train", None)
    message = str(err.value)
    assert err.value.exit_code == EXIT_USAGE
    assert message.startswith("iwildcam: the root does not exist")
    assert f"tried: {tmp_path / 'iwildcam'} (from TRACER_DATA={tmp_path})" in message
    for part in ("metadata.csv (split, location_remapped, y, filename", "categories.csv (y, "
                 "category_id, name)", "train/<filename>", 'set data.train.root = "/path/to/'
                 'iwildcam"'):
        assert part in message


def test_home_fallback(tmp_path, monkeypatch):
    monkeypatch.delenv("TRACER_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MissingResourceError, match="neither data.id.root nor TRACER_DATA"):
        make_iwildcam({"_path": "data.id"}, "test", None)


def test_split_option_is_validated_before_the_disk(tmp_path):
    with pytest.raises(RecipeError) as err:
        make_iwildcam({"root": str(tmp_path / "none"), "split": "ood_test",
                       "_path": "data.ood[0]"}, "test", None)
    assert err.value.key == "data.ood[0].split"
    assert "allowed: train, id_val, id_test, val, test" in str(err.value)
    with pytest.raises(RecipeError, match="data.max_per_clas"):
        make_iwildcam({"root": str(tmp_path / "none"), "max_per_clas": 2}, "test", None)


def _copy(root, tmp_path):
    return shutil.copytree(root, tmp_path / "copy")


def _rewrite(path, edit):
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    edit(rows)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[0].__setitem__(rows[0].index("y"), "label"),
     "metadata.csv has no column(s) y (its header: <unnamed>, split"),
    (lambda rows: rows[1].__setitem__(1, "ood_test"), "line 2: split 'ood_test' is not a WILDS"),
    (lambda rows: rows[2].__setitem__(6, "9"), "line 3: label y = 9 is outside the 4 classes"),
    (lambda rows: rows[2].__setitem__(6, "deer"), "line 3: y = 'deer' is not an integer label"),
])
def test_malformed_metadata(root, tmp_path, edit, message):
    copy = _copy(root, tmp_path)
    _rewrite(copy / "metadata.csv", edit)
    with pytest.raises(MissingResourceError) as err:
        make_iwildcam({"root": str(copy)}, "test", None)
    assert message in str(err.value) and "expected layout:" in str(err.value)


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows.pop(2), "labels must be 0 ... 2; missing 1"),
    (lambda rows: rows[3].__setitem__(0, "1"), "line 4: label y = 1 is listed twice"),
    (lambda rows: rows[0].__setitem__(2, "species"), "categories.csv has no column(s) name"),
])
def test_malformed_categories(root, tmp_path, edit, message):
    copy = _copy(root, tmp_path)
    _rewrite(copy / "categories.csv", edit)
    with pytest.raises(MissingResourceError, match="expected layout") as err:
        make_iwildcam({"root": str(copy)}, "test", None)
    assert message in str(err.value)


def test_missing_files(root, tmp_path):
    copy = _copy(root, tmp_path)
    test_file = next(r["filename"] for r in _metadata(root) if r["split"] == "test")
    (copy / "train" / test_file).unlink()
    with pytest.raises(MissingResourceError, match=f"1 image.* of split 'test' .* {test_file}"):
        make_iwildcam({"root": str(copy)}, "test", None)
    make_iwildcam({"root": str(copy)}, "train", None)  # other splits are unaffected
    (copy / "categories.csv").unlink()
    shutil.rmtree(copy / "train")
    with pytest.raises(MissingResourceError, match="lacks categories.csv, train/"):
        make_iwildcam({"root": str(copy)}, "test", None)


# --------------------------------------------------------------------------- macro-F1 averages


def _move_class_3_out_of_val(rows):
    for row in rows[1:]:
        if row[1] == "val" and row[6] == "3":  # columns split, y
            row[1] = "id_val"


def test_ood_macro_f1_averages_by_hand(root, tmp_path):
    """Both macro-F1s of two OOD splits of a fabricated layout, and their averages, by hand."""
    copy = _copy(root, tmp_path)
    # No class-3 image in `val`: a class that is predicted there but absent.
    _rewrite(copy / "metadata.csv", _move_class_3_out_of_val)
    labels, preds = {}, {"val": [0, 3, 2], "test": [0, 0, 1, 0, 2, 2, 0, 3]}
    for split in preds:
        bundle = make_iwildcam({"root": str(copy), "split": split}, "test", None)
        labels[split] = [label for _, label, _ in bundle.dataset.rows]
    assert labels == {"val": [0, 1, 2], "test": [0, 0, 1, 1, 2, 2, 3, 3]}
    metrics = {s: classification_metrics(torch.eye(4)[preds[s]], torch.tensor(labels[s]))
               for s in preds}
    # val: F1 = 1, 0, 1 for classes 0-2 and 0 for class 3 (predicted once, never present).
    # test: F1 = 4/6, 2/3, 1, 2/3 for classes 0-3 (all present): both definitions agree.
    assert metrics["val"]["macro_f1"] == pytest.approx(2 / 4)  # the reference's: class 3 counts
    assert metrics["val"]["macro_f1_wilds"] == pytest.approx(2 / 3)  # WILDS': classes 0-2
    assert metrics["test"]["macro_f1"] == metrics["test"]["macro_f1_wilds"] == pytest.approx(3 / 4)
    summary = summarize(metrics, [], ["val", "test"], classification_spec("macro_f1"))
    assert summary["avg_ood_macro_f1"] == pytest.approx((2 / 4 + 3 / 4) / 2)
    assert summary["avg_ood_macro_f1_wilds"] == pytest.approx((2 / 3 + 3 / 4) / 2)
