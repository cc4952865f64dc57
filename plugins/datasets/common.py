"""Helpers shared by the dataset plugins that read images from local files or dataset rows.

A dataset plugin that reads its own layout needs the same few pieces as the built-in ones, and
they live here so that no plugin imports another plugin's private names:

* options: :func:`options_for` (an :class:`~tracer_cli.sdk.Options` over a dataset table whose
  errors name the recipe key), :func:`read_templates`, :func:`read_extensions`,
  :func:`check_classnames`, :func:`reject_class_options`, :func:`split_path`,
  :func:`read_lines` (a text file of class names, one per line);
* images: :func:`open_rgb` (decode fully, as RGB) and ``UNREADABLE_IMAGE_ERRORS`` (what a corrupt,
  truncated or missing file raises), :func:`resolve_transform` (the backbone's transform, or
  ``ToTensor`` without one);
* items: :class:`LazyImageDataset`, the one ``__getitem__`` of every dataset whose images are
  decoded on access (an undecodable one becomes a :class:`~tracer_cli.sdk.SkippedItem`,
  which the engine drops and counts), and two ready-made ones, :class:`ImageListDataset`
  ((path, label, caption) rows) and :class:`CaptionListDataset` (images with all their
  captions); :func:`caption_fields` is the shape of a caption (retrieval) item;
* local roots: :func:`resolve_root` (the ``root`` option, else ``$TRACER_DATA/<name>``, else
  ``~/data/<name>``), :class:`Where` (where a dataset was looked for, and the error that says how
  to fix it), :func:`data_dir`, :func:`subdirs`;
* messages: :func:`preview` (the first few of a list, and how many more).
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset

from tracer_cli.sdk import (
    MissingResourceError, Options, RecipeError, SkippedItem, skipped_item, template_problem)

DEFAULT_TEMPLATES = ("a photo of a {}.",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# The dataset modes of the plugins that read both kinds of data (csv, hf).
MODES = ("classification", "captions")
# Options that only make sense for data with classes.
_CLASS_OPTIONS = ("label_column", "classnames", "templates")
_MAX_LISTED = 5
DATA_ENV = "TRACER_DATA"
DATA_HOME = "~/data"

# What reading one image file can raise when the file is corrupt, truncated, not an image, or gone:
# PIL reports some broken headers as SyntaxError, and refuses absurd sizes as a bomb.
UNREADABLE_IMAGE_ERRORS = (OSError, SyntaxError, Image.DecompressionBombError)


# --------------------------------------------------------------------------- options


def options_for(spec: dict[str, Any]) -> Options:
    """Options over ``spec``; its ``_path`` entry (the recipe key path of the table) names keys."""
    table = dict(spec)
    path = table.pop("_path", "data")
    return Options(table, path=path)


def read_templates(opts: Options) -> list[str]:
    """The ``templates`` option: prompt templates, each with exactly one ``{}`` or ``{c}``."""
    templates = opts.str_list("templates", default=list(DEFAULT_TEMPLATES))
    if not templates:
        raise RecipeError(opts.key("templates"), "must list at least one template")
    for template in templates:
        problem = template_problem(template)
        if problem:
            raise RecipeError(opts.key("templates"), problem)
    return templates


def read_extensions(opts: Options) -> tuple[str, ...]:
    """The ``extensions`` option: image file suffixes, lower case with a dot (default
    :data:`IMAGE_EXTENSIONS`)."""
    raw = opts.str_list("extensions", default=list(IMAGE_EXTENSIONS))
    exts = tuple("." + e.lower().lstrip(".") for e in raw)
    if not exts:
        raise RecipeError(opts.key("extensions"), "must list at least one file extension")
    return exts


def check_classnames(names: list[str] | None, found: Sequence[str], key: str) -> list[str]:
    """The ``classnames`` option (recipe key ``key``) when given, one per class in ``found``;
    else ``found`` itself."""
    if names is None:
        return list(found)
    if len(names) != len(found):
        raise RecipeError(key, f"lists {len(names)} names but the data has {len(found)} classes "
                               f"({preview(found)})")
    return names


def reject_class_options(opts: Options, source: str) -> None:
    """Caption mode reads no classes: name the first class-only option that was set anyway."""
    for name in _CLASS_OPTIONS:
        if opts.has(name):
            raise RecipeError(opts.key(name), f'is not used with mode = "captions": a caption '
                                              f"{source} dataset has no classes; remove it, or "
                                              'use mode = "classification"')


def split_path(raw: str, split: str) -> Path:
    """``raw`` with ``{split}`` replaced (not ``str.format``: paths may contain other braces)."""
    return Path(raw.replace("{split}", split)).expanduser()


def read_lines(path: Path, key: str, what: str) -> list[str]:
    """The non-blank lines (stripped) of the text file ``path``, named by the recipe key ``key``;
    ``what`` says what the file should hold, for the error when it is missing or unreadable."""
    if not path.is_file():
        raise RecipeError(key, f"{path} does not exist; expected a text file with {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(key, f"cannot read {path} ({exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def preview(values: Sequence[Any]) -> str:
    """The first few ``values`` joined by commas, and how many more there are."""
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED])
    more = len(values) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


# --------------------------------------------------------------------------- images and items


def resolve_transform(transform: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """The backbone's transform, or plain ``ToTensor`` when none is given (tests, inspection)."""
    if transform is not None:
        return transform
    from torchvision import transforms  # imported late: only needed without a backbone

    return transforms.ToTensor()


