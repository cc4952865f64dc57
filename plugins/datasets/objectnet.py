"""ObjectNet's ImageNet-overlapping classes (``objectnet``), read from a local copy.

``<root>`` is the ``root`` option; without it, ``$TRACER_DATA/objectnet``; without ``TRACER_DATA``,
``~/data/objectnet``. The layout is the one ObjectNet publishes:
``<root>/objectnet-1.0/images/<folder>/*.png`` and the mapping ObjectNet ships,
``<root>/objectnet-1.0/mappings/objectnet_to_imagenet_1k.json`` (``objectnet-1.0/`` may be
``<root>`` itself; ``mapping_file`` points elsewhere). Only the folders the mapping names are
used (113 of 313 in the published mapping). Mapping keys are ObjectNet labels ("Alarm clock",
matched to folders through ``folder_to_objectnet_label.json`` beside the mapping) or folder
names; values are ImageNet descriptions joined by ``"; "`` ("analog clock; digital clock").
Every image loses 2 pixels on each side before the transform: ObjectNet draws a red border round
its images, and the reference evaluation (TRACER's, as WiSE-FT's and FLYP's) crops 2 pixels.

Classes are sorted by folder (labels 0 ... 112 with the published mapping); each stands for one or
more ImageNet classes, listed per class in ``info["imagenet_indices"]``. The ``head`` option says
how they are scored:

* ``"imagenet"`` (default; the protocol of the paper and its reference code): through ImageNet-1k.
  The bundle sets ``class_groups`` (each class's ImageNet indices) and ``parent_classnames``
  (ImageNet's 1000 names), so a classification task scores the ImageNet classes with the ImageNet
  prompts (``templates``, CLIP's 80 by default) and gives each ObjectNet class the maximum of its
  ImageNet classes' logits; metrics are computed on those 113 logits.
* ``"objectnet"``: a head of ObjectNet's own class names ("Alarm clock") with ``templates``;
  ``class_subset`` is set when every class maps to exactly one ImageNet class. Numbers measured
  this way are not comparable with the paper's ObjectNet column.

There is a single split, served for both ``train`` and ``test``. Options are those of the
ImageNet-style datasets (``root``, ``templates``, ``extensions``, ``max_per_class``; see
:mod:`tracer_plugins.datasets.imagenet`) plus ``mapping_file`` and ``head``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable

from tracer_cli.sdk import DatasetBundle, hookimpl
from tracer_plugins.datasets.common import (
    ImageListDataset, Where, data_dir, options_for, preview, resolve_transform, subdirs)
from tracer_plugins.datasets.imagenet import (
    collect_rows, imagenet_classnames, imagenet_wnids, read_common, timm_class_list)

OBJECTNET_MAPPING = "objectnet_to_imagenet_1k.json"
OBJECTNET_LABELS = "folder_to_objectnet_label.json"
HEADS = ("imagenet", "objectnet")
# Pixels cropped off each side: ObjectNet's red border, as the reference evaluation crops it.
BORDER = 2

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
    for line in timm_class_list("imagenet_synset_to_lemma.txt"):
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
    folders = set(subdirs(images))
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
                          f"{images}: {preview(no_folder)}")
    if unknown:
        raise where.error(f"{mapping_path} names ImageNet descriptions that match no single "
                          f"ImageNet-1k class: {preview(unknown)}")
    if not classes:
        raise where.error(f"{mapping_path} maps no class to ImageNet-1k")
    ordered = sorted(classes)
    return ordered, [classes[f][0] for f in ordered], [classes[f][1] for f in ordered]


class CropBorder:
    """Crop :data:`BORDER` pixels off each side of an image (ObjectNet's red frame), then apply
    ``transform``; an image too small to keep a pixel is passed on whole."""

    def __init__(self, transform: Callable[[Any], Any]):
        self.transform = transform

    def __call__(self, image: Any) -> Any:
        width, height = image.size
        if width > 2 * BORDER and height > 2 * BORDER:
            image = image.crop((BORDER, BORDER, width - BORDER, height - BORDER))
        return self.transform(image)


def make_objectnet(spec: dict[str, Any], split: str,
                   transform: Callable[[Any], Any] | None) -> DatasetBundle:
    """ObjectNet's ImageNet-overlapping classes, through ObjectNet's own class mapping."""
    opts = options_for(spec)
    common = read_common(opts, "objectnet", OBJECTNET_TREE)
    mapping_file = opts.path("mapping_file", default=None)
    head = opts.str("head", default="imagenet", choices=HEADS)
    opts.done()
    where = common.where
    base = data_dir(where, ("objectnet-1.0",), root_ok=True)
    images = base / "images"
    if not images.is_dir():
        raise where.error(f"{base} has no images/ folder")
    mapping_path = base / "mappings" / OBJECTNET_MAPPING if mapping_file is None else mapping_file
    folders, names, indices = objectnet_classes(mapping_path, images, where)
    # Only the mapped folders: ObjectNet's other classes have no ImageNet counterpart.
    rows = collect_rows(where, images, folders, common.extensions, common.limit)
    single = head == "objectnet" and all(len(i) == 1 for i in indices)
    return DatasetBundle(
        dataset=ImageListDataset(rows, CropBorder(resolve_transform(transform))),
        classnames=names, templates=common.templates,
        class_subset=[i[0] for i in indices] if single else None,
        class_groups=indices if head == "imagenet" else None,
        parent_classnames=list(imagenet_classnames()) if head == "imagenet" else None,
        info={"source": "objectnet", "root": str(base), "mapping_file": str(mapping_path),
              "split": split, "head": head, "num_images": len(rows),
              "imagenet_indices": indices,
              "imagenet_subset": sorted({i for group in indices for i in group}),
              "max_per_class": common.limit})


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("objectnet", make_objectnet)
