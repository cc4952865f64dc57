"""iWildCam (WILDS v2.0): camera-trap photos of 182 animal classes, read from a local copy.

The layout is the one the WILDS package downloads (``iwildcam_v2.0/``), found at ``<root>`` (the
``root`` option, else ``$TRACER_DATA/iwildcam``, else ``~/data/iwildcam``); ``<root>`` may also
hold it as ``iwildcam_v2.0/``::

    <root>/metadata.csv     one row per image: split, location_remapped, y, filename, ... (WILDS'
                            columns; only split, y and filename are read)
    <root>/categories.csv   y,category_id,name: the class of each label y, 0 ... C-1
    <root>/train/<filename> every image of every split (WILDS keeps them all in train/)

Splits are WILDS': ``train`` (243 training cameras), ``id_val`` / ``id_test`` (new photos from
those cameras), ``val`` / ``test`` (other cameras: the OOD sets; ``test`` is the usual OOD
number). The ``split`` option picks one; without it tracer's train split reads ``train`` and its
test split reads ``test``, so an ID evaluation names its split explicitly::

    id = [{ name = "iwildcam", split = "id_test", label = "iwildcam-id" }]
    ood = [{ name = "iwildcam", split = "test", label = "iwildcam-ood" }]

Class names and prompts are by default those of the paper's reference code (TRACER's, which takes
them from WiSE-FT and FLYP): the English name of each class, lower-cased ("white-lipped
peccary"), and the two prompts :data:`IWILDCAM_TEMPLATES`. WILDS' download names its classes only
in Latin (categories.csv's ``name``: "tayassu pecari"); the English names are in the
``labels.csv`` that WiSE-FT, FLYP and the TRACER reference ship
(``src/datasets/iwildcam_metadata/labels.csv``: ``y,category_id,name,english``). tracer does not
ship that third-party list: put it at ``<root>/labels.csv`` or point option ``labels_file`` at
it. Each categories.csv row must have the labels file's label and Latin name (rows whose ``y`` is
not a WILDS label, WiSE-FT's 99999, are ignored). Option ``names = "wilds"`` uses categories.csv's
``name`` column instead and needs no labels file; ``templates`` replaces the prompts. (The
reference's training captions keep the English names' capitals, "a photo of White-lipped
peccary."; tracer uses the one lower-cased list for both.)

The benchmark reports macro-F1 (most classes are rare): set ``task.headline = "macro_f1"`` (see
docs/tasks.md; ``macro_f1`` is the reference's definition, ``macro_f1_wilds`` WILDS' own).
``max_per_class`` keeps the first N images of each class, for quick looks. Every listed image
must exist; one that exists but cannot be decoded is skipped and counted, as for the other
datasets.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable

from tracer_cli.sdk import DatasetBundle, Options, hookimpl
from tracer_plugins.datasets.common import (
    ImageListDataset, Where, data_dir, options_for, preview, read_templates, resolve_root,
    resolve_transform)

WILDS_SPLITS = ("train", "id_val", "id_test", "val", "test")
# tracer's split -> the WILDS split read when the recipe names none (OOD = test).
DEFAULT_SPLITS = {"train": "train", "test": "test"}
METADATA = "metadata.csv"
CATEGORIES = "categories.csv"
METADATA_COLUMNS = ("split", "y", "filename")
CATEGORY_COLUMNS = ("y", "name")
# The reference code's iWildCam prompts (WiSE-FT's and FLYP's too).
IWILDCAM_TEMPLATES = ("a photo of {}.", "{} in the wild.")
LABELS_FILE = "labels.csv"
LABELS_COLUMNS = ("y", "name", "english")
NAME_SOURCES = ("english", "wilds")
TREE = ("<root>/  (or <root>/iwildcam_v2.0/)",
        f"  {METADATA} (split, location_remapped, y, filename, ...), "
        f"{CATEGORIES} (y, category_id, name), [{LABELS_FILE} (y, category_id, name, english)]",
        "  train/<filename>  (the images of every split)")


def _read_csv(path: Path, required: tuple[str, ...], where: Where) -> list[dict[str, str]]:
    """The rows of a CSV file that has at least the ``required`` columns."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            missing = [c for c in required if c not in columns]
            if missing:
                raise where.error(f"{path} has no column(s) {', '.join(missing)} (its header: "
                                  f"{', '.join(c or '<unnamed>' for c in columns) or 'none'}); "
                                  f"expected WILDS' columns, among them {', '.join(required)}")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise where.error(f"cannot read {path} ({exc})") from exc


def _label(text: str | None, path: Path, line: int, where: Where) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise where.error(f"{path} line {line}: y = {text!r} is not an integer label") from None


def read_categories(path: Path, where: Where) -> list[str]:
    """Class names in label order; the labels must be exactly 0 ... C-1."""
    names: dict[int, str] = {}
    for line, row in enumerate(_read_csv(path, CATEGORY_COLUMNS, where), start=2):
        y = _label(row["y"], path, line, where)
        name = (row["name"] or "").strip()
        if not name:
            raise where.error(f"{path} line {line}: class {y} has an empty name")
        if y in names:
            raise where.error(f"{path} line {line}: label y = {y} is listed twice")
        names[y] = name
    if not names:
        raise where.error(f"{path} lists no classes")
    if sorted(names) != list(range(len(names))):
        gaps = sorted(set(range(max(names) + 1)) - set(names))
        raise where.error(f"{path}: labels must be 0 ... {len(names) - 1}; missing "
                          f"{preview(gaps) if gaps else 'none'}, smallest {min(names)}")
    return [names[y] for y in range(len(names))]