def open_rgb(source: Any) -> Image.Image:
    """The fully decoded RGB image at ``source`` (a path or a file object).

    ``convert`` forces the decode inside the ``with``, so a truncated file fails here, where the
    caller can turn it into a :class:`SkippedItem`, and not later inside a transform.
    """
    with Image.open(source) as image:
        return image.convert("RGB")


def caption_fields(captions: Sequence[str], index: int) -> dict[str, Any]:
    """The fields of a caption (retrieval) item besides its image: the first caption, all
    captions, and the item's index as ``image_id`` (retrieval metrics map each caption to its
    image by it)."""
    return {"caption": captions[0], "captions": list(captions), "image_id": int(index)}


class LazyImageDataset(Dataset, abc.ABC):
    """Items whose image is decoded on access: ``{"image": transform(image), **fields}``.

    Decoding in ``__getitem__`` keeps DataLoader workers from sharing file handles, and a file
    that cannot be decoded (``UNREADABLE_IMAGE_ERRORS``) becomes a :class:`SkippedItem` named by
    :meth:`source`, which the engine drops and counts, instead of an error mid-epoch. A subclass
    says where item ``index`` comes from and reads it; the transform is applied here.
    """

    def __init__(self, transform: Callable[[Any], Any]):
        self.transform = transform

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of items."""

    @abc.abstractmethod
    def source(self, index: int) -> Any:
        """What item ``index`` is read from, for the skipped-item record (a path, ``"row N"``)."""

    @abc.abstractmethod
    def read(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        """The decoded RGB image of item ``index`` and the item's other fields; may raise one of
        ``UNREADABLE_IMAGE_ERRORS`` when the image cannot be read."""

    def __getitem__(self, index: int) -> dict[str, Any] | SkippedItem:
        try:
            image, fields = self.read(index)
        except UNREADABLE_IMAGE_ERRORS as exc:
            return skipped_item(self.source(index), exc)
        return {"image": self.transform(image), **fields}


class ImageListDataset(LazyImageDataset):
    """(image path, label, caption) rows; items are ``{"image", "label"[, "caption"]}`` (no
    caption key when the row's caption is None)."""

    def __init__(self, rows: list[tuple[Path, int, str | None]], transform: Callable[[Any], Any]):
        super().__init__(transform)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def source(self, index: int) -> Path:
        return self.rows[index][0]

    def read(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        path, label, caption = self.rows[index]
        fields: dict[str, Any] = {"label": label}
        if caption is not None:
            fields["caption"] = caption
        return open_rgb(path), fields


class CaptionListDataset(LazyImageDataset):
    """Images with all their captions, one item per image (:func:`caption_fields`)."""

    def __init__(self, images: list[Path], captions: list[list[str]],
                 transform: Callable[[Any], Any]):
        super().__init__(transform)
        self.images, self.captions = images, captions

    def __len__(self) -> int:
        return len(self.images)

    def source(self, index: int) -> Path:
        return self.images[index]

    def read(self, index: int) -> tuple[Image.Image, dict[str, Any]]:
        return open_rgb(self.images[index]), caption_fields(self.captions[index], index)


# --------------------------------------------------------------------------- local roots


@dataclass(frozen=True)
class Where:
    """Where a dataset was looked for, and how to tell the user to fix it."""

    dataset: str
    root: Path
    origin: str
    tree: tuple[str, ...]  # three lines sketching the expected layout
    root_key: str

    def error(self, problem: str) -> MissingResourceError:
        sketch = "\n".join(f"    {line}" for line in self.tree)
        return MissingResourceError(
            f"{self.dataset}: {problem}\n"
            f"  tried: {self.root} ({self.origin})\n"
            f"  expected layout:\n{sketch}\n"
            f"  set {self.root_key} = \"/path/to/{self.dataset}\" in the recipe, or on the "
            f"command line --set {self.root_key}=/path/to/{self.dataset}, or "
            f"{DATA_ENV}=/path/to/datasets (read as ${DATA_ENV}/{self.dataset})")


def resolve_root(opts: Options, dataset: str) -> tuple[Path, str]:
    """The dataset root (option, else ``$TRACER_DATA/<dataset>``, else ``~/data/<dataset>``) and
    where it came from."""
    root = opts.path("root", default=None)
    if root is not None:
        return root, f"from {opts.key('root')}"
    base = os.environ.get(DATA_ENV, "").strip()
    if base:
        return Path(base).expanduser() / dataset, f"from {DATA_ENV}={base}"
    return (Path(DATA_HOME).expanduser() / dataset,
            f"the default: neither {opts.key('root')} nor {DATA_ENV} is set")


def data_dir(where: Where, candidates: Sequence[str], root_ok: bool) -> Path:
    """The first of ``root/<candidate>`` that exists, else (when ``root_ok``) ``root`` itself."""
    root = where.root
    if not root.is_dir():
        raise where.error("the root " + ("does not exist" if not root.exists()
                                         else "is not a directory"))
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    if root_ok:
        return root
    raise where.error(f"the root has no {' or '.join(f'{s}/' for s in candidates)} folder")


def subdirs(folder: Path) -> list[str]:
    """The sorted names of the folders directly in ``folder``, hidden ones left out."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
