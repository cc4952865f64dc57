"""WebDataset tar shards as a tracer dataset (``webdataset``): open_clip's training layout.

A shard is a plain ``.tar`` whose files are grouped into samples by their key, the name up to the
first dot (``000123.jpg``, ``000123.txt``, ``000123.cls``), exactly as the ``webdataset`` package
groups them (:func:`webdataset.tariterators.group_by_keys`, which this module calls). ``urls``
names the shards: a brace pattern (``"shards/train-{000000..000009}.tar"``), several patterns
joined by ``::``, or a list; ``{split}`` becomes ``train`` / ``test``
(:func:`webdataset.shardlists.expand_urls` expands them).

The dataset is *indexed*, not streamed: at construction every shard's member headers are read
once (with the standard library's ``tarfile``) and each sample's image is remembered as a byte
range of its shard; ``.cls`` labels and ``.txt`` captions, a few bytes each, are read then too, so
an empty caption or a bad label is an error before training. An item is one seek and one read of
its image. Being a map-style dataset with a length, a shard set is trained on like any other: the
engine's seeded permutation of each epoch is a full shuffle (no shuffle buffer, whose window would
only approximate it), a checkpoint's (epoch, batch) position resumes the exact batches, and each
DDP rank reads its own slice of every global batch, so ranks never share a sample and always
agree on the number of batches. Evaluation reads the samples in shard order. This is the design of
``wids``, webdataset's indexed reader; it needs local (or network-filesystem) shards, since a
remote stream cannot seek.

Modes (``mode``): ``"classification"`` (default) reads the label from ``label_key`` (``cls``: an
integer class index, or a class name) and the caption from ``caption_key`` (``txt``), each when
every sample has it (some samples with it and some without is an error), at least one of the two;
``"captions"`` is an image-text retrieval set, each ``txt`` holding one or more captions, one per
line. Class names come from ``classnames`` or ``classnames_file`` (one per line, in label order,
as CLIP_benchmark's ``classnames.txt``), else the label values name themselves.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from PIL import Image
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys

from tracer_cli.sdk import DatasetBundle, MissingResourceError, Options, RecipeError, hookimpl
from tracer_plugins.datasets.common import (
    MODES, LazyImageDataset, caption_fields, check_classnames, open_rgb, options_for, preview,
    read_lines, read_templates, reject_class_options, resolve_transform)
from tracer_plugins.datasets.files import labels_from_values

# open_clip's image keys (``jpg;png;jpeg;webp``), in the order a sample's image is looked for.
IMAGE_KEYS = ("jpg", "png", "jpeg", "webp")
# webdataset's own rule for metadata members (``__meta__`` and the like), which are not samples.
_META = re.compile(r"__[^/]*__($|/)")
_REMOTE = re.compile(r"^(pipe:|[a-z][a-z0-9+.-]*://)", re.IGNORECASE)
LAYOUT = ("expected uncompressed .tar shards of samples such as 000123.jpg + 000123.txt "
          "(captions) and/or 000123.cls (a class index), as open_clip and img2dataset write them")


@dataclass
class _Index:
    """The samples of a shard set: where each image is, and each sample's text fields."""

    shards: list[Path]
    keys: list[str] = field(default_factory=list)
    images: list[tuple[int, int, int]] = field(default_factory=list)  # (shard, offset, size)
    texts: dict[str, list[str | None]] = field(default_factory=dict)  # option -> value per sample


# --------------------------------------------------------------------------- shards


def _read_urls(opts: Options, split: str) -> list[str]:
    """The expanded ``urls`` option (a pattern string or a list of them), local files only."""
    raw = opts.raw("urls", default=None)
    if raw is None or raw == [] or raw == "":
        raise RecipeError(opts.key("urls"), 'is required: the shards, e.g. urls = '
                                            '"shards/train-{000000..000009}.tar", or a list')
    patterns = opts.str_list("urls")
    urls = [url for pattern in patterns for url in expand_urls(pattern.replace("{split}", split))]
    remote = [u for u in urls if _REMOTE.match(u) and not u.startswith("file://")]
    if remote:
        raise RecipeError(opts.key("urls"), f"{remote[0]!r} is not a local file: the webdataset "
                                            "dataset reads local (or mounted) shards only; copy "
                                            "them to disk first")
    return [u.removeprefix("file://") for u in urls]


