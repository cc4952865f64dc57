"""Hugging Face ``datasets`` as tracer datasets (``hf``).

The ``path`` option is a hub dataset id (``"owner/name"``) or a local path: a folder written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, a folder ``datasets.load_dataset`` can read
(an ``imagefolder`` tree, parquet/csv/json files), or a single parquet/csv/json/arrow file. A
``{split}`` in ``path`` is replaced by ``train``/``test``.

Local paths are always read with the hub switched off, so they never touch the network. Hub ids
honour ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` as set when the dataset is built (the libraries
read them only once, at import); without network the failure becomes a
:class:`~tracer_cli.sdk.MissingResourceError` that says how to provide the data locally.

``datasets`` is imported inside the functions that use it: it is slow to import, and every
tracer process loads this plugin just to list it.

A row whose image cannot be decoded comes back as a :class:`~tracer_cli.sdk.SkippedItem`
named ``row N``, which the engine drops and counts.

With ``mode = "captions"`` the dataset is an image-text retrieval set: one item per row with all
the row's captions, read from ``caption_column`` (default ``"caption"``), which holds either one
string or a list of strings per row (as in Flickr30k/COCO-style sets such as
``nlphuji/flickr30k``). The captions are read once, up front, without decoding any image.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image

from tracer_cli.sdk import DatasetBundle, MissingResourceError, Options, RecipeError, hookimpl
from tracer_plugins.datasets.common import (
    MODES, LazyImageDataset, caption_fields, check_classnames, open_rgb, options_for,
    read_templates, reject_class_options, resolve_transform, split_path)
from tracer_plugins.datasets.files import labels_from_values

# Dataset split names tried, in order, for each tracer split unless ``split_map`` says otherwise.
DEFAULT_SPLITS = {"train": ("train",), "test": ("test", "validation")}
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json",
                 ".arrow": "arrow"}
_SAVED_MARKERS = (("dataset_dict.json",), ("dataset_info.json", "state.json"))
_TRUE = {"1", "ON", "YES", "TRUE"}
_OFFLINE_VARS = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


# --------------------------------------------------------------------------- loading


def _env_offline() -> bool:
    return any(os.environ.get(var, "").strip().upper() in _TRUE for var in _OFFLINE_VARS)


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Switch ``datasets`` and ``huggingface_hub`` to offline mode for the duration.

    Both libraries copy the environment variables into module constants at import time, so a
    variable set later (by a launcher or a test) would otherwise be ignored and every request
    would be retried for many seconds before failing.
    """
    if not enabled:
        yield
        return
    import datasets.config as ds_config
    from huggingface_hub import constants as hub_constants

    saved = (ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    ds_config.HF_HUB_OFFLINE = ds_config.HF_DATASETS_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        (ds_config.HF_HUB_OFFLINE, ds_config.HF_DATASETS_OFFLINE,
         hub_constants.HF_HUB_OFFLINE) = saved


def _looks_local(source: str) -> bool:
    """True for strings that can only be local paths (hub ids are ``name`` or ``owner/name``)."""
    if "://" in source:  # hf://datasets/... and other fsspec URLs are remote
        return False
    return (source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
            or Path(source).suffix.lower() in FILE_BUILDERS)


def _load_local(path: Path, config: str | None, cache_dir: str | None, opts: Options) -> Any:
    import datasets

    if path.is_dir() and any(all((path / m).is_file() for m in group) for group in _SAVED_MARKERS):
        if config is not None:
            raise RecipeError(opts.key("config"), f"{path} was written by save_to_disk and has "
                                                  "no configurations; remove 'config'")
        return datasets.load_from_disk(str(path))
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise MissingResourceError(f"hf dataset: cannot read {path}; a single file must be "
                                       f"one of {', '.join(sorted(FILE_BUILDERS))}")
        return datasets.load_dataset(builder, data_files=str(path), cache_dir=cache_dir)
    return datasets.load_dataset(str(path), name=config, cache_dir=cache_dir)


def _offline_help(source: str, local: Path) -> str:
    return (f"provide a local copy instead: set 'path' to a folder written by "
            f"datasets' save_to_disk (e.g. load_dataset({source!r}).save_to_disk('<dir>') on a "
            f"machine with network) or to local data files; or populate the Hugging Face cache "
            f"and run with HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 (no local path {local} exists)")


def _load_hub(source: str, config: str | None, cache_dir: str | None) -> Any:
    import datasets

    local = Path(source).expanduser().absolute()
    try:
        with _hub_offline(_env_offline()):
            return datasets.load_dataset(source, name=config, cache_dir=cache_dir)
    except ConnectionError as exc:  # no network, or offline mode without a cached copy
        raise MissingResourceError(f"hf dataset '{source}' is not available offline "
                                   f"({type(exc).__name__}: {exc}); "
                                   + _offline_help(source, local)) from exc
    except FileNotFoundError as exc:
        raise MissingResourceError(f"hf dataset '{source}' was not found on the hub or in the "
                                   f"cache ({exc}); " + _offline_help(source, local)) from exc


def _load(source: str, config: str | None, cache_dir: str | None, opts: Options) -> Any:
    """A ``Dataset`` or ``DatasetDict`` for ``source`` (local path first, then hub id)."""
    path = Path(source).expanduser()
    if path.exists():
        try:
            with _hub_offline(True):
                return _load_local(path, config, cache_dir, opts)
        except FileNotFoundError as exc:
            raise MissingResourceError(f"hf dataset: no data found in {path} ({exc}); expected a "
                                       "save_to_disk folder or data files load_dataset can "
                                       "read") from exc
    if _looks_local(source):
        raise MissingResourceError(f"hf dataset: local path {path} does not exist; expected a "
                                   "save_to_disk folder, a data folder or a data file")
    return _load_hub(source, config, cache_dir)


def _read_split_map(opts: Options) -> dict[str, str]:
    table = opts.raw("split_map", default={})
    if not isinstance(table, dict):
        raise RecipeError(opts.key("split_map"), f"expected a table like "
                                                 f"{{train = \"train\", test = \"validation\"}}, "
                                                 f"got {table!r}")
    sub = Options(table, path=opts.key("split_map"))
    mapped = {name: sub.str(name, default=None) for name in DEFAULT_SPLITS}
    sub.done()
    return {name: target for name, target in mapped.items() if target is not None}


def _select_split(data: Any, split: str, split_map: dict[str, str], source: str,
                  opts: Options) -> Any:
    """The ``datasets.Dataset`` for ``split``; a lone ``Dataset`` serves every split."""
    import datasets

    if isinstance(data, datasets.Dataset):
        return data
    wanted = (split_map[split],) if split in split_map else DEFAULT_SPLITS[split]
    for name in wanted:
        if name in data:
            return data[name]
    raise MissingResourceError(
        f"hf dataset '{source}' has no split {' or '.join(repr(w) for w in wanted)} for tracer's "
        f"'{split}' split; it has {', '.join(repr(k) for k in data) or '(none)'}: set "
        f"{opts.key('split_map')}.{split} to one of them")


# --------------------------------------------------------------------------- items


def to_rgb(value: Any) -> Image.Image:
    """An RGB PIL image from what a ``datasets`` image column holds (decoded or not)."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        value = io.BytesIO(value)
    elif not isinstance(value, str):
        raise MissingResourceError(f"hf dataset: cannot read an image from a "
                                   f"{type(value).__name__} value; the image column must hold "
                                   "images, {'bytes', 'path'} dicts or file paths")
    return open_rgb(value)


class HFImageDataset(LazyImageDataset):
    """Rows of a ``datasets.Dataset`` as tracer items (labels precomputed unless ClassLabel)."""

    def __init__(self, data: Any, columns: dict[str, str | None], labels: list[int] | None,
                 transform: Callable[[Any], Any]):
        super().__init__(transform)
        self.data = data
        self.columns = columns
        self.labels = labels

    def __len__(self) -> int:
        return len(self.data)

    def source(self, index: int) -> str:
        return f"row {index}"

    def read(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        # A decoded image column decodes on row access; undecoded ones decode in to_rgb.
        row = self.data[int(index)]
        image = to_rgb(row[self.columns["image"]])
        if self.labels is not None:
            label = self.labels[index]
        elif self.columns["label"] is not None:
            label = int(row[self.columns["label"]])
        else:
            label = -1
        fields: dict[str, Any] = {"label": label}
        if self.columns["caption"] is not None:
            fields["caption"] = str(row[self.columns["caption"]])
        return image, fields


class HFCaptionDataset(LazyImageDataset):
    """Rows of a ``datasets.Dataset`` as caption items (captions read up front, images per row)."""

    def __init__(self, data: Any, image_column: str, captions: list[list[str]],
                 transform: Callable[[Any], Any]):
        super().__init__(transform)
        self.data = data
        self.image_column = image_column
        self.captions = captions

    def __len__(self) -> int:
        return len(self.data)

    def source(self, index: int) -> str:
        return f"row {index}"

    def read(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        image = to_rgb(self.data[int(index)][self.image_column])
        return image, caption_fields(self.captions[index], index)


def _read_options(opts: Options, split: str) -> dict[str, Any]:
    """Every hf option, read (and unknown keys rejected) before anything is loaded."""
    if opts.has("name"):
        raise RecipeError(opts.key("name"), "'name' selects the dataset plugin; give the hub id "
                                            "or local path of the data as 'path'")
    mode = opts.str("mode", default="classification", choices=MODES)
    source = opts.str("path")
    cache_dir = opts.path("cache_dir", default=None)
    out = {"mode": mode,
           "source": str(split_path(source, split)) if "{split}" in source else source,
           "config": opts.str("config", default=None),
           "cache_dir": str(cache_dir) if cache_dir is not None else None,
           "split_map": _read_split_map(opts),
           "image_column": opts.str("image_column", default="image")}
    if mode == "captions":
        reject_class_options(opts, "hf")
        out["caption_column"] = opts.str("caption_column", default="caption")
        opts.done()
        return out
    out.update({"templates": read_templates(opts),
                "label_column": opts.str("label_column", default=None),
                "caption_column": opts.str("caption_column", default=None),
                "classnames": opts.str_list("classnames", default=None)})
    opts.done()
    return out


def _pick_columns(opts: Options, o: dict[str, Any], data: Any) -> dict[str, str | None]:
    """Column names for image/label/caption; label is None for caption-only data."""
    present = list(data.column_names)
    label = o["label_column"]
    # The default label column may be absent from caption datasets; a named one must exist.
    if label is None and ("label" in present or o["caption_column"] is None):
        label = "label"
    columns = {"image": o["image_column"], "label": label, "caption": o["caption_column"]}
    for role, name in columns.items():
        if name is not None and name not in present:
            raise RecipeError(opts.key(f"{role}_column"),
                              f"column '{name}' is not in hf dataset '{o['source']}'; "
                              f"columns present: {', '.join(present)}")
    return columns


def _classes(data: Any, column: str | None, classnames: list[str] | None, key: str,
             source: str) -> tuple[list[int] | None, list[str]]:
    """(precomputed labels, or None to read them per row; class names)."""
    import datasets

    if column is None:
        if classnames is not None:
            raise RecipeError(key, "needs a label column: without labels there are no classes "
                                   "to name")
        return None, []
    feature = data.features[column]
    if isinstance(feature, datasets.ClassLabel):
        return None, check_classnames(classnames, [n.replace("_", " ") for n in feature.names],
                                      key)
    values = ["" if v is None else str(v).strip() for v in data[column]]
    if not values or not all(values):
        raise MissingResourceError(f"hf dataset '{source}': label column '{column}' is empty or "
                                   "has missing values")
    return labels_from_values(values, classnames, key, f"hf dataset '{source}'")


def _caption_lists(values: list[Any], opts: Options, column: str,
                   source: str) -> list[list[str]]:
    """Each row's captions from a column of strings or of lists of strings; blanks are errors."""
    captions, blank = [], []
    for row, value in enumerate(values):
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise RecipeError(opts.key("caption_column"),
                              f"column '{column}' of hf dataset '{source}' holds "
                              f"{type(value).__name__} values (row {row}: {value!r}); it must "
                              "hold a string or a list of strings per row")
        texts = [t.strip() for t in texts]
        if not texts or not all(texts):
            blank.append(row)
        captions.append(texts)
    if blank:
        shown = ", ".join(map(str, blank[:5])) + (f", ... ({len(blank) - 5} more)"
                                                  if len(blank) > 5 else "")
        raise MissingResourceError(f"hf dataset '{source}': caption column '{column}' has no "
                                   f"caption or an empty one in row(s) {shown}; every row needs "
                                   "at least one non-empty caption")
    return captions


def _captions_bundle(opts: Options, o: dict[str, Any], data: Any, split: str,
                     transform: Callable[[Any], Any] | None) -> DatasetBundle:
    source = o["source"]
    present = list(data.column_names)
    for option in ("image_column", "caption_column"):
        if o[option] not in present:
            raise RecipeError(opts.key(option), f"column '{o[option]}' is not in hf dataset "
                                                f"'{source}'; columns present: "
                                                f"{', '.join(present)}")
    captions = _caption_lists(data[o["caption_column"]], opts, o["caption_column"], source)
    data = data.select_columns([o["image_column"]])
    to_rgb(data[0][o["image_column"]])  # fail now, not in a worker, if the column holds no images
    return DatasetBundle(
        dataset=HFCaptionDataset(data, o["image_column"], captions, resolve_transform(transform)),
        classnames=[], templates=[], has_captions=True,
        info={"kind": "captions", "captions": captions, "source": "hf", "path": source,
              "config": o["config"], "split": split,
              "hf_split": str(data.split) if data.split is not None else None,
              "num_rows": len(data)})


def make_hf(spec: dict[str, Any], split: str,
            transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """A dataset from the Hugging Face hub or a local ``datasets`` folder/file."""
    opts = options_for(spec)
    o = _read_options(opts, split)
    source = o["source"]
    data = _select_split(_load(source, o["config"], o["cache_dir"], opts),
                         split, o["split_map"], source, opts)
    if len(data) == 0:
        raise MissingResourceError(f"hf dataset '{source}' split '{split}' has no rows")
    if o["mode"] == "captions":
        return _captions_bundle(opts, o, data, split, transform)
    columns = _pick_columns(opts, o, data)
    labels, classnames = _classes(data, columns["label"], o["classnames"],
                                  opts.key("classnames"), source)
    data = data.select_columns([c for c in columns.values() if c is not None])
    to_rgb(data[0][columns["image"]])  # fail now, not in a worker, if the column holds no images
    return DatasetBundle(
        dataset=HFImageDataset(data, columns, labels, resolve_transform(transform)),
        classnames=classnames, templates=o["templates"],
        has_captions=columns["caption"] is not None,
        info={"source": "hf", "path": source, "config": o["config"], "split": split,
              "hf_split": str(data.split) if data.split is not None else None,
              "num_rows": len(data)})


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("hf", make_hf)