def english_classnames(latin: list[str], labels: Path, where: Where) -> list[str]:
    """The lower-cased English names of categories.csv's classes (``latin``, by label), read from
    the WiSE-FT ``labels.csv`` at ``labels`` and checked against it, so that another label order
    cannot be named wrongly."""
    if not labels.is_file():
        raise where.error(
            f"names = \"english\" (the reference's class names) needs {labels}: the labels.csv "
            "that WiSE-FT, FLYP and the TRACER reference ship (src/datasets/iwildcam_metadata/"
            "labels.csv), which WILDS' download lacks; put it there or set labels_file = PATH, "
            "or set names = \"wilds\" for WILDS' Latin names")
    english: dict[int, tuple[str, str]] = {}
    for line, row in enumerate(_read_csv(labels, LABELS_COLUMNS, where), start=2):
        y = _label(row["y"], labels, line, where)
        if 0 <= y < len(latin):
            english[y] = ((row["name"] or "").strip().lower(), (row["english"] or "").strip())
    absent = [y for y in range(len(latin)) if y not in english or not english[y][1]]
    if absent:
        raise where.error(f"{labels} has no English name for label(s) {preview(absent)} of "
                          f"{CATEGORIES}'s {len(latin)}; set names = \"wilds\" to use its own")
    wrong = [f"y={y}: {name!r} ({LABELS_FILE}: {english[y][0]!r})" for y, name in enumerate(latin)
             if name.lower() != english[y][0]]
    if wrong:
        raise where.error(f"{CATEGORIES} and {labels} label their classes differently: "
                          f"{preview(wrong)}; set names = \"wilds\" to use its own names")
    return [english[y][1].lower() for y in range(len(latin))]


def read_split(path: Path, split: str, classes: int, where: Where,
               limit: int | None) -> list[tuple[str, int]]:
    """(filename, label) of the rows of WILDS split ``split``, in file order; every row's split
    and label are checked, not only the kept ones."""
    rows, per_class = [], {}
    for line, row in enumerate(_read_csv(path, METADATA_COLUMNS, where), start=2):
        value = (row["split"] or "").strip()
        if value not in WILDS_SPLITS:
            raise where.error(f"{path} line {line}: split {value!r} is not a WILDS split "
                              f"({', '.join(WILDS_SPLITS)})")
        y = _label(row["y"], path, line, where)
        if not 0 <= y < classes:
            raise where.error(f"{path} line {line}: label y = {y} is outside the {classes} "
                              f"classes of {CATEGORIES}")
        filename = (row["filename"] or "").strip()
        if not filename:
            raise where.error(f"{path} line {line}: empty filename")
        if value != split or (limit is not None and per_class.get(y, 0) >= limit):
            continue
        per_class[y] = per_class.get(y, 0) + 1
        rows.append((filename, y))
    return rows


def _check_images(images: Path, rows: list[tuple[str, int]], split: str, where: Where) -> None:
    """Every listed file exists (one directory listing instead of a stat per image)."""
    present = {e.name for e in os.scandir(images) if e.is_file()}
    missing = [name for name, _ in rows
               if name not in present and not (images / name).is_file()]
    if missing:
        raise where.error(f"{len(missing)} image(s) of split {split!r} listed in {METADATA} are "
                          f"missing from {images}: {preview(missing)}")


def make_iwildcam(spec: dict[str, Any], split: str,
                  transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """One WILDS split of iWildCam v2.0 (``split`` option; default train / test)."""
    opts: Options = options_for(spec)
    root, origin = resolve_root(opts, "iwildcam")
    wilds_split = opts.str("split", default=DEFAULT_SPLITS[split], choices=WILDS_SPLITS)
    templates = read_templates(opts) if opts.has("templates") else list(IWILDCAM_TEMPLATES)
    names = opts.str("names", default="english", choices=NAME_SOURCES)
    labels_file = opts.path("labels_file", default=None)
    limit = opts.int("max_per_class", default=None, minimum=1)
    opts.done()  # before touching the disk, so a misspelt key is reported as such
    where = Where("iwildcam", root, origin, TREE, opts.key("root"))
    base = data_dir(where, ("iwildcam_v2.0",), root_ok=True)
    absent = [n for n in (METADATA, CATEGORIES) if not (base / n).is_file()]
    absent += [] if (base / "train").is_dir() else ["train/"]
    if absent:
        raise where.error(f"{base} lacks {', '.join(absent)}")
    classnames = read_categories(base / CATEGORIES, where)
    if names == "english":
        classnames = english_classnames(classnames, labels_file or base / LABELS_FILE, where)
    rows = read_split(base / METADATA, wilds_split, len(classnames), where, limit)
    images = base / "train"
    _check_images(images, rows, wilds_split, where)
    return DatasetBundle(
        dataset=ImageListDataset([(images / name, y, None) for name, y in rows],
                                 resolve_transform(transform)),
        classnames=classnames, templates=templates,
        info={"source": "iwildcam", "root": str(base), "split": split,
              "wilds_split": wilds_split, "names": names, "num_images": len(rows),
              "classes_present": len({y for _, y in rows}), "max_per_class": limit})


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("iwildcam", make_iwildcam)
