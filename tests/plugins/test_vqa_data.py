"""VQA datasets: ``synth-vqa`` (the embedded world) and ``vqav2`` (VQAv2 files in tmp_path).

Both must honour one item contract: ``{"image", "question", "answer", "answers", "question_id"}``
and ``info = {"kind": "vqa", "answers": [...], "questions": [...]}``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_cli.sdk.host import PluginHost
from tracer_cli.sdk.contracts import SkippedItem
from tracer_plugins.datasets import synth, vqav2
from tracer_plugins.datasets.synth import groups as synth_groups
from tracer_plugins.datasets.vqav2 import make_vqav2, normalize_answer


def _check_contract(bundle):
    assert not bundle.has_captions and bundle.info["kind"] == "vqa"
    assert list(bundle.classnames) == [] and list(bundle.templates) == []
    assert len(bundle.dataset) == len(bundle.info["answers"]) == len(bundle.info["questions"])
    ids = set()
    for i in range(len(bundle.dataset)):
        item = bundle.dataset[i]
        assert isinstance(item["image"], torch.Tensor)
        assert item["question"] == bundle.info["questions"][i]
        assert item["answer"] == bundle.info["answers"][i] and item["answer"] in item["answers"]
        assert isinstance(item["question_id"], int)
        ids.add(item["question_id"])
    assert len(ids) == len(bundle.dataset)


def _components(mask: np.ndarray) -> int:
    """Number of 8-connected components of a boolean mask (label propagation)."""
    labels = np.where(mask, np.arange(mask.size).reshape(mask.shape) + 1, 0)
    h, w = mask.shape
    while True:
        padded = np.pad(labels, 1)
        neighbours = np.max([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                             for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        spread = np.where(mask, neighbours, 0)
        if (spread == labels).all():
            return len(np.unique(labels[mask]))
        labels = spread


# --------------------------------------------------------------------------- synth-vqa


def test_synth_vqa_contract():
    bundle = synth.synth_vqa({"size": 40, "domains": ["photo", "sketch"]}, "test")
    _check_contract(bundle)
    assert len(bundle.dataset) == 40
    item = bundle.dataset[0]
    assert item["image"].shape == (3, 32, 32) and item["answers"] == [item["answer"]] * 10
    assert set(bundle.info["answers"]) <= set(bundle.info["answer_space"])
    assert bundle.info["num_images"] == len(set(bundle.dataset.image_ids))


def test_synth_vqa_answers_are_true_of_the_rendered_images():
    domains = ["photo", "sketch", "cartoon"]
    bundle = synth.synth_vqa({"size": 300, "domains": domains, "seed": 4}, "train")
    seed = synth.split_seed(4, "train")
    truth = {}
    for domain in domains:
        images, _, _, attrs = synth.render(domain, 200, seed, return_attributes=True)
        truth.update({image.tobytes(): a for image, a in zip(images, attrs)})
        images, attrs = synth.render_groups(domain, 200, seed)
        truth.update({image.tobytes(): a for image, a in zip(images, attrs)})
    data = bundle.dataset
    for i, (kind, answer) in enumerate(zip(bundle.info["question_kinds"], data.answers)):
        attrs = truth[data.images[data.image_ids[i]].tobytes()]
        expected = (synth.DOMAIN_ANSWERS[attrs["domain"]] if kind == "domain"
                    else str(attrs[kind]))
        assert answer == expected, (i, kind)
        assert not (kind == "colour" and attrs["domain"] == "sketch")
        assert (kind in ("size", "position")) <= ("position" in attrs)  # single-shape images
        assert (kind == "count") <= ("count" in attrs)  # group images


def test_synth_vqa_count_is_true_of_the_pixels():
    # Cartoon shapes have a dark outline and saturated fill on a pastel ground: the pixels with a
    # dark channel form one connected blob per shape.
    bundle = synth.synth_vqa({"size": 150, "domains": ["cartoon"], "kinds": ["count"],
                              "image_size": 64}, "test")
    data = bundle.dataset
    counts = Counter(data.answers)
    assert set(counts) == {"1", "2", "3"} and min(counts.values()) > 30
    for i in range(len(data)):
        pixels = data.images[data.image_ids[i]]
        assert _components(pixels.min(axis=2) < 0.45 * 255) == int(data.answers[i]), i


def test_synth_vqa_kinds_and_phrasings():
    bundle = synth.synth_vqa({"size": 600, "domains": ["photo", "sketch", "cartoon", "noisy"]},
                             "train")
    kinds = Counter(bundle.info["question_kinds"])
    assert set(kinds) == set(synth.QUESTION_KINDS)
    assert min(kinds.values()) > 600 / 6 / 2  # no kind starved
    texts = synth.question_texts(["photo"])
    for kind in synth.QUESTION_KINDS:
        asked = {q for q, k in zip(bundle.info["questions"], bundle.info["question_kinds"])
                 if k == kind}
        assert asked == set(texts[kind])  # every phrasing is used
    assert texts["domain"][0] == "is this a photo, a sketch, a cartoon or a noisy photo?"
    assert texts["size"][0] == "is the shape small, medium or large?"
    domain_answers = {a for a, k in zip(bundle.info["answers"], bundle.info["question_kinds"])
                      if k == "domain"}
    assert domain_answers == {"photo", "sketch", "cartoon", "noisy photo"}


def test_synth_vqa_questions_per_image_and_kinds_option():
    bundle = synth.synth_vqa({"size": 400, "questions_per_image": 3,
                              "kinds": ["count", "shape", "size", "position"]}, "train")
    kinds = bundle.info["question_kinds"]
    asked: dict[int, list[str]] = {}
    for image_id, kind in zip(bundle.dataset.image_ids, kinds):
        asked.setdefault(image_id, []).append(kind)
    for image_id, image_kinds in asked.items():
        if image_id == max(asked):
            continue  # the last image is cut short at 'size' questions
        if image_kinds[0] == "count":  # a group image: count first, then the other group kind
            assert image_kinds == ["count", "shape"]
        else:  # a single-shape image: the three single-shape kinds, in a random order
            assert sorted(image_kinds) == ["position", "shape", "size"]
    assert 0.2 < Counter(kinds)["count"] / len(kinds) < 0.3  # about one kind in four
    assert bundle.info["answer_space"][:10] == list(synth.CLASSNAMES)
    no_count = synth.synth_vqa({"size": 50, "kinds": ["shape", "colour"]}, "train")
    assert set(no_count.info["question_kinds"]) == {"shape", "colour"}
    only_count = synth.synth_vqa({"size": 30, "kinds": ["count"]}, "train")
    assert len(set(only_count.dataset.image_ids)) == 30  # one question per group image


def test_synth_vqa_mono_validation_domain():
    bundle = synth.synth_vqa({"size": 200, "domains": ["mono", "photo"],
                              "kinds": ["domain", "colour"]}, "test")
    pairs = set(zip(bundle.info["question_kinds"], bundle.info["answers"]))
    assert ("domain", "monochrome photo") in pairs and ("domain", "photo") in pairs
    assert bundle.info["domains"] == ["photo", "mono"]  # canonical order
    assert any("or a monochrome photo?" in q for q in bundle.info["questions"])


def test_synth_vqa_is_seeded_and_extends():
    small = synth.synth_vqa({"size": 100, "seed": 3}, "test")
    large = synth.synth_vqa({"size": 400, "seed": 3}, "test")
    other = synth.synth_vqa({"size": 100, "seed": 4}, "test")
    assert large.info["questions"][:100] == small.info["questions"]
    assert large.info["answers"][:100] == small.info["answers"]
    for i in range(0, 100, 7):
        np.testing.assert_array_equal(large.dataset[i]["image"], small.dataset[i]["image"])
    assert other.info["answers"] != small.info["answers"]
    train = synth.synth_vqa({"size": 100, "seed": 3}, "train")
    assert not np.array_equal(train.dataset.images[:10], small.dataset.images[:10])


def test_synth_vqa_default_sizes_build_in_seconds():
    start = time.monotonic()
    train = synth.synth_vqa({"seed": 11}, "train")
    assert time.monotonic() - start < 20  # about 1 s on one core
    assert len(train.dataset) == 6000 and train.info["num_images"] == 3000
    assert synth.DEFAULT_VQA_SIZE == {"train": 6000, "test": 2000}


@pytest.mark.parametrize("spec, key, match", [
    ({"domains": ["painting"]}, "data.domains", "allowed: photo"),
    ({"domains": []}, "data.domains", "at least one"),
    ({"kinds": ["weather"]}, "data.kinds", "allowed: shape, colour"),
    ({"domains": ["sketch", "mono"], "kinds": ["colour"]}, "data.kinds", "no colour"),
    ({"questions_per_image": 0}, "data.questions_per_image", ">= 1"),
    ({"question_kinds": ["shape"]}, "data.question_kinds", "unknown key"),
])
def test_synth_vqa_bad_options(spec, key, match):
    with pytest.raises(RecipeError, match=match) as err:
        synth.synth_vqa({"size": 10, **spec}, "train")
    assert err.value.key == key


def test_group_renders_are_deterministic_and_balanced():
    images, attrs = synth.render_groups("photo", 300, seed=1)
    synth_groups._render_groups_cached.cache_clear()
    again, attrs2 = synth.render_groups("photo", 300, seed=1)
    np.testing.assert_array_equal(images, again)
    assert attrs == attrs2 and images.shape == (300, 32, 32, 3)
    assert Counter(a["count"] for a in attrs[:250]) == {1: 84, 2: 83, 3: 83}
    single = synth.render("photo", 300, seed=1)[0]
    assert not np.array_equal(images, single)


# --------------------------------------------------------------------------- answer normalization


@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"), ("none", "0"), ("ten dogs", "10 dogs"),
    ("the dog", "dog"), ("A Cat", "cat"),
    ("dont know", "don't know"), ("isnt", "isn't"),
    ("black-and-white", "black and white"), ("left/right", "left right"),
    ("yes!", "yes"), ("hello, world", "hello world"), ("1,000", "1000"),
    ("2.5", "2.5"), ("U.S.", "us"), ("  Yes\n", "yes"), ("(red)", "red"),
])
def test_normalize_answer_follows_the_official_rules(raw, expected):
    assert normalize_answer(raw) == expected


# --------------------------------------------------------------------------- vqav2

QUESTIONS = [
    {"image_id": 9, "question": "How many dogs?", "question_id": 90},
    {"image_id": 9, "question": "What color is it?", "question_id": 91},
    {"image_id": 42, "question": "Is it raining?", "question_id": 420},
    {"image_id": 7, "question": "What is it?", "question_id": 70},
    {"image_id": 1234, "question": "Where?", "question_id": 12340},
]


def _answers(*texts):
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1}
            for i, t in enumerate(texts)]


ANNOTATIONS = [
    {"question_id": 90, "image_id": 9, "multiple_choice_answer": "Two", "answer_type": "number",
     "question_type": "how many", "answers": _answers("two", "2", "Two", "3")},
    {"question_id": 91, "image_id": 9, "multiple_choice_answer": "black-and-white",
     "answer_type": "other", "question_type": "what color",
     "answers": _answers("black and white", "black-and-white", "gray")},
    {"question_id": 420, "image_id": 42, "answer_type": "yes/no", "question_type": "is it",
     "answers": _answers("no", "yes", "yes!", "No")},  # no multiple_choice_answer: 2-2 tie
    {"question_id": 70, "image_id": 7, "multiple_choice_answer": "the dog",
     "answers": _answers("dog")},
    {"question_id": 12340, "image_id": 1234, "multiple_choice_answer": "Outside",
     "answers": _answers("outside")},
    {"question_id": 999, "image_id": 5, "multiple_choice_answer": "x", "answers": []},  # unused
]


def _write(tmp_path: Path, coco_split: str = "train", questions=QUESTIONS,
           annotations=ANNOTATIONS) -> dict[str, str]:
    images = tmp_path / "coco" / f"{coco_split}2014"
    images.mkdir(parents=True, exist_ok=True)
    for image_id in {q["image_id"] for q in questions}:
        Image.new("RGB", (6, 4), color=(image_id % 256, 0, 0)).save(
            images / f"COCO_{coco_split}2014_{image_id:012d}.jpg", quality=100)
    (tmp_path / f"q_{coco_split}.json").write_text(json.dumps({"questions": questions}))
    (tmp_path / f"a_{coco_split}.json").write_text(json.dumps({"annotations": annotations}))
    return {"questions": str(tmp_path / "q_{split}.json"),
            "annotations": str(tmp_path / "a_{split}.json"),
            "images": str(tmp_path / "coco" / "{split}2014")}


def test_vqav2_items_and_normalized_answers(tmp_path):
    bundle = make_vqav2(_write(tmp_path), "train", None)
    _check_contract(bundle)
    assert bundle.info["answers"] == ["2", "black and white", "no", "dog", "outside"]
    assert bundle.info["questions"][0] == "How many dogs?"
    item = bundle.dataset[0]
    assert item["answers"] == ["2", "2", "2", "3"]
    assert (item["question_id"], item["image_id"]) == (90, 9)
    assert item["image"].shape == (3, 4, 6)
    assert bundle.dataset[2]["answers"] == ["no", "yes", "yes", "no"]
    assert bundle.info["answer_types"][:3] == ["number", "other", "yes/no"]
    assert bundle.info["answer_types"][3] is None
    assert (bundle.info["num_questions"], bundle.info["num_images"]) == (5, 4)
    assert bundle.info["coco_split"] == "train"


def test_vqav2_test_split_reads_val_files_by_default(tmp_path):
    spec = _write(tmp_path, coco_split="val")
    bundle = make_vqav2(spec, "test", None)
    assert len(bundle.dataset) == 5 and bundle.info["coco_split"] == "val"
    assert bundle.info["images_path"] == str(tmp_path / "coco" / "val2014")
    with pytest.raises(MissingResourceError, match="q_train.json"):
        make_vqav2(spec, "train", None)  # no train files were written


def test_vqav2_pattern_coco_split_and_size(tmp_path):
    spec = _write(tmp_path, coco_split="val")
    folder = tmp_path / "coco" / "val2014"
    for path in folder.iterdir():
        path.rename(folder / f"{int(path.stem.split('_')[-1])}.jpg")
    bundle = make_vqav2({**spec, "coco_split": "val", "image_pattern": "{image_id}.jpg",
                         "size": 2}, "train", None)
    assert len(bundle.dataset) == 2 and bundle.dataset[1]["question_id"] == 91


def test_vqav2_unreadable_image_is_skipped(tmp_path):
    spec = _write(tmp_path)
    broken = tmp_path / "coco" / "train2014" / "COCO_train2014_000000000042.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    item = make_vqav2(spec, "train", None).dataset[2]
    assert isinstance(item, SkippedItem) and str(broken) == item.source


def test_vqav2_missing_files_say_what_to_provide(tmp_path):
    spec = _write(tmp_path)
    with pytest.raises(MissingResourceError) as err:
        make_vqav2({**spec, "questions": str(tmp_path / "nope.json")}, "train", None)
    assert "nope.json" in str(err.value) and "set 'questions'" in str(err.value)
    with pytest.raises(MissingResourceError, match="set 'annotations'"):
        make_vqav2({**spec, "annotations": str(tmp_path / "nope.json")}, "train", None)
    with pytest.raises(MissingResourceError, match="image folder .* does not exist"):
        make_vqav2({**spec, "images": str(tmp_path / "elsewhere")}, "train", None)
    (tmp_path / "coco" / "train2014" / "COCO_train2014_000000000007.jpg").unlink()
    with pytest.raises(MissingResourceError) as err:
        make_vqav2(spec, "train", None)
    assert "1 image file(s)" in str(err.value) and "COCO_train2014_000000000007.jpg" in str(
        err.value) and "image_pattern" in str(err.value)


def test_vqav2_question_without_annotation(tmp_path):
    spec = _write(tmp_path, annotations=ANNOTATIONS[1:3])
    with pytest.raises(MissingResourceError) as err:
        make_vqav2(spec, "train", None)
    message = str(err.value)
    assert "3 question(s)" in message and "question_id 90, 70, 12340" in message


def test_vqav2_mismatched_files(tmp_path):
    wrong = [dict(ANNOTATIONS[0], image_id=10), *ANNOTATIONS[1:]]
    with pytest.raises(MissingResourceError, match="do not belong together"):
        make_vqav2(_write(tmp_path, annotations=wrong), "train", None)


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    (json.dumps({"data": []}), "no 'questions' list"),
    (json.dumps({"questions": []}), "no 'questions' list"),
    (json.dumps({"questions": [{"image_id": 1, "question": "?"}]}), "lacks 'question_id'"),
    (json.dumps({"questions": [{"image_id": "a", "question": "?", "question_id": 1}]}),
     "ids are integers"),
])
def test_vqav2_malformed_questions_file(tmp_path, content, match):
    spec = _write(tmp_path)
    (tmp_path / "q_train.json").write_text(content)
    with pytest.raises(MissingResourceError, match=match):
        make_vqav2(spec, "train", None)


@pytest.mark.parametrize("pattern, match", [
    ("{image}.jpg", "allowed placeholders"),
    ("{image_id:q}.jpg", "allowed placeholders"),
    ("all.jpg", "must contain {image_id}"),
])
def test_vqav2_bad_pattern(tmp_path, pattern, match):
    with pytest.raises(RecipeError, match=match) as err:
        make_vqav2({**_write(tmp_path), "image_pattern": pattern, "_path": "data.eval.vqa"},
                   "train", None)
    assert err.value.key == "data.eval.vqa.image_pattern"


def test_vqav2_required_and_unknown_keys(tmp_path):
    spec = _write(tmp_path)
    with pytest.raises(RecipeError) as err:
        make_vqav2({k: v for k, v in spec.items() if k != "annotations"}, "train", None)
    assert err.value.key == "data.annotations" and "required" in str(err.value)
    with pytest.raises(RecipeError) as err:
        make_vqav2({**spec, "image_dir": "x"}, "train", None)
    assert err.value.key == "data.image_dir"


def test_vqav2_registered_through_the_hook():
    host = PluginHost(load_entry_points=False, plugins=(vqav2,))
    assert host.datasets.names() == ["vqav2"]
    assert host.datasets.get("vqav2").factory is make_vqav2
