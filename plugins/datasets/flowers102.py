"""Oxford Flowers-102 (``flowers102``), from a Hugging Face copy or the torchvision layout.

``source = "hf"`` reads a Hugging Face ``datasets`` copy through the ``hf`` plugin (``path`` and
the other ``hf`` options pass through; class names come from the label column's ``ClassLabel``);
``source = "torchvision"`` reads ``<root>/flowers-102/{jpg/, imagelabels.mat, setid.mat}`` (needs
scipy and a ``classnames_file`` with the 102 names, one per line; split ``train`` is setid's
``trnid``, ``test`` its ``tstid``). ``<root>`` is the ``root`` option; without it,
``$TRACER_DATA/flowers102``; without ``TRACER_DATA``, ``~/data/flowers102``. Without ``source``:
``"hf"`` when ``path`` is set, else ``"torchvision"``. The default prompt is CLIP's "a photo of a
{}, a type of flower."; ``templates`` replaces it. ``max_per_class`` keeps the first N images of
each class (torchvision layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tracer_cli.sdk import DatasetBundle, MissingResourceError, Options, RecipeError, hookimpl
from tracer_plugins.datasets.common import (
    ImageListDataset, Where, data_dir, options_for, preview, read_lines, read_templates,
    resolve_root, resolve_transform)
from tracer_plugins.datasets.hf import make_hf

# The prompt CLIP's authors used for Flowers-102.
FLOWERS_TEMPLATES = ("a photo of a {}, a type of flower.",)
FLOWERS_CLASSES = 102
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
    names = read_lines(path, key, f"the {FLOWERS_CLASSES} class names, one per line, in label "
                                  "order")
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
                          f"{preview([str(r[0]) for r in missing])}")
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
    base = data_dir(where, ("flowers-102",), root_ok=True)
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
    registry.add("flowers102", make_flowers102)
