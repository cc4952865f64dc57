"""Tiny fabricated copies of real dataset layouts (WILDS iWildCam v2.0, the ImageNet family,
ObjectNet and WebDataset tar shards), for tests that read them through the dataset plugins or run the shipped recipes.

Every image is one small PNG; the same encoded bytes are written everywhere, which keeps the
ImageNet-style trees (one folder per class, 1000 of them) fast to build.
"""

from __future__ import annotations

import csv
import io
import json
from importlib import resources
from pathlib import Path

from PIL import Image

# The columns of WILDS' iwildcam_v2.0/metadata.csv that its loader reads, plus category_id and
# the unnamed index column pandas wrote; tracer reads split, y and filename by name.
IWILDCAM_COLUMNS = ("", "split", "location_remapped", "location", "sequence_remapped", "sequence",
                    "y", "category_id", "datetime", "image_id", "filename")
# WILDS v2.0's first four classes: (name, WILDS category_id) for y = 0, 1, ...
IWILDCAM_CLASSES = (("empty", 0), ("tayassu pecari", 2), ("dasyprocta punctata", 3),
                    ("cuniculus paca", 4))
# Their English names, lower-cased, as the iwildcam dataset names them by default.
IWILDCAM_ENGLISH = ("empty", "white-lipped peccary", "central american agouti", "lowland paca")
OBJECTNET_MAP = {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}
OBJECTNET_FOLDERS = {"alarm_clock": "Alarm clock", "banana": "Banana"}


def png(size: int = 8, colour: tuple[int, int, int] = (0, 90, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color=colour).save(out, format="PNG")
    return out.getvalue()


def write_shards(folder: Path, samples: list[dict], per_shard: int,
                 prefix: str = "train") -> list[Path]:
    """``samples`` (webdataset dicts: ``__key__``, ``png``, ``txt``, ``cls``, ...) written by
    webdataset's own ShardWriter as ``folder/<prefix>-000000.tar``, ... with ``per_shard`` each."""
    from webdataset import ShardWriter

    folder.mkdir(parents=True, exist_ok=True)
    with ShardWriter(str(folder / f"{prefix}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for sample in samples:
            sink.write(sample)
    return sorted(folder.glob(f"{prefix}-*.tar"))


def write_iwildcam(root: Path, per_split: dict[str, int] | None = None,
                   classes: tuple[tuple[str, int], ...] = IWILDCAM_CLASSES) -> Path:
    """``root/{metadata.csv, categories.csv, labels.csv, train/}``: ``per_split[s]`` images of
    each class in WILDS split ``s`` (default 2 in train, 1 in each other split), each class its
    own colour; ``labels.csv`` in WiSE-FT's form (English names capitalised as there, plus one of
    its y = 99999 rows)."""
    per_split = per_split or {"train": 2, "id_val": 1, "id_test": 1, "val": 1, "test": 1}
    (root / "train").mkdir(parents=True)
    with open(root / "categories.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["y", "category_id", "name"])
        writer.writerows([y, cid, name] for y, (name, cid) in enumerate(classes))
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["y", "category_id", "name", "english"])
        writer.writerows([y, cid, name, english.capitalize()] for y, ((name, cid), english)
                         in enumerate(zip(classes, IWILDCAM_ENGLISH + ("",) * len(classes))))
        writer.writerow([99999, 243, "didelphis sp", "opossum"])
    rows, index = [], 0
    for split, count in per_split.items():
        location = {"train": 0, "id_val": 0, "id_test": 0, "val": 1, "test": 2}[split]
        for y, (_, cid) in enumerate(classes):
            data = png(colour=(40 * y, 200 - 40 * y, 90))
            for _ in range(count):
                name = f"{index:08x}-21bc-11ea-a13a-137349068a90.jpg"  # WILDS-style UUID names
                (root / "train" / name).write_bytes(data)
                rows.append([index, split, location, f"loc{location}", index, f"seq{index}", y,
                             cid, "2013-06-09 16:04:09.000", f"img{index}", name])
                index += 1
    with open(root / "metadata.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(IWILDCAM_COLUMNS)
        writer.writerows(rows)
    return root


def framed_png(size: int = 8) -> bytes:
    """A PNG framed as ObjectNet frames its images: a red outer ring of 1 pixel, then here a
    green ring, so that a crop of exactly 2 pixels a side leaves only the blue inside."""
    image = Image.new("RGB", (size, size), color=(0, 90, 200))
    for ring, colour in ((0, (255, 0, 0)), (1, (0, 255, 0))):
        last = size - 1 - ring
        for i in range(ring, last + 1):
            for xy in ((i, ring), (i, last), (ring, i), (last, i)):
                image.putpixel(xy, colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def timm_list(name: str) -> list[str]:
    """The entries of one of timm's shipped class lists (``timm/data/_info/<name>``)."""
    return resources.files("timm.data").joinpath("_info").joinpath(name).read_text().split()


def class_tree(folder: Path, classes, suffix: str = ".JPEG", per_class: int = 1,
               data: bytes | None = None) -> Path:
    """``folder/<class>/<i><suffix>``; the same encoded bytes everywhere keeps this fast."""
    data = data or png()
    for name in classes:
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            (folder / name / f"{i}{suffix}").write_bytes(data)
    return folder


def label_of(bundle, folder: str) -> int:
    """The label of the (first) image stored under class folder ``folder`` of a folder dataset."""
    rows = bundle.dataset.rows
    return next(label for path, label, _ in rows if path.parent.name == folder)


def write_imagenet_family(data: Path) -> Path:
    """``data/<name>`` for imagenet (train/ and val/), imagenet-v2, imagenet-r, imagenet-a,
    imagenet-sketch and objectnet in their published layouts, one image per class (as
    ``$TRACER_DATA`` would hold them)."""
    wnids = timm_list("imagenet_synsets.txt")
    for split in ("train", "val"):
        class_tree(data / "imagenet" / split, wnids)
    class_tree(data / "imagenet-v2" / "imagenetv2-matched-frequency-format-val",
               [str(i) for i in range(1000)], ".jpeg")
    class_tree(data / "imagenet-r" / "imagenet-r", timm_list("imagenet_r_synsets.txt"), ".jpg")
    class_tree(data / "imagenet-a" / "imagenet-a", timm_list("imagenet_a_synsets.txt"), ".jpg")
    class_tree(data / "imagenet-sketch" / "sketch", wnids)
    base = data / "objectnet" / "objectnet-1.0"
    class_tree(base / "images", OBJECTNET_FOLDERS, ".png", data=png(size=10))
    (base / "mappings").mkdir()
    (base / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(OBJECTNET_MAP))
    (base / "mappings" / "folder_to_objectnet_label.json").write_text(
        json.dumps(OBJECTNET_FOLDERS))
    return data
