"""Visual question answering in the VQAv2 file format, from local files (``vqav2``).

Three inputs, as the official release ships them:

* ``questions``: a JSON file ``{"questions": [{"image_id", "question", "question_id"}, ...]}``
  (``v2_OpenEnded_mscoco_{train,val}2014_questions.json``);
* ``annotations``: a JSON file ``{"annotations": [{"question_id", "image_id",
  "multiple_choice_answer", "answers": [{"answer", "answer_id", ...}], "answer_type",
  "question_type"}, ...]}`` (``v2_mscoco_{train,val}2014_annotations.json``). It is required:
  without answers there is nothing to train on or score;
* ``images``: the COCO image folder, files named by ``image_pattern`` (default
  ``COCO_{split}2014_{image_id:012d}.jpg``).

A ``{split}`` in any of the four is the COCO split, option ``coco_split``: ``"train"`` for tracer's
train split and ``"val"`` for its test split by default (VQAv2's test-dev and test-std answers are
not public, so val2014 is the usual held-out set). Every question is one item; the images are
opened lazily, and a file that cannot be decoded comes back as a
:class:`~tracer_cli.sdk.SkippedItem`.

Answers (the annotators' and the canonical ``multiple_choice_answer``) are normalized as the
official evaluation script (``vqaEval.py``) normalizes them, see :func:`normalize_answer`, so a
prediction compared with them is scored the way the VQA leaderboard scores it.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from tracer_cli.sdk import DatasetBundle, MissingResourceError, Options, RecipeError, hookimpl
from tracer_plugins.datasets.common import (
    LazyImageDataset, open_rgb, options_for, preview, resolve_transform, split_path)

DEFAULT_PATTERN = "COCO_{split}2014_{image_id:012d}.jpg"
DEFAULT_COCO_SPLIT = {"train": "train", "test": "val"}

# --- answer normalization (the rules of the official VQA evaluation) ----------------------------

# Marks deleted, or turned into a space, by the official script; note that ' . : % are not here.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
                "@", "`", ",", "?", "!")
_DIGIT_COMMA = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit: "2.5" keeps its point
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                 "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# Apostrophes restored in common contractions typed without them.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't",
    "couldve": "could've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd",
    "itll": "it'll", "maam": "ma'am", "mightnt": "mightn't", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "oclock": "o'clock",
    "oughtnt": "oughtn't", "shant": "shan't", "shouldnt": "shouldn't", "shouldve": "should've",
    "thats": "that's", "thered": "there'd", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldnt": "wouldn't",
    "wouldve": "would've", "yall": "y'all", "youd": "you'd", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


def normalize_answer(text: str) -> str:
    """``text`` normalized as the official VQA evaluation normalizes answers.

    In order: newlines and tabs become spaces and the ends are stripped; each punctuation mark of
    :data:`_PUNCTUATION` is deleted when it touches a space (or anywhere, when the text holds a
    digit-comma-digit such as "1,000"), else replaced by a space ("black-and-white" -> "black and
    white"); periods not followed by a digit are deleted; then, word by word in lower case, number
    words zero..ten (and "none") become digits, the articles a/an/the are dropped, and common
    contractions typed without an apostrophe get it back ("dont" -> "don't").
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    delete_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for mark in _PUNCTUATION:
        touches_space = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if delete_all or touches_space else " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBER_WORDS.get(word, word) for word in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words if word not in _ARTICLES)


def majority_answer(answers: list[str]) -> str:
    """The most common of ``answers``; ties go to the one listed first."""
    return Counter(answers).most_common(1)[0][0]


# --- reading the files --------------------------------------------------------------------------


def _load_entries(path: Path, key: str, option: str, example: str) -> list[dict[str, Any]]:
    """The ``key`` list of the JSON file at ``path`` (named by option ``option``)."""
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise MissingResourceError(f"vqav2 dataset: {option} file {path} {what}; set '{option}' "
                                   f"to the VQAv2 {option} JSON (e.g. {example}); '{{split}}' in "
                                   "the path becomes the COCO split")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MissingResourceError(f"vqav2 dataset: {option} file {path} is not valid JSON "
                                   f"({exc})") from exc
    entries = data.get(key) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise MissingResourceError(f"vqav2 dataset: {option} file {path} has no '{key}' list "
                                   f"(or an empty one); expected {{\"{key}\": [...]}} as in "
                                   f"{example}")
    return entries


def _check_fields(entries: list[Any], fields: tuple[str, ...], path: Path) -> None:
    """Every entry is a dict with ``fields``; its ids (fields ending in ``_id``) are integers."""
    for index, entry in enumerate(entries):
        missing = [f for f in fields if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise MissingResourceError(f"vqav2 dataset: entry {index} of {path} lacks "
                                       f"{', '.join(repr(f) for f in missing)}; every entry needs "
                                       f"{', '.join(fields)}")
        for field in fields:
            value = entry[field]
            if field.endswith("_id") and (isinstance(value, bool) or not isinstance(value, int)):
                raise MissingResourceError(f"vqav2 dataset: entry {index} of {path} has "
                                           f"{field} {value!r}; VQAv2 ids are integers")


def _answers_of(annotation: dict[str, Any], path: Path) -> tuple[str, list[str]]:
    """(canonical answer, all annotator answers) of one annotation, normalized."""
    raw = annotation.get("answers") or []
    answers = [normalize_answer(str(a["answer"])) for a in raw
               if isinstance(a, dict) and "answer" in a]
    canonical = annotation.get("multiple_choice_answer")
    if canonical is not None:
        canonical = normalize_answer(str(canonical))
    elif answers:
        canonical = majority_answer(answers)
    else:
        raise MissingResourceError(f"vqav2 dataset: the annotation of question "
                                   f"{annotation['question_id']} in {path} has neither "
                                   "'multiple_choice_answer' nor any 'answers'")
    return canonical, answers or [canonical]


def _annotated(questions: list[dict[str, Any]], annotations: list[dict[str, Any]],
               paths: dict[str, Path]) -> list[dict[str, Any]]:
    """Each question joined with its annotation; a question without one is an error."""
    by_id = {a["question_id"]: a for a in annotations}
    missing = [q["question_id"] for q in questions if q["question_id"] not in by_id]
    if missing:
        raise MissingResourceError(
            f"vqav2 dataset: {len(missing)} question(s) of {paths['questions']} have no "
            f"annotation in {paths['annotations']} (question_id {preview(missing)}); set "
            "'annotations' to the annotations file of the same split as 'questions'")
    rows = []
    for q in questions:
        a = by_id[q["question_id"]]
        if a["image_id"] != q["image_id"]:
            raise MissingResourceError(
                f"vqav2 dataset: question {q['question_id']} is about image {q['image_id']} in "
                f"{paths['questions']} but image {a['image_id']} in {paths['annotations']}; "
                "the two files do not belong together")
        canonical, answers = _answers_of(a, paths["annotations"])
        rows.append({"question_id": int(q["question_id"]), "image_id": int(q["image_id"]),
                     "question": str(q["question"]), "answer": canonical, "answers": answers,
                     "answer_type": a.get("answer_type"), "question_type": a.get("question_type")})
    return rows


def _image_files(rows: list[dict[str, Any]], folder: Path, pattern: str,
                 coco_split: str) -> dict[int, Path]:
    """The image file of every image id, checked to exist."""
    files = {r["image_id"]: folder / pattern.format(image_id=r["image_id"], split=coco_split)
             for r in rows}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise MissingResourceError(
            f"vqav2 dataset: {len(missing)} image file(s) do not exist: {preview(missing)}; set "
            f"'images' to the COCO image folder (e.g. coco/{{split}}2014) and 'image_pattern' to "
            f"its file names (now {pattern!r}, with {{split}} = {coco_split!r})")
    return files


# --- options, dataset and factory ---------------------------------------------------------------


def _check_pattern(opts: Options, pattern: str) -> None:
    try:
        first = pattern.format(image_id=1, split="train")
        second = pattern.format(image_id=2, split="train")
    except (KeyError, IndexError, ValueError) as exc:
        raise RecipeError(opts.key("image_pattern"),
                          f"cannot be filled in ({type(exc).__name__}: {exc}); allowed "
                          "placeholders: {image_id} (with a format such as {image_id:012d}) and "
                          "{split}") from exc
    if first == second:
        raise RecipeError(opts.key("image_pattern"), f"{pattern!r} must contain {{image_id}}; "
                                                     "otherwise every question reads one file")


def _read_options(opts: Options, split: str) -> dict[str, Any]:
    """Every vqav2 option, read (and unknown keys rejected) before any file is opened."""
    if split not in DEFAULT_COCO_SPLIT:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    coco_split = opts.str("coco_split", default=DEFAULT_COCO_SPLIT[split])
    paths = {name: split_path(opts.str(name), coco_split)
             for name in ("questions", "annotations", "images")}
    pattern = opts.str("image_pattern", default=DEFAULT_PATTERN)
    size = opts.int("size", default=None, minimum=1)
    opts.done()
    _check_pattern(opts, pattern)
    return {"paths": paths, "pattern": pattern, "coco_split": coco_split, "size": size}


class VQADataset(LazyImageDataset):
    """One item per question: ``{"image", "question", "answer", "answers", "question_id",
    "image_id"}``, the image opened lazily from its file."""

    def __init__(self, rows: list[dict[str, Any]], files: dict[int, Path],
                 transform: Callable[[Any], Any]):
        super().__init__(transform)
        self.rows, self.files = rows, files

    def __len__(self) -> int:
        return len(self.rows)

    def source(self, index: int) -> Path:
        return self.files[self.rows[index]["image_id"]]

    def read(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        row = self.rows[index]
        return open_rgb(self.source(index)), {
            "question": row["question"], "answer": row["answer"],
            "answers": list(row["answers"]), "question_id": row["question_id"],
            "image_id": row["image_id"]}


def make_vqav2(spec: dict[str, Any], split: str,
               transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """A VQA dataset from VQAv2 question and annotation files and a COCO image folder."""
    opts = options_for(spec)
    o = _read_options(opts, split)
    paths = o["paths"]
    questions = _load_entries(paths["questions"], "questions", "questions",
                              "v2_OpenEnded_mscoco_val2014_questions.json")
    _check_fields(questions, ("image_id", "question", "question_id"), paths["questions"])
    questions = questions[:o["size"]]
    annotations = _load_entries(paths["annotations"], "annotations", "annotations",
                                "v2_mscoco_val2014_annotations.json")
    _check_fields(annotations, ("question_id", "image_id"), paths["annotations"])
    rows = _annotated(questions, annotations, paths)
    if not paths["images"].is_dir():
        raise MissingResourceError(f"vqav2 dataset: image folder {paths['images']} does not "
                                   "exist; set 'images' to the COCO image folder (e.g. "
                                   "coco/{split}2014)")
    files = _image_files(rows, paths["images"], o["pattern"], o["coco_split"])
    return DatasetBundle(
        dataset=VQADataset(rows, files, resolve_transform(transform)),
        classnames=[], templates=[], has_captions=False,
        info={"kind": "vqa", "answers": [r["answer"] for r in rows],
              "questions": [r["question"] for r in rows],
              "answer_types": [r["answer_type"] for r in rows],
              "question_types": [r["question_type"] for r in rows],
              "source": "vqav2", "split": split, "coco_split": o["coco_split"],
              **{f"{name}_path": str(path) for name, path in paths.items()},
              "num_questions": len(rows), "num_images": len(files)})


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("vqav2", make_vqav2)
