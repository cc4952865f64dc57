"""Caption (retrieval) datasets: ``synth-captions``, ``csv`` and ``hf`` with ``mode = "captions"``.

Every one must honour the same item contract: ``{"image", "caption", "captions", "image_id"}``
with ``caption == captions[0]``, and ``info = {"kind": "captions", "captions": [...]}``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Sequence, Value
from datasets import Image as HFImage
from PIL import Image

from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_cli.sdk.contracts import SkippedItem
from tracer_plugins.datasets import synth
from tracer_plugins.datasets.synth import captions as synth_captions_text
from tracer_plugins.datasets.synth.classification import domain_factory
from tracer_plugins.datasets.files import make_csv
from tracer_plugins.datasets.hf import make_hf


def _check_contract(bundle, n_items):
    assert bundle.has_captions and bundle.info["kind"] == "captions"
    assert len(bundle.dataset) == len(bundle.info["captions"]) == n_items
    for i in range(n_items):
        item = bundle.dataset[i]
        assert item["captions"] == bundle.info["captions"][i]
        assert item["caption"] == item["captions"][0] and item["image_id"] == i
        assert isinstance(item["image"], torch.Tensor)


# --------------------------------------------------------------------------- synth-captions


def test_synth_captions_contract_and_defaults():
    bundle = synth.synth_captions({"size": 12, "seed": 3}, "test")
    _check_contract(bundle, 12)
    assert list(bundle.classnames) == list(synth.CLASSNAMES)
    assert all(len(c) == 3 for c in bundle.info["captions"])
    assert all(len(set(c)) == len(c) for c in bundle.info["captions"])  # distinct phrasings
    assert bundle.info["domain"] == "photo" and bundle.info["captions_per_image"] == 3
    item = bundle.dataset[5]
    assert item["image"].shape == (3, 32, 32) and item["label"] == int(bundle.dataset.labels[5])
    assert synth.DEFAULT_CAPTION_SIZE == {"train": 4000, "test": 1000}


def test_synth_captions_share_images_and_first_caption_with_the_domain_dataset():
    spec = {"size": 40, "seed": 2}
    captions = synth.synth_captions({**spec, "domain": "cartoon"}, "train")
    cartoon = domain_factory("cartoon")(spec, "train")  # what synth-cartoon returns
    np.testing.assert_array_equal(captions.dataset.images, cartoon.dataset.images)
    assert [c[0] for c in captions.info["captions"]] == cartoon.dataset.captions


@pytest.mark.parametrize("domain", ["photo", "sketch", "noisy", "mono"])
def test_synth_captions_describe_the_true_attributes(domain):
    bundle = synth.synth_captions({"size": 60, "domain": domain, "captions_per_image": 6},
                                  "test")
    seed = synth.split_seed(0, "test")
    *_, attrs = synth.render(domain, 60, seed, return_attributes=True)
    nouns = " ".join(synth_captions_text._DOMAIN_NOUNS[domain]).split()
    placed = 0
    for caps, attr in zip(bundle.info["captions"], attrs):
        assert len(caps) == 6
        for caption in caps:
            words = caption.replace(",", "").split()
            assert attr["shape"] in words
            assert not set(words) & (set(synth.CLASSNAMES) - {attr["shape"]})
            colours = set(words) & set(synth.COLOURS)
            assert colours <= ({attr["colour"]} if attr["colour"] else set())
            assert set(words) & set(synth.SIZES) <= {attr["size"]}
            for position, phrase in synth_captions_text._POSITION_PHRASE.items():
                # A phrase ends the caption or comes before another phrase ("at the top" is
                # also the start of "at the top left").
                if re.search(re.escape(phrase) + r"( on | in |$)", caption):
                    assert position == attr["position"], caption
                    placed += 1
            assert set(words) & set(nouns), caption  # names the domain's look
    assert placed > 60  # positions are named often enough for this test to mean something
    if domain in ("sketch", "mono"):
        assert not any(set(c.split()) & set(synth.COLOURS)
                       for caps in bundle.info["captions"] for c in caps)


def test_synth_captions_are_seeded_and_extend():
    three = synth.synth_captions({"size": 30, "seed": 1}, "train").info["captions"]
    again = synth.synth_captions({"size": 30, "seed": 1}, "train").info["captions"]
    five = synth.synth_captions({"size": 300, "seed": 1, "captions_per_image": 5},
                                "train").info["captions"]
    other = synth.synth_captions({"size": 30, "seed": 2}, "train").info["captions"]
    assert three == again
    assert [c[:3] for c in five[:30]] == three  # more captions, more images: a prefix
    assert three != other
    # The extra captions come from their own stream, so the same image gets other phrasings
    # than its second caption merely re-rolled from the first caption's draws.
    assert len({c[1] for c in three}) > 20


def test_synth_captions_colours_option():
    bundle = synth.synth_captions({"size": 40, "colours": ["red"]}, "train")
    words = {w for caps in bundle.info["captions"] for c in caps for w in c.split()}
    assert "red" in words and not words & (set(synth.COLOURS) - {"red"})
    assert bundle.info["colours"] == ["red"]


def _colour_words(captions: list[list[str]]) -> list[set[str]]:
    return [{w for c in caps for w in c.split()} & set(synth.COLOURS) for caps in captions]


def test_synth_captions_colour_bias_ties_shapes_to_colours_deterministically():
    spec = {"size": 1000, "seed": 4, "domain": "photo", "colour_bias": 0.99}
    tied, again = synth.synth_captions(spec, "train"), synth.synth_captions(spec, "train")
    assert tied.info["colour_bias"] == 0.99
    np.testing.assert_array_equal(tied.dataset.images, again.dataset.images)  # same seed, same
    assert tied.info["captions"] == again.info["captions"]
    # Shape i comes in colour i % 8 (the classification world's class colours): every colour a
    # caption names is its shape's in all but about 1% of the images.
    own = [synth.COLOURS[label % len(synth.COLOURS)] for label in tied.dataset.labels]
    named = [(colours, mine) for colours, mine in zip(_colour_words(tied.info["captions"]), own)
             if colours]
    assert len(named) > 900
    off = sum(colours != {mine} for colours, mine in named) / len(named)
    assert off < 0.03
    # Without the option (the OOD sets) the colour is independent of the shape: about 7 in 8
    # images show another one.
    plain = synth.synth_captions({k: v for k, v in spec.items() if k != "colour_bias"}, "test")
    free = [(c, synth.COLOURS[label % len(synth.COLOURS)])
            for c, label in zip(_colour_words(plain.info["captions"]), plain.dataset.labels) if c]
    assert sum(c != {mine} for c, mine in free) / len(free) > 0.7
    assert "colour_bias" not in plain.info


def test_synth_captions_without_a_tie_keep_their_images():
    spec = {"size": 50, "seed": 4}
    base = synth.synth_captions(spec, "train")
    zero = synth.synth_captions({**spec, "colour_bias": 0}, "train")
    np.testing.assert_array_equal(base.dataset.images, zero.dataset.images)
    assert base.info["captions"] == zero.info["captions"] and "colour_bias" not in zero.info
    tied = synth.synth_captions({**spec, "colour_bias": 1.0}, "train")
    assert tied.dataset.labels.tolist() == base.dataset.labels.tolist()  # only colours move
    with pytest.raises(RecipeError) as err:  # sketches draw no colour
        synth.synth_captions({**spec, "domain": "sketch", "colour_bias": 0.5}, "train")
    assert err.value.key == "data.colour_bias"


@pytest.mark.parametrize("spec, key", [
    ({"colour_bias": 1.5}, "data.colour_bias"),
    ({"captions_per_image": 0}, "data.captions_per_image"),
    ({"captions_per_image": 9}, "data.captions_per_image"),
    ({"domain": "painting"}, "data.domain"),
    ({"domain": "photo-narrow"}, "data.domain"),
    ({"colours": ["teal"]}, "data.colours"),
    ({"captions": 3}, "data.captions"),
])
def test_synth_captions_bad_options(spec, key):
    with pytest.raises(RecipeError) as err:
        synth.synth_captions({"size": 5, **spec}, "train")
    assert err.value.key == key


# --------------------------------------------------------------------------- csv


def _image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color=(value, 0, 0)).save(path)
    return path


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_csv_captions_group_rows_by_image_in_first_appearance_order(tmp_path):
    _image(tmp_path / "img" / "b.png", 1)
    _image(tmp_path / "img" / "a.png", 2)
    path = _csv(tmp_path / "caps.csv", "filepath,caption\nimg/b.png,a dog\nimg/a.png,a cat\n"
                                       "img/b.png, a brown dog \n./img/a.png,\"a cat, asleep\"\n")
    bundle = make_csv({"path": str(path), "mode": "captions"}, "train", None)
    _check_contract(bundle, 2)
    assert bundle.info["captions"] == [["a dog", "a brown dog"], ["a cat", "a cat, asleep"]]
    assert list(bundle.classnames) == [] and list(bundle.templates) == []
    assert bundle.dataset[1]["image"][0, 0, 0] == pytest.approx(2 / 255)  # a.png
    assert (bundle.info["num_rows"], bundle.info["num_images"]) == (4, 2)


def test_csv_captions_custom_columns_and_split(tmp_path):
    _image(tmp_path / "x.png")
    _csv(tmp_path / "test.tsv", "title\tpath\nsome text\tx.png\n")
    bundle = make_csv({"path": str(tmp_path / "{split}.tsv"), "mode": "captions",
                       "delimiter": "\t", "image_column": "path", "caption_column": "title"},
                      "test", None)
    assert bundle.info["captions"] == [["some text"]]


def test_csv_captions_unreadable_image_is_skipped(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = _csv(tmp_path / "c.csv", "filepath,caption\nbroken.png,text\n")
    item = make_csv({"path": str(path), "mode": "captions"}, "train", None).dataset[0]
    assert isinstance(item, SkippedItem) and "broken.png" in item.source


def test_csv_captions_missing_column(tmp_path):
    _image(tmp_path / "a.png")
    path = _csv(tmp_path / "c.csv", "filepath,title\na.png,text\n")
    with pytest.raises(RecipeError) as err:
        make_csv({"path": str(path), "mode": "captions", "_path": "data.eval.coco"},
                 "test", None)
    assert err.value.key == "data.eval.coco.caption_column"
    assert "'caption'" in str(err.value) and "filepath, title" in str(err.value)


def test_csv_captions_empty_caption_cells(tmp_path):
    _image(tmp_path / "a.png")
    path = _csv(tmp_path / "c.csv", "filepath,caption\na.png,text\na.png,  \na.png,\n")
    with pytest.raises(MissingResourceError, match=r"'caption' cell on line\(s\) 3, 4"):
        make_csv({"path": str(path), "mode": "captions"}, "train", None)


def test_csv_captions_missing_images_listed(tmp_path):
    rows = "".join(f"gone{i}.png,text {i}\n" for i in range(7))
    path = _csv(tmp_path / "c.csv", "filepath,caption\n" + rows)
    with pytest.raises(MissingResourceError) as err:
        make_csv({"path": str(path), "mode": "captions"}, "train", None)
    message = str(err.value)
    assert "7 image file(s)" in message and "gone0.png" in message and "2 more" in message


@pytest.mark.parametrize("text", ["", "filepath,caption\n"])
def test_csv_captions_empty_file(tmp_path, text):
    path = _csv(tmp_path / "c.csv", text)
    with pytest.raises(MissingResourceError, match="no data rows"):
        make_csv({"path": str(path), "mode": "captions"}, "train", None)


@pytest.mark.parametrize("spec, key", [
    ({"label_column": "label"}, "data.label_column"),
    ({"classnames": ["a"]}, "data.classnames"),
    ({"templates": ["a {}."]}, "data.templates"),
])
def test_csv_captions_reject_class_options(tmp_path, spec, key):
    with pytest.raises(RecipeError, match="not used with mode") as err:
        make_csv({"path": str(tmp_path / "c.csv"), "mode": "captions", **spec}, "train", None)
    assert err.value.key == key


def test_csv_unknown_mode(tmp_path):
    with pytest.raises(RecipeError, match="allowed: classification, captions") as err:
        make_csv({"path": str(tmp_path / "c.csv"), "mode": "retrieval"}, "train", None)
    assert err.value.key == "data.mode"


# --------------------------------------------------------------------------- hf


def _images(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (8, 8), color=(30 * i, 0, 0)) for i in range(n)]


def test_hf_captions_list_column_flickr_style(tmp_path):
    features = Features({"image": HFImage(), "caption": Sequence(Value("string")),
                         "filename": Value("string")})
    Dataset.from_dict({"image": _images(3),
                       "caption": [["a dog", "a brown dog"], ["a cat"], [" two birds ", "birds"]],
                       "filename": ["0.jpg", "1.jpg", "2.jpg"]},
                      features=features).save_to_disk(str(tmp_path / "flickr"))
    bundle = make_hf({"path": str(tmp_path / "flickr"), "mode": "captions"}, "test", None)
    _check_contract(bundle, 3)
    assert bundle.info["captions"] == [["a dog", "a brown dog"], ["a cat"], ["two birds", "birds"]]
    assert list(bundle.classnames) == [] and list(bundle.templates) == []
    assert bundle.dataset[2]["image"][0, 0, 0] == pytest.approx(60 / 255)


def test_hf_captions_string_column(tmp_path):
    Dataset.from_dict({"img": _images(2), "text": ["one", "two"]},
                      features=Features({"img": HFImage(), "text": Value("string")})
                      ).save_to_disk(str(tmp_path / "d"))
    bundle = make_hf({"path": str(tmp_path / "d"), "mode": "captions", "image_column": "img",
                      "caption_column": "text"}, "train", None)
    assert bundle.info["captions"] == [["one"], ["two"]]
    assert bundle.dataset[1]["caption"] == "two"


@pytest.fixture
def plain_hf(tmp_path):
    path = tmp_path / "d"
    Dataset.from_dict({"image": _images(3), "caption": [["a"], [], ["b", " "]],
                       "label": [0, 1, 2]},
                      features=Features({"image": HFImage(),
                                         "caption": Sequence(Value("string")),
                                         "label": Value("int64")})).save_to_disk(str(path))
    return path


def test_hf_captions_empty_captions_listed(plain_hf):
    with pytest.raises(MissingResourceError, match=r"row\(s\) 1, 2"):
        make_hf({"path": str(plain_hf), "mode": "captions"}, "train", None)


def test_hf_captions_column_of_wrong_type_and_missing_column(plain_hf):
    with pytest.raises(RecipeError, match="holds int values") as err:
        make_hf({"path": str(plain_hf), "mode": "captions", "caption_column": "label"},
                "train", None)
    assert err.value.key == "data.caption_column"
    with pytest.raises(RecipeError) as err:
        make_hf({"path": str(plain_hf), "mode": "captions", "caption_column": "sentences"},
                "train", None)
    assert err.value.key == "data.caption_column" and "image, caption, label" in str(err.value)


def test_hf_captions_reject_class_options(plain_hf):
    with pytest.raises(RecipeError, match="not used with mode") as err:
        make_hf({"path": str(plain_hf), "mode": "captions", "label_column": "label"},
                "train", None)
    assert err.value.key == "data.label_column"
