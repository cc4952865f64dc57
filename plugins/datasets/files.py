"""Datasets read from local files: an image-folder tree (``imagefolder``) or a CSV index (``csv``).

``imagefolder`` expects ``root/<class>/<image>`` (optionally one such tree per split,
``root/train/...`` and ``root/test/...``); ``csv`` reads one row per (image, label and/or caption)
pair. Both load images lazily, as RGB, in ``__getitem__``, and check at construction that every
image file exists, so a bad path fails before training starts rather than mid-epoch. A file that
exists but cannot be decoded (truncated, corrupt, not an image) comes back as a
:class:`~tracer_cli.sdk.SkippedItem`, which the engine drops and counts.

``csv`` with ``mode = "captions"`` is an image-text retrieval set instead (COCO/Flickr30k style):
rows are (image, caption) pairs, several per image allowed, grouped by image path in order of
first appearance; each image is one item carrying all its captions
(:func:`~tracer_plugins.datasets.common.caption_fields`).

The helpers every image dataset plugin shares (options, image reading, the lazy image datasets)
are in :mod:`tracer_plugins.datasets.common`; :func:`labels_from_values` (integer or text label
values to class indices and names) is shared with the ``hf`` dataset plugin.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Callable

from tracer_cli.sdk import DatasetBundle, MissingResourceError, Options, RecipeError, hookimpl
from tracer_plugins.datasets.common import (
    MODES, CaptionListDataset, ImageListDataset, check_classnames, options_for, preview,
    read_extensions, read_templates, reject_class_options, resolve_transform, split_path)

# Folder names tried, in order, for each split when ``root`` holds one tree per split.
SPLIT_DIRS = {"train": ("train",), "test": ("test", "val", "validation")}
IMAGEFOLDER_LAYOUT = ("expected layout: <root>/<class name>/<image>.jpg, or one such tree per "
                      "split: <root>/train/<class name>/<image>.jpg and "
                      "<root>/test/<class name>/<image>.jpg ('val/' also works for test); "
                      "'root' may also contain '{split}'")


# --------------------------------------------------------------------------- imagefolder


def _split_root(root: Path, split: str, had_placeholder: bool, key: str) -> Path:
    """The folder holding the class folders for ``split``; ``key`` is the recipe key of the root."""
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a directory"
        raise MissingResourceError(f"imagefolder root {root} ({key}) {what}; set {key} = "
                                   f"\"/path/to/images\" in the recipe, or on the command line "
                                   f"--set {key}=/path/to/images; {IMAGEFOLDER_LAYOUT}")
    if had_placeholder:
        return root
    split_dirs = [name for names in SPLIT_DIRS.values() for name in names]
    # Any split-named subfolder means a per-split layout; treating 'train' as a class would
    # silently train on a one-class problem.
    if not any((root / name).is_dir() for name in split_dirs):
        return root
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(f"{root / n}" for n in SPLIT_DIRS[split])
    raise MissingResourceError(f"imagefolder root {root} is split into subfolders but has no "
                               f"'{split}' split: expected {wanted}; {IMAGEFOLDER_LAYOUT}")


def _scan_tree(folder: Path, extensions: tuple[str, ...]) -> tuple[list[str], list[list[Path]]]:
    """Sorted class folders under ``folder`` and the sorted image files in each."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise MissingResourceError(f"imagefolder: {folder} has no class folders; "
                                   f"{IMAGEFOLDER_LAYOUT}")
    files = []
    for name in classes:
        found = sorted(p for p in (folder / name).rglob("*")
                       if p.is_file() and p.suffix.lower() in extensions
                       and not p.name.startswith("."))
        files.append(found)
    empty = [name for name, found in zip(classes, files) if not found]
    if empty:
        raise MissingResourceError(
            f"imagefolder: no images ({', '.join(extensions)}) in class folder(s) "
            f"{preview(empty)} under {folder}; {IMAGEFOLDER_LAYOUT}")
    return classes, files


