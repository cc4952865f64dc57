"""ImageNet, its distribution shifts, ObjectNet and Oxford Flowers-102, read from local copies.

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
* ``objectnet``: ``<root>/objectnet-1.0/images/<folder>/*.png`` and the mapping ObjectNet ships,
  ``<root>/objectnet-1.0/mappings/objectnet_to_imagenet_1k.json`` (``objectnet-1.0/`` may be
  ``<root>`` itself; ``mapping_file`` points elsewhere). Only the folders the mapping names are
  used (113 of 313 in the published mapping). Mapping keys are ObjectNet labels ("Alarm clock",
  matched to folders through ``folder_to_objectnet_label.json`` beside the mapping) or folder
  names; values are ImageNet descriptions joined by ``"; "`` ("analog clock; digital clock").
  The 1-pixel red border ObjectNet draws around every image is cropped off.
* ``flowers102``: ``source = "hf"`` reads a Hugging Face ``datasets`` copy through the ``hf``
  plugin (``path`` and the other ``hf`` options pass through; class names come from the label
  column's ``ClassLabel``); ``source = "torchvision"`` reads
  ``<root>/flowers-102/{jpg/, imagelabels.mat, setid.mat}`` (needs scipy and a ``classnames_file``
  with the 102 names, one per line; split ``train`` is setid's ``trnid``, ``test`` its
  ``tstid``). Without ``source``: ``"hf"`` when ``path`` is set, else ``"torchvision"``. The
  default prompt is CLIP's "a photo of a {}, a type of flower."; ``templates`` replaces it.

ImageNet labels are indices in the sorted wnid order of ImageNet-1k (timm's shipped
``imagenet_synsets.txt``), named by open_clip's ``IMAGENET_CLASSNAMES``. ImageNet-R and -A label
their 200 classes 0..199 in sorted-wnid order and set ``class_subset`` to those classes' ImageNet-1k
indices. ObjectNet classes are sorted by folder; each may stand for several ImageNet classes, so
``info["imagenet_indices"]`` lists them per class and ``class_subset`` is set only when every class
maps to exactly one. Datasets other than ``imagenet`` and ``flowers102`` have a single split, served
for both ``train`` and ``test``.

Options of the ImageNet-style datasets (and ObjectNet): ``root``, ``templates`` (``"openai"``:
the 80 CLIP prompts, the default; ``"simple"``: open_clip's 7; or a list of strings with one
``{}``), ``extensions`` (image suffixes) and ``max_per_class`` (first N images of each class, for
quick looks).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from tracer_cli import hookimpl
from tracer_cli.contracts import DatasetBundle
from tracer_cli.errors import MissingResourceError, RecipeError
from tracer_cli.options import Options
from tracer_plugins.datasets.files import (
    ImageListDataset, _preview, _read_extensions, options_for, read_templates, resolve_transform)
from tracer_plugins.datasets.hf import make_hf

DATA_ENV = "TRACER_DATA"
DATA_HOME = "~/data"
TEMPLATE_SETS = ("openai", "simple")
# The prompt CLIP's authors used for Flowers-102.
FLOWERS_TEMPLATES = ("a photo of a {}, a type of flower.",)
FLOWERS_CLASSES = 102
OBJECTNET_MAPPING = "objectnet_to_imagenet_1k.json"
OBJECTNET_LABELS = "folder_to_objectnet_label.json"


# --------------------------------------------------------------------------- shipped class lists


@functools.lru_cache(maxsize=None)
def _timm_list(filename: str) -> tuple[str, ...]:
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
    wnids = _timm_list("imagenet_synsets.txt")
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
    wnids = tuple(sorted(_timm_list(synsets_file)))
    position = {w: i for i, w in enumerate(imagenet_wnids())}
    subset = tuple(position[w] for w in wnids)
    names = imagenet_classnames()
    return ClassList(wnids, tuple(names[i] for i in subset), subset,
                     f"the {len(wnids)} {title} wnids, {wnids[0]} ... {wnids[-1]}")


# --------------------------------------------------------------------------- roots and errors


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


def _data_dir(where: Where, subdirs: Sequence[str], root_ok: bool) -> Path:
    """The first of ``root/<subdir>`` that exists, else (when ``root_ok``) ``root`` itself."""
    root = where.root
    if not root.is_dir():
        raise where.error("the root " + ("does not exist" if not root.exists()
                                         else "is not a directory"))
    for name in subdirs:
        if (root / name).is_dir():
            return root / name
    if root_ok:
        return root
    raise where.error(f"the root has no {' or '.join(f'{s}/' for s in subdirs)} folder")


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


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
        problem += f"; unexpected: {_preview(strange)}"
    if missing:
        problem += f"; missing: {_preview(missing)}"
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
                          f"{_preview(empty)} under {folder}")
    return rows


def scan_classes(where: Where, folder: Path, classes: ClassList, extensions: tuple[str, ...],
                 limit: int | None) -> list[tuple[Path, int, None]]:
    """Rows for ``folder``, whose class folders must be exactly ``classes``."""
    problem = _folder_problem(_subdirs(folder), classes)
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
    if isinstance(value, str) and "{}" not in value:
        if value not in TEMPLATE_SETS:
            raise RecipeError(opts.key("templates"),
                              f"got {value!r}; use \"openai\" (CLIP's 80 prompts), \"simple\" "
                              "(open_clip's 7) or a list of templates with one '{}' each")
        return imagenet_templates(value)
    return read_templates(opts)


def read_common(opts: Options, dataset: str, tree: tuple[str, ...]) -> Common:
    """Read the shared options; unknown keys are rejected before the disk is touched."""
    root, origin = resolve_root(opts, dataset)
    return Common(where=Where(dataset, root, origin, tree, opts.key("root")),
                  templates=read_imagenet_templates(opts),
                  extensions=_read_extensions(opts),
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
    folder = _data_dir(common.where, subdirs, root_ok)
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


# --------------------------------------------------------------------------- ObjectNet

OBJECTNET_TREE = ("<root>/", "  objectnet-1.0/images/alarm_clock/<image>.png  (313 folders)",
                  f"  objectnet-1.0/mappings/{OBJECTNET_MAPPING}  (objectnet-1.0/ may be <root>)")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@functools.lru_cache(maxsize=None)
def _imagenet_by_description() -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """ImageNet-1k indices by WordNet description ("analog clock") and by its first lemma."""
    position = {w: i for i, w in enumerate(imagenet_wnids())}
    full: dict[str, list[int]] = {}
    first: dict[str, list[int]] = {}
    for line in _timm_list("imagenet_synset_to_lemma.txt"):
        wnid, _, lemmas = line.partition("\t")
        if wnid in position:
            full.setdefault(_norm(lemmas), []).append(position[wnid])
            first.setdefault(_norm(lemmas.split(",")[0]), []).append(position[wnid])
    return ({k: tuple(v) for k, v in full.items()}, {k: tuple(v) for k, v in first.items()})


def _imagenet_index(description: str) -> int | None:
    """The one ImageNet-1k class a description names, or None (unknown or ambiguous)."""
    full, first = _imagenet_by_description()
    # ObjectNet quotes the full description; the first lemma is a fallback for hand-made mappings.
    found = full.get(_norm(description)) or first.get(_norm(description.split(",")[0]), ())
    return found[0] if len(found) == 1 else None


def _read_json_mapping(path: Path, where: Where, what: str) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise where.error(f"cannot read the {what} {path} ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise where.error(f"the {what} {path} is not a JSON object of strings")
    return data


def _objectnet_folder(key: str, folders: set[str], by_label: dict[str, str]) -> str | None:
    for candidate in (key, by_label.get(key), key.lower().replace(" ", "_")):
        if candidate in folders:
            return candidate
    return None


def objectnet_classes(mapping_path: Path, images: Path,
                      where: Where) -> tuple[list[str], list[str], list[list[int]]]:
    """(folders, class names, ImageNet-1k indices per class) of the mapped classes, by folder."""
    if not mapping_path.is_file():
        raise where.error(f"the class mapping {mapping_path} does not exist; set mapping_file to "
                          f"the {OBJECTNET_MAPPING} ObjectNet ships in objectnet-1.0/mappings/")
    mapping = _read_json_mapping(mapping_path, where, "class mapping")
    labels_path = mapping_path.parent / OBJECTNET_LABELS
    by_label = ({v: k for k, v in _read_json_mapping(labels_path, where, "folder names").items()}
                if labels_path.is_file() else {})
    folders = set(_subdirs(images))
    classes, no_folder, unknown = {}, [], []
    for key, descriptions in mapping.items():
        parts = [d.strip() for d in descriptions.split(";") if d.strip()]
        indices = {d: _imagenet_index(d) for d in parts}
        unknown.extend(d for d, i in indices.items() if i is None)
        folder = _objectnet_folder(key, folders, by_label)
        if folder is None:
            no_folder.append(key)
        elif parts:
            name = key if key != folder else folder.replace("_", " ")
            classes[folder] = (name, sorted({i for i in indices.values() if i is not None}))
    if no_folder:
        raise where.error(f"{len(no_folder)} class(es) of {mapping_path} have no folder in "
                          f"{images}: {_preview(no_folder)}")
    if unknown:
        raise where.error(f"{mapping_path} names ImageNet descriptions that match no single "
                          f"ImageNet-1k class: {_preview(unknown)}")
    if not classes:
        raise where.error(f"{mapping_path} maps no class to ImageNet-1k")
    ordered = sorted(classes)
    return ordered, [classes[f][0] for f in ordered], [classes[f][1] for f in ordered]


class CropBorder:
    """Crop the 1-pixel red frame ObjectNet draws around every image, then apply ``transform``."""

    def __init__(self, transform: Callable[[Any], Any]):
        self.transform = transform

    def __call__(self, image: Any) -> Any:
        width, height = image.size
        if width > 2 and height > 2:
            image = image.crop((1, 1, width - 1, height - 1))
        return self.transform(image)


def make_objectnet(spec: dict[str, Any], split: str,
                   transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """ObjectNet's ImageNet-overlapping classes, through ObjectNet's own class mapping."""
    opts = options_for(spec)
    common = read_common(opts, "objectnet", OBJECTNET_TREE)
    mapping_file = opts.path("mapping_file", default=None)
    opts.done()
    where = common.where
    base = _data_dir(where, ("objectnet-1.0",), root_ok=True)
    images = base / "images"
    if not images.is_dir():
        raise where.error(f"{base} has no images/ folder")
    mapping_path = base / "mappings" / OBJECTNET_MAPPING if mapping_file is None else mapping_file
    folders, names, indices = objectnet_classes(mapping_path, images, where)
    # Only the mapped folders: ObjectNet's other classes have no ImageNet counterpart.
    rows = collect_rows(where, images, folders, common.extensions, common.limit)
    single = all(len(i) == 1 for i in indices)
    return DatasetBundle(
        dataset=ImageListDataset(rows, CropBorder(resolve_transform(transform))),
        classnames=names, templates=common.templates,
        class_subset=[i[0] for i in indices] if single else None,
        info={"source": "objectnet", "root": str(base), "mapping_file": str(mapping_path),
              "split": split, "num_images": len(rows), "imagenet_indices": indices,
              "imagenet_subset": sorted({i for group in indices for i in group}),
              "max_per_class": common.limit})


# --------------------------------------------------------------------------- Flowers-102

FLOWERS_TREE = ("<root>/", "  flowers-102/jpg/image_00001.jpg ... image_08189.jpg",
                "  flowers-102/imagelabels.mat, setid.mat  (flowers-102/ may be <root> itself)")
# torchvision's split names in setid.mat: trnid (1020 images), valid (1020), tstid (6149).
FLOWERS_SPLITS = {"train": "trnid", "test": "tstid"}


def _flowers_hf(opts: Options, spec: dict[str, Any], split: str,
                transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """Flowers-102 from a ``datasets`` copy: every option but ``source`` goes to ``hf``."""
    if not opts.has("path"):
        raise RecipeError(opts.key("path"), "flowers102 with source = \"hf\" needs 'path': the hub "
                                            "id or save_to_disk folder of a Flowers-102 copy (or "
                                            "use source = \"torchvision\" with 'root')")
    passed = {k: v for k, v in spec.items() if k != "source"}
    passed.setdefault("templates", list(FLOWERS_TEMPLATES))
    bundle = make_hf(passed, split, transform)
    bundle.info["dataset"] = "flowers102"
    return bundle


def _read_classnames_file(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise RecipeError(key, f"{path} does not exist; expected a text file with the "
                               f"{FLOWERS_CLASSES} class names, one per line, in label order")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip()]
    if len(names) != FLOWERS_CLASSES:
        raise RecipeError(key, f"{path} lists {len(names)} names; Flowers-102 has "
                               f"{FLOWERS_CLASSES} (one per line, in label order)")
    return names


def _flowers_rows(base: Path, split: str, limit: int | None,
                  where: Where) -> list[tuple[Path, int, None]]:
    """(image, label, None) rows of ``split`` from imagelabels.mat and setid.mat."""
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise MissingResourceError(
            "flowers102: reading the torchvision layout's imagelabels.mat and setid.mat needs "
            "scipy, which is not installed: pip install scipy, or use a Hugging Face copy "
            "(source = \"hf\", path = \"<save_to_disk folder or hub id>\")") from exc
    labels = loadmat(str(base / "imagelabels.mat"))["labels"].ravel()  # 1-based, per image
    ids = sorted(int(i) for i in loadmat(str(base / "setid.mat"))[FLOWERS_SPLITS[split]].ravel())
    rows, per_class, missing = [], {}, []
    for image_id in ids:
        label = int(labels[image_id - 1]) - 1
        if limit is not None and per_class.get(label, 0) >= limit:
            continue
        per_class[label] = per_class.get(label, 0) + 1
        path = base / "jpg" / f"image_{image_id:05d}.jpg"
        (rows if path.is_file() else missing).append((path, label, None))
    if missing:
        raise where.error(f"{len(missing)} image(s) of split {split!r} are missing: "
                          f"{_preview([str(r[0]) for r in missing])}")
    return rows


def _flowers_torchvision(opts: Options, split: str,
                         transform: Callable[[Any], Any] | None) -> DatasetBundle:
    root, origin = resolve_root(opts, "flowers102")
    names_file = opts.path("classnames_file", default=None)
    templates = read_templates(opts) if opts.has("templates") else list(FLOWERS_TEMPLATES)
    limit = opts.int("max_per_class", default=None, minimum=1)
    opts.done()
    if names_file is None:
        raise RecipeError(opts.key("classnames_file"),
                          "the torchvision Flowers-102 layout has no class names: give a text "
                          f"file with the {FLOWERS_CLASSES} names, one per line, in label order "
                          "(or read a Hugging Face copy with source = \"hf\")")
    where = Where("flowers102", root, origin, FLOWERS_TREE, opts.key("root"))
    base = _data_dir(where, ("flowers-102",), root_ok=True)
    absent = [n for n in ("jpg/", "imagelabels.mat", "setid.mat") if not (base / n).exists()]
    if absent:
        raise where.error(f"{base} lacks {', '.join(absent)}")
    classnames = _read_classnames_file(names_file, opts.key("classnames_file"))
    rows = _flowers_rows(base, split, limit, where)
    return DatasetBundle(
        dataset=ImageListDataset(rows, resolve_transform(transform)),
        classnames=classnames, templates=templates,
        info={"source": "flowers102", "layout": "torchvision", "root": str(base), "split": split,
              "num_images": len(rows), "max_per_class": limit})


def make_flowers102(spec: dict[str, Any], split: str,
                    transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """Oxford Flowers-102 from a Hugging Face copy or the torchvision layout."""
    opts = options_for(spec)
    source = opts.str("source", default=None, choices=("hf", "torchvision"))
    if source is None:
        if opts.has("path") and opts.has("root"):
            raise RecipeError(opts.key("source"), "both 'path' (a Hugging Face copy) and 'root' "
                                                  "(the torchvision layout) are set: choose one "
                                                  "with source = \"hf\" or \"torchvision\"")
        source = "hf" if opts.has("path") else "torchvision"
    if source == "hf":
        return _flowers_hf(opts, spec, split, transform)
    return _flowers_torchvision(opts, split, transform)


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("imagenet", make_imagenet)
    registry.add("imagenet-v2", make_imagenet_v2)
    registry.add("imagenet-r", make_imagenet_r)
    registry.add("imagenet-a", make_imagenet_a)
    registry.add("imagenet-sketch", make_imagenet_sketch)
    registry.add("objectnet", make_objectnet)
    registry.add("flowers102", make_flowers102)