def _shard_paths(urls: list[str], key: str) -> list[Path]:
    """``urls`` as paths, each an existing file (``key`` is the recipe key that named them)."""
    paths = [Path(u).expanduser() for u in urls]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingResourceError(f"webdataset: {len(missing)} of {len(paths)} shard(s) named "
                                   f"by {key} do not exist: {preview(missing)}")
    return paths


def _members(tar: tarfile.TarFile, url: str) -> Iterator[dict[str, Any]]:
    """The regular files of ``tar`` as webdataset's file records, the member (where its bytes
    are) standing in for the bytes themselves."""
    for info in tar:
        if info.isfile() and not _META.match(info.name):
            yield {"fname": info.name, "data": info, "__url__": url}


def _text(tar: tarfile.TarFile, info: tarfile.TarInfo, url: str) -> str:
    """The stripped UTF-8 text of member ``info`` (a caption or a label)."""
    try:
        return tar.extractfile(info).read().decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise MissingResourceError(f"webdataset: {url}: {info.name} is not UTF-8 text "
                                   f"({exc}); write captions and labels as UTF-8") from None


def _scan(index: _Index, shard: int, fields: dict[str, str], image_keys: tuple[str, ...]) -> None:
    """Add the samples of shard ``shard`` to ``index``; ``fields`` maps an option to the
    extension holding its text."""
    path = index.shards[shard]
    try:
        with tarfile.open(path, "r:") as tar:
            for sample in group_by_keys(_members(tar, str(path))):
                image = next((sample[k] for k in image_keys if k in sample), None)
                if image is None:
                    raise MissingResourceError(
                        f"webdataset: {path}: sample {sample['__key__']!r} has no image (none of "
                        f"{', '.join('.' + k for k in image_keys)}; it has "
                        f"{', '.join(sorted(k for k in sample if not k.startswith('__')))})")
                index.keys.append(f"{path}:{sample['__key__']}")
                index.images.append((shard, image.offset_data, image.size))
                for option, ext in fields.items():
                    index.texts[option].append(
                        _text(tar, sample[ext], str(path)) if ext in sample else None)
    except (tarfile.TarError, ValueError, OSError) as exc:
        raise MissingResourceError(f"webdataset: cannot read shard {path} ({type(exc).__name__}: "
                                   f"{exc}); {LAYOUT}") from None


def _index(paths: list[Path], fields: dict[str, str], image_keys: tuple[str, ...]) -> _Index:
    index = _Index(paths, texts={option: [] for option in fields})
    for shard in range(len(paths)):
        _scan(index, shard, fields, image_keys)
    if not index.keys:
        raise MissingResourceError(f"webdataset: the {len(paths)} shard(s) hold no samples; "
                                   f"{LAYOUT}")
    return index


# --------------------------------------------------------------------------- items