def make_imagefolder(spec: dict[str, Any], split: str,
                     transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """A classification dataset from ``root/<class>/<image>`` folders (classes sorted by name)."""
    opts = options_for(spec)
    raw_root = opts.str("root")
    extensions = read_extensions(opts)
    templates = read_templates(opts)
    names = opts.str_list("classnames", default=None)
    opts.done()  # before touching the disk, so a misspelt key is reported as such
    folder = _split_root(split_path(raw_root, split), split, "{split}" in raw_root,
                         opts.key("root"))
    folders, files = _scan_tree(folder, extensions)
    classnames = check_classnames(names, [name.replace("_", " ") for name in folders],
                                  opts.key("classnames"))
    rows = [(path, label, None) for label, found in enumerate(files) for path in found]
    return DatasetBundle(
        dataset=ImageListDataset(rows, resolve_transform(transform)),
        classnames=classnames, templates=templates,
        info={"source": "imagefolder", "root": str(folder), "split": split,
              "num_images": len(rows), "class_folders": folders})


# --------------------------------------------------------------------------- csv

_INT_RE = re.compile(r"^\s*-?\d+\s*$")


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise MissingResourceError(f"csv dataset: {path} {what}; expected a CSV file with a "
                                   "header row, e.g. 'filepath,label' or 'filepath,caption'")
    # utf-8-sig: spreadsheet exports often start with a byte-order mark that would otherwise
    # become part of the first column's name.
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except UnicodeDecodeError as exc:
        raise MissingResourceError(f"csv dataset: {path} is not UTF-8 text (it holds the byte "
                                   f"0x{exc.object[exc.start]:02x}); save it as UTF-8, e.g. "
                                   "iconv -f latin1 -t utf-8") from None
    except (OSError, csv.Error) as exc:
        raise MissingResourceError(f"csv dataset: {path} cannot be read ({exc})") from None
    if not rows:
        raise MissingResourceError(f"csv dataset: {path} has no data rows")
    return columns, rows


def _check_columns(opts: Options, wanted: dict[str, str | None], columns: list[str],
                   path: Path) -> None:
    """Every column named by an option (``wanted``: option -> column) is in the CSV header."""
    for option, name in wanted.items():
        if name is not None and name not in columns:
            raise RecipeError(opts.key(option), f"column '{name}' is not in {path}; columns "
                                                f"present: {', '.join(columns) or '(none)'}")


def labels_from_values(values: list[str], classnames: list[str] | None, key: str,
                       source: str) -> tuple[list[int], list[str]]:
    """Class indices and names for raw label values: integers are indices, other text are names.

    Integer labels are named by ``classnames`` (the option at recipe key ``key``), else by their
    digits; text labels name themselves (sorted) unless ``classnames`` is given (see
    :func:`_text_labels`). ``source`` names the data in error messages.
    """
    if all(_INT_RE.match(v) for v in values):
        return _int_labels(values, classnames, key, source)
    return _text_labels(values, classnames, key)


def _int_labels(values: list[str], classnames: list[str] | None, key: str,
                source: str) -> tuple[list[int], list[str]]:
    labels = [int(v) for v in values]
    if min(labels) < 0:
        raise MissingResourceError(f"{source}: negative label {min(labels)}; integer labels "
                                   "must be class indices 0..N-1")
    if classnames is None:
        return labels, [str(i) for i in range(max(labels) + 1)]
    if max(labels) >= len(classnames):
        raise RecipeError(key, f"lists {len(classnames)} names but {source} has label "
                               f"{max(labels)}")
    return labels, classnames


def _text_labels(values: list[str], classnames: list[str] | None,
                 key: str) -> tuple[list[int], list[str]]:
    """Text labels: named by ``classnames`` when it contains them all (its order defines indices),
    otherwise ``classnames`` renames the sorted unique values positionally."""
    unique = sorted(set(values))
    if classnames is None or not set(unique) <= set(classnames):
        # Not the class names themselves: rename the sorted label values positionally, the
        # same rule imagefolder uses for folder names.
        names = check_classnames(classnames, unique, key)
        position = {value: i for i, value in enumerate(unique)}
        return [position[v] for v in values], names
    index = {name: i for i, name in enumerate(classnames)}
    return [index[v] for v in values], classnames


def _labels(rows: list[dict[str, str]], column: str, classnames: list[str] | None, key: str,
            path: Path) -> tuple[list[int], list[str]]:
    values = [(row.get(column) or "").strip() for row in rows]
    blank = [i + 2 for i, v in enumerate(values) if not v]  # +2: 1-based, after the header
    if blank:
        raise MissingResourceError(f"csv dataset: {path} has an empty '{column}' cell on line(s) "
                                   f"{preview(blank)}")
    return labels_from_values(values, classnames, key, f"csv dataset {path}")


def _image_paths(rows: list[dict[str, str]], column: str, base: Path, path: Path) -> list[Path]:
    images = [base / (row.get(column) or "").strip() for row in rows]
    missing, seen = [], set()
    for image in images:
        if image not in seen:
            seen.add(image)
            if not image.is_file():
                missing.append(str(image))
    if missing:
        raise MissingResourceError(
            f"csv dataset {path}: {len(missing)} image file(s) in column '{column}' do not exist "
            f"(relative paths are resolved against {base}; set 'root' to change that): "
            f"{preview(missing)}")
    return images


def _read_csv_options(opts: Options, split: str) -> dict[str, Any]:
    """Every csv option, read (and unknown keys rejected) before the file is opened."""
    mode = opts.str("mode", default="classification", choices=MODES)
    path = split_path(opts.str("path"), split)
    delimiter = opts.str("delimiter", default=",")
    if len(delimiter) != 1:
        raise RecipeError(opts.key("delimiter"), f"must be one character, got {delimiter!r}")
    root = opts.str("root", default=None)
    out = {"mode": mode, "path": path, "delimiter": delimiter,
           "base": split_path(root, split) if root is not None else path.parent}
    if mode == "captions":
        reject_class_options(opts, "csv")
        out.update(image_column=opts.str("image_column", default="filepath"),
                   caption_column=opts.str("caption_column", default="caption"))
        opts.done()
        return out
    out.update({"templates": read_templates(opts),
                "image_column": opts.str("image_column", default="filepath"),
                "label_column": opts.str("label_column", default=None),
                "caption_column": opts.str("caption_column", default=None),
                "classnames": opts.str_list("classnames", default=None)})
    opts.done()
    if out["label_column"] is None and out["caption_column"] is None:
        raise RecipeError(opts.key("label_column"), "set label_column or caption_column (or both)")
    if out["label_column"] is None and out["classnames"] is not None:
        raise RecipeError(opts.key("classnames"), "needs label_column: without labels there are "
                                                  "no classes to name")
    return out


def _blank_cells(rows: list[dict[str, str]], column: str, path: Path, need: str) -> None:
    blank = [i + 2 for i, row in enumerate(rows) if not (row.get(column) or "").strip()]
    if blank:  # +2 above: line numbers are 1-based and the header is line 1
        raise MissingResourceError(f"csv dataset: {path} has an empty '{column}' cell on line(s) "
                                   f"{preview(blank)}; {need}")


def _caption_groups(rows: list[dict[str, str]], o: dict[str, Any],
                    path: Path) -> tuple[list[Path], list[list[str]]]:
    """Image paths in order of first appearance, and the captions of each (in row order)."""
    _blank_cells(rows, o["image_column"], path, "every row needs an image path")
    _blank_cells(rows, o["caption_column"], path, "every row of a captions CSV needs a caption")
    groups: dict[Path, list[str]] = {}
    for image, row in zip(_image_paths(rows, o["image_column"], o["base"], path), rows):
        groups.setdefault(image, []).append(row[o["caption_column"]].strip())
    return list(groups), list(groups.values())


def _make_csv_captions(opts: Options, o: dict[str, Any], split: str,
                       transform: Callable[[Any], Any] | None) -> DatasetBundle:
    path = o["path"]
    columns, rows = _read_csv(path, o["delimiter"])
    _check_columns(opts, {k: o[k] for k in ("image_column", "caption_column")}, columns, path)
    images, captions = _caption_groups(rows, o, path)
    return DatasetBundle(
        dataset=CaptionListDataset(images, captions, resolve_transform(transform)),
        classnames=[], templates=[], has_captions=True,
        info={"kind": "captions", "captions": captions, "source": "csv", "path": str(path),
              "root": str(o["base"]), "split": split, "num_rows": len(rows),
              "num_images": len(images)})


def make_csv(spec: dict[str, Any], split: str,
             transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """A dataset indexed by a CSV file: one row per (image, label and/or caption); with
    ``mode = "captions"`` one item per image with all its captions."""
    opts = options_for(spec)
    o = _read_csv_options(opts, split)
    if o["mode"] == "captions":
        return _make_csv_captions(opts, o, split, transform)
    path = o["path"]
    columns, rows = _read_csv(path, o["delimiter"])
    _check_columns(opts, {k: o[k] for k in ("image_column", "label_column", "caption_column")},
                   columns, path)
    if o["label_column"] is not None:
        labels, classnames = _labels(rows, o["label_column"], o["classnames"],
                                     opts.key("classnames"), path)
    else:
        labels, classnames = [-1] * len(rows), []
    images = _image_paths(rows, o["image_column"], o["base"], path)
    captions = ([row.get(o["caption_column"]) or "" for row in rows]
                if o["caption_column"] is not None else [None] * len(rows))
    return DatasetBundle(
        dataset=ImageListDataset(list(zip(images, labels, captions)), resolve_transform(transform)),
        classnames=classnames, templates=o["templates"],
        has_captions=o["caption_column"] is not None,
        info={"source": "csv", "path": str(path), "root": str(o["base"]), "split": split,
              "num_rows": len(rows), "num_images": len(set(images))})


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("imagefolder", make_imagefolder)
    registry.add("csv", make_csv)
