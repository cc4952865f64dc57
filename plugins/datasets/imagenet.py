"""ImageNet and its distribution shifts (ImageNetV2, -R, -A, -Sketch), read from local copies.

Each dataset is read from a local folder in the layout its authors publish (nothing is
downloaded). ``<root>`` is the ``root`` option; without it, ``$TRACER_DATA/<name>``; without
``TRACER_DATA``, ``~/data/<name>`` (``<name>`` being the registered dataset name):

* ``imagenet``: ILSVRC-2012, ``<root>/val/<wnid>/*.JPEG`` for split ``test`` and
  ``<root>/train/<wnid>/*.JPEG`` for split ``train``; 1000 wnid folders each (``val/`` must be
  sorted into wnid folders, as the usual ``valprep.sh`` does).
* ``imagenet-v2``: ImageNetV2 matched-frequency,
  ``<root>/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg`` (or the numbered folders
  directly in ``<root>``); the folder number is the ImageNet label.
* ``imagenet-r``, ``imagenet-a``: ``<root>/imagenet-r/<wnid>/*`` (``imagenet-a/`` for -A), or the
  200 wnid folders directly in ``<root>``.
* ``imagenet-sketch``: ``<root>/sketch/<wnid>/*.JPEG`` or the 1000 wnid folders in ``<root>``.

ImageNet labels are indices in the sorted wnid order of ImageNet-1k (timm's shipped
``imagenet_synsets.txt``), named by open_clip's ``IMAGENET_CLASSNAMES``. ImageNet-R and -A label
their 200 classes 0..199 in sorted-wnid order and set ``class_subset`` to those classes' ImageNet-1k
indices. Datasets other than ``imagenet`` have a single split, served for both ``train`` and
``test``.

Options: ``root``, ``templates`` (``"openai"``: the 80 CLIP prompts, the default; ``"simple"``:
open_clip's 7; or a list of strings with one ``{}``), ``extensions`` (image suffixes) and
``max_per_class`` (first N images of each class, for quick looks). ObjectNet
(:mod:`tracer_plugins.datasets.objectnet`) reads the same options and uses the class lists, the
folder scan (:func:`collect_rows`) and :func:`read_common` from here.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from tracer_cli.sdk import (
    DatasetBundle, MissingResourceError, Options, RecipeError, TEMPLATE_PLACEHOLDERS, hookimpl)
from tracer_plugins.datasets.common import (
    ImageListDataset, Where, data_dir, options_for, preview, read_extensions, read_templates,
    resolve_root, resolve_transform, subdirs)

TEMPLATE_SETS = ("openai", "simple")


# --------------------------------------------------------------------------- shipped class lists


@functools.lru_cache(maxsize=None)
def timm_class_list(filename: str) -> tuple[str, ...]:
    """The non-empty lines of one of timm's shipped class lists (``timm/data/_info``)."""
    try:
        text = resources.files("timm.data").joinpath("_info").joinpath(filename).read_text()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise MissingResourceError(f"timm's class list _info/{filename} is not available "
                                   f"({exc}); install timm >= 0.9 (pip install timm)") from exc
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@functools.lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in label order."""
    wnids = timm_class_list("imagenet_synsets.txt")
    # Label index = position in the sorted wnid list (torchvision's ImageFolder order, which
    # open_clip's class names follow); any other list would silently permute every label.
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):
        raise MissingResourceError("timm's imagenet_synsets.txt is not the sorted list of the 1000 "
                                   "ImageNet-1k wnids; reinstall timm")
    return wnids


@functools.lru_cache(maxsize=None)
def imagenet_classnames() -> tuple[str, ...]:
    """open_clip's ImageNet-1k class names (CLIP's cleaned-up names), in label order."""
    import open_clip  # imported late: slow, and only needed when a dataset is built

    names = tuple(open_clip.IMAGENET_CLASSNAMES)
    if len(names) != 1000:
        raise MissingResourceError(f"open_clip.IMAGENET_CLASSNAMES has {len(names)} names, not "
                                   "1000; install open_clip_torch >= 2.24")
    return names


def imagenet_templates(choice: str) -> list[str]:
    """open_clip's ImageNet prompts ``choice`` (``"openai"`` or ``"simple"``) as format strings."""
    import open_clip

    raw = {"openai": open_clip.OPENAI_IMAGENET_TEMPLATES,
           "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES}[choice]
    # open_clip 3.x ships templates as callables (lambda c: f"a photo of a {c}."); calling one with
    # "{}" gives back the format string tasks expect. Older releases ship the strings themselves.
    templates = [t("{}") if callable(t) else str(t) for t in raw]
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise MissingResourceError(f"open_clip's {choice} ImageNet templates are not single-'{{}}' "
                                   f"prompts (e.g. {bad[0]!r}); give 'templates' as a list")
    return templates


@dataclass(frozen=True)
class ClassList:
    """The classes a folder dataset expects: one class folder per label, in label order."""

    folders: tuple[str, ...]
    names: tuple[str, ...]
    subset: tuple[int, ...] | None
    what: str  # for messages: which folder names are expected


def _imagenet_classes() -> ClassList:
    return ClassList(imagenet_wnids(), imagenet_classnames(), None,
                     "the 1000 ImageNet-1k wnids, n01440764 ... n15075141")


def _v2_classes() -> ClassList:
    return ClassList(tuple(str(i) for i in range(1000)), imagenet_classnames(), None,
                     "folders named by ImageNet class index, 0 ... 999")


def _subset_classes(synsets_file: str, title: str) -> ClassList:
    """A subset of ImageNet-1k: labels are positions in its sorted wnid list."""
    wnids = tuple(sorted(timm_class_list(synsets_file)))
    position = {w: i for i, w in enumerate(imagenet_wnids())}
    subset = tuple(position[w] for w in wnids)
    names = imagenet_classnames()
    return ClassList(wnids, tuple(names[i] for i in subset), subset,
                     f"the {len(wnids)} {title} wnids, {wnids[0]} ... {wnids[-1]}")


# --------------------------------------------------------------------------- class folders


def _images(folder: Path, extensions: tuple[str, ...], limit: int | None) -> list[Path]:
    """The first ``limit`` sorted image files directly in ``folder`` (the layouts are flat)."""
    names = sorted(e.name for e in os.scandir(folder)
                   if e.is_file() and not e.name.startswith(".")
                   and os.path.splitext(e.name)[1].lower() in extensions)
    return [folder / name for name in names[:limit]]


def _folder_problem(found: list[str], classes: ClassList) -> str | None:
    """What is wrong with the class folders ``found``, or None when they are exactly the classes."""
    if not found:
        return "no class folders"
    expected, present = set(classes.folders), set(found)
    strange = [f for f in found if f not in expected]
    missing = [f for f in classes.folders if f not in present]
    if not strange and not missing:
        return None
    problem = (f"{len(found)} class folders where {len(classes.folders)} are expected "
               f"({classes.what})")
    if strange:
        problem += f"; unexpected: {preview(strange)}"
    if missing:
        problem += f"; missing: {preview(missing)}"
    return problem


def collect_rows(where: Where, folder: Path, class_folders: Sequence[str],
                 extensions: tuple[str, ...], limit: int | None) -> list[tuple[Path, int, None]]:
    """(image, label, None) rows for ``folder/<class_folders[label]>/<image>``; no class empty."""
    rows, empty = [], []
    for label, name in enumerate(class_folders):
        found = _images(folder / name, extensions, limit)
        empty.extend([] if found else [name])
        rows.extend((path, label, None) for path in found)
    if empty:
        raise where.error(f"no images ({', '.join(extensions)}) in class folder(s) "
                          f"{preview(empty)} under {folder}")
    return rows


def scan_classes(where: Where, folder: Path, classes: ClassList, extensions: tuple[str, ...],
                 limit: int | None) -> list[tuple[Path, int, None]]:
    """Rows for ``folder``, whose class folders must be exactly ``classes``."""
    problem = _folder_problem(subdirs(folder), classes)
    if problem is not None:
        raise where.error(f"{folder} has {problem}")
    return collect_rows(where, folder, classes.folders, extensions, limit)


# --------------------------------------------------------------------------- ImageNet family


@dataclass(frozen=True)
class Common:
    """The options every ImageNet-style dataset reads."""

    where: Where
    templates: list[str]
    extensions: tuple[str, ...]
    limit: int | None


def read_imagenet_templates(opts: Options) -> list[str]:
    """The ``templates`` option: ``"openai"`` (default), ``"simple"`` or a list of templates."""
    value = opts.raw("templates", default="openai")
    if isinstance(value, str) and not any(p in value for p in TEMPLATE_PLACEHOLDERS):
        if value not in TEMPLATE_SETS:
            raise RecipeError(opts.key("templates"),
                              f"got {value!r}; use \"openai\" (CLIP's 80 prompts), \"simple\" "
                              "(open_clip's 7) or a list of templates with one '{}' or '{c}' each")
        return imagenet_templates(value)
    return read_templates(opts)


def read_common(opts: Options, dataset: str, tree: tuple[str, ...]) -> Common:
    """Read the shared options; unknown keys are rejected before the disk is touched."""
    root, origin = resolve_root(opts, dataset)
    return Common(where=Where(dataset, root, origin, tree, opts.key("root")),
                  templates=read_imagenet_templates(opts),
                  extensions=read_extensions(opts),
                  limit=opts.int("max_per_class", default=None, minimum=1))


# name -> (subfolders of the root that may hold the class folders, whether the root itself may,
# the 3-line layout sketch, the class list)
_FOLDER_DATASETS: dict[str, tuple[tuple[str, ...], bool, tuple[str, ...],
                                  Callable[[], ClassList]]] = {
    "imagenet-v2": (("imagenetv2-matched-frequency-format-val",), True,
                    ("<root>/", "  imagenetv2-matched-frequency-format-val/0/<image>.jpeg",
                     "  ...  (1000 folders named 0 ... 999; they may also sit in <root> itself)"),
                    _v2_classes),
    "imagenet-r": (("imagenet-r",), True,
                   ("<root>/", "  imagenet-r/n01443537/<image>.jpg",
                    "  ...  (the 200 ImageNet-R wnid folders; they may also sit in <root> itself)"),
                   lambda: _subset_classes("imagenet_r_synsets.txt", "ImageNet-R")),
    "imagenet-a": (("imagenet-a",), True,
                   ("<root>/", "  imagenet-a/n01498041/<image>.jpg",
                    "  ...  (the 200 ImageNet-A wnid folders; they may also sit in <root> itself)"),
                   lambda: _subset_classes("imagenet_a_synsets.txt", "ImageNet-A")),
    "imagenet-sketch": (("sketch",), True,
                        ("<root>/", "  sketch/n01440764/<image>.JPEG",
                         "  ...  (1000 ImageNet wnid folders; they may also sit in <root> itself)"),
                        _imagenet_classes),
}


def _imagenet_layout(split: str) -> tuple[tuple[str, ...], bool, tuple[str, ...],
                                          Callable[[], ClassList]]:
    sub = "train" if split == "train" else "val"
    example = ("train/n01440764/n01440764_10026.JPEG" if split == "train"
               else "val/n01440764/ILSVRC2012_val_00000293.JPEG")
    tree = ("<root>/", f"  {example}",
            "  ...  (1000 wnid folders each in val/, read for split 'test', and in train/)")
    return (sub,), False, tree, _imagenet_classes


def _make_folder_dataset(spec: dict[str, Any], split: str, transform: Callable[[Any], Any] | None,
                         dataset: str) -> DatasetBundle:
    """One of the wnid/index-folder datasets, by registered name."""
    subdirs, root_ok, tree, class_list = (_imagenet_layout(split) if dataset == "imagenet"
                                          else _FOLDER_DATASETS[dataset])
    opts = options_for(spec)
    common = read_common(opts, dataset, tree)
    opts.done()
    classes = class_list()
    folder = data_dir(common.where, subdirs, root_ok)
    rows = scan_classes(common.where, folder, classes, common.extensions, common.limit)
    return DatasetBundle(
        dataset=ImageListDataset(rows, resolve_transform(transform)),
        classnames=list(classes.names), templates=common.templates,
        class_subset=list(classes.subset) if classes.subset is not None else None,
        info={"source": dataset, "root": str(folder), "split": split, "num_images": len(rows),
              "max_per_class": common.limit})


def make_imagenet(spec: dict[str, Any], split: str,
                  transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """ImageNet-1k from ``<root>/{train,val}/<wnid>/``."""
    return _make_folder_dataset(spec, split, transform, "imagenet")


def make_imagenet_v2(spec: dict[str, Any], split: str,
                     transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """ImageNetV2 (matched frequency) from folders named by class index."""
    return _make_folder_dataset(spec, split, transform, "imagenet-v2")


def make_imagenet_r(spec: dict[str, Any], split: str,
                    transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """ImageNet-R: 200 classes, ``class_subset`` into ImageNet-1k."""
    return _make_folder_dataset(spec, split, transform, "imagenet-r")


def make_imagenet_a(spec: dict[str, Any], split: str,
                    transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """ImageNet-A: 200 classes, ``class_subset`` into ImageNet-1k."""
    return _make_folder_dataset(spec, split, transform, "imagenet-a")


def make_imagenet_sketch(spec: dict[str, Any], split: str,
                         transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """ImageNet-Sketch: 1000 wnid folders."""
    return _make_folder_dataset(spec, split, transform, "imagenet-sketch")


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("imagenet", make_imagenet)
    registry.add("imagenet-v2", make_imagenet_v2)
    registry.add("imagenet-r", make_imagenet_r)
    registry.add("imagenet-a", make_imagenet_a)
    registry.add("imagenet-sketch", make_imagenet_sketch)