class ShardDataset(LazyImageDataset):
    """Samples of tar shards, read by byte range; items are ``{"image", **fields(index)}``."""

    def __init__(self, index: _Index, fields: Callable[[int], dict[str, Any]],
                 transform: Callable[[Any], Any]):
        super().__init__(transform)
        self.shards, self.keys, self.images = index.shards, index.keys, index.images
        self.fields = fields

    def __len__(self) -> int:
        return len(self.keys)

    def source(self, index: int) -> str:
        return self.keys[index]

    def read(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        shard, offset, size = self.images[index]
        # A fresh handle per read: DataLoader workers must not share a file position.
        with open(self.shards[shard], "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        return open_rgb(io.BytesIO(data)), self.fields(index)


@dataclass(frozen=True)
class _Labelled:
    """The fields of a classification item: its label and, when the shards have them, caption."""

    labels: list[int]
    captions: list[str] | None

    def __call__(self, index: int) -> dict[str, Any]:
        if self.captions is None:
            return {"label": self.labels[index]}
        return {"label": self.labels[index], "caption": self.captions[index]}


@dataclass(frozen=True)
class _Captioned:
    """The fields of a retrieval item: all its captions (:func:`caption_fields`)."""

    captions: list[list[str]]

    def __call__(self, index: int) -> dict[str, Any]:
        return caption_fields(self.captions[index], index)


# --------------------------------------------------------------------------- options and bundle


def _present(index: _Index, option: str, ext: str) -> bool:
    """Whether every sample has ``ext`` (False when none has it; an error when only some do)."""
    values = index.texts[option]
    absent = [key for key, value in zip(index.keys, values) if value is None]
    if absent and len(absent) < len(values):
        raise MissingResourceError(f"webdataset: {len(absent)} of {len(values)} samples have no "
                                   f".{ext} ({option}): {preview(absent)}")
    return not absent


def _blank(index: _Index, option: str, ext: str) -> None:
    empty = [key for key, value in zip(index.keys, index.texts[option]) if not value]
    if empty:
        raise MissingResourceError(f"webdataset: {len(empty)} sample(s) have an empty .{ext} "
                                   f"({option}): {preview(empty)}")


def _classnames(opts: Options) -> tuple[list[str] | str | None, str]:
    """The ``classnames`` list, or the path of ``classnames_file`` (read after every option is
    checked), and the recipe key that set it."""
    names = opts.str_list("classnames", default=None)
    path = opts.str("classnames_file", default=None)
    if names is not None and path is not None:
        raise RecipeError(opts.key("classnames_file"), "set either 'classnames' or "
                                                       "'classnames_file', not both")
    if path is not None:
        return path, opts.key("classnames_file")
    return names, opts.key("classnames")


def _classification(opts: Options, urls: list[str], image_keys: tuple[str, ...],
                    transform: Callable[[Any], Any]) -> DatasetBundle:
    label_ext = opts.str("label_key", default="cls")
    caption_ext = opts.str("caption_key", default="txt")
    templates, (names, names_key) = read_templates(opts), _classnames(opts)
    opts.done()  # before touching the disk, so a misspelt key is reported as such
    if isinstance(names, str):
        names = read_lines(Path(names).expanduser(), names_key,
                           "one class name per line, in label order")
    index = _index(_shard_paths(urls, opts.key("urls")),
                   {"label_key": label_ext, "caption_key": caption_ext}, image_keys)
    has_labels = _present(index, "label_key", label_ext)
    has_captions = _present(index, "caption_key", caption_ext)
    if not (has_labels or has_captions):
        raise MissingResourceError(f"webdataset: the samples have neither .{label_ext} "
                                   f"(label_key) nor .{caption_ext} (caption_key); {LAYOUT}")
    if has_labels:
        _blank(index, "label_key", label_ext)
        labels, classnames = labels_from_values(index.texts["label_key"], names, names_key,
                                                "webdataset")
    elif names is not None:
        raise RecipeError(names_key, f"the samples have no .{label_ext} labels (label_key): "
                                     "there are no classes to name")
    else:
        labels, classnames = [-1] * len(index.keys), []
    captions = index.texts["caption_key"] if has_captions else None
    return DatasetBundle(dataset=ShardDataset(index, _Labelled(labels, captions), transform),
                         classnames=classnames, templates=templates, has_captions=has_captions,
                         info={"num_samples": len(index.keys)})


def _captions(opts: Options, urls: list[str], image_keys: tuple[str, ...],
              transform: Callable[[Any], Any]) -> DatasetBundle:
    reject_class_options(opts, "webdataset")
    caption_ext = opts.str("caption_key", default="txt")
    opts.done()
    index = _index(_shard_paths(urls, opts.key("urls")), {"caption_key": caption_ext}, image_keys)
    if not _present(index, "caption_key", caption_ext):
        raise MissingResourceError(f"webdataset: the samples have no .{caption_ext} captions "
                                   f"(caption_key), which mode = \"captions\" needs; {LAYOUT}")
    _blank(index, "caption_key", caption_ext)
    captions = [[line.strip() for line in text.splitlines() if line.strip()]
                for text in index.texts["caption_key"]]
    return DatasetBundle(dataset=ShardDataset(index, _Captioned(captions), transform),
                         classnames=[], templates=[], has_captions=True,
                         info={"kind": "captions", "num_samples": len(index.keys)})


def make_webdataset(spec: dict[str, Any], split: str,
                    transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """Samples of WebDataset tar shards: classification (``cls`` and/or ``txt``) or captions."""
    opts = options_for(spec)
    mode = opts.str("mode", default="classification", choices=MODES)
    image_keys = tuple(k.lower().lstrip(".") for k in
                       opts.str_list("image_keys", default=list(IMAGE_KEYS)))
    if not image_keys:
        raise RecipeError(opts.key("image_keys"), "must list at least one image extension")
    urls = _read_urls(opts, split)
    build = _captions if mode == "captions" else _classification
    bundle = build(opts, urls, image_keys, resolve_transform(transform))
    bundle.info.update(source="webdataset", split=split, shards=len(urls), first_shard=urls[0])
    return bundle


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("webdataset", make_webdataset)
