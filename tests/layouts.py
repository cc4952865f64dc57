"""Tiny fabricated copies of real dataset layouts (WILDS iWildCam v2.0, the ImageNet family and
ObjectNet), for tests that read them through the dataset plugins or run the shipped recipes.

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
IWILDCAM_CLASSES = (("empty", 0), ("tayassu pecari", 2), ("dasyprocta punctata", 3),
                    ("meleagris ocellata", 7))  # (name, WILDS category_id) for y = 0, 1, ...
OBJECTNET_MAP = {"Alarm clock": "analog clock; digital clock", "Banana": "banana"}
OBJECTNET_FOLDERS = {"alarm_clock": "Alarm clock", "banana": "Banana"}


def png(size: int = 8, colour: tuple[int, int, int] = (0, 90, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color=colour).save(out, format="PNG")
    return out.getvalue()


def write_iwildcam(root: Path, per_split: dict[str, int] | None = None,
                   classes: tuple[tuple[str, int], ...] = IWILDCAM_CLASSES) -> Path:
    """``root/{metadata.csv, categories.csv, train/}``: ``per_split[s]`` images of each class in
    WILDS split ``s`` (default 2 in train, 1 in each other split), each class its own colour."""
    per_split = per_split or {"train": 2, "id_val": 1, "id_test": 1, "val": 1, "test": 1}
    (root / "train").mkdir(parents=True)
    with open(root / "categories.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["y", "category_id", "name"])
        writer.writerows([y, cid, name] for y, (name, cid) in enumerate(classes))
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


def _timm(name: str) -> list[str]:
    return resources.files("timm.data").joinpath("_info").joinpath(name).read_text().split()


def _tree(folder: Path, classes, suffix: str, data: bytes) -> None:
    for name in classes:
        (folder / name).mkdir(parents=True)
        (folder / name / f"0{suffix}").write_bytes(data)


def write_imagenet_family(data: Path) -> Path:
    """``data/<name>`` for imagenet (train/ and val/), imagenet-v2, imagenet-r, imagenet-a,
    imagenet-sketch and objectnet in their published layouts, one image per class (as
    ``$TRACER_DATA`` would hold them)."""
    image = png()
    wnids = _timm("imagenet_synsets.txt")
    for split in ("train", "val"):
        _tree(data / "imagenet" / split, wnids, ".JPEG", image)
    _tree(data / "imagenet-v2" / "imagenetv2-matched-frequency-format-val",
          [str(i) for i in range(1000)], ".jpeg", image)
    _tree(data / "imagenet-r" / "imagenet-r", _timm("imagenet_r_synsets.txt"), ".jpg", image)
    _tree(data / "imagenet-a" / "imagenet-a", _timm("imagenet_a_synsets.txt"), ".jpg", image)
    _tree(data / "imagenet-sketch" / "sketch", wnids, ".JPEG", image)
    base = data / "objectnet" / "objectnet-1.0"
    _tree(base / "images", OBJECTNET_FOLDERS, ".png", png(size=10))
    (base / "mappings").mkdir()
    (base / "mappings" / "objectnet_to_imagenet_1k.json").write_text(json.dumps(OBJECTNET_MAP))
    (base / "mappings" / "folder_to_objectnet_label.json").write_text(
        json.dumps(OBJECTNET_FOLDERS))
    return data
