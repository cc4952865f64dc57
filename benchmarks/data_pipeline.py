"""What reading one training or evaluation image costs on the embedded world, old path vs new.

Side by side in one process, rounds interleaved (ABAB) so machine noise hits both alike:

  train  reading a batch of ``synth-world`` through the training stream's dataset, each item under
         its own seed, with the backbone's training transform (random resized crop, to tensor,
         normalise). Old: the generators saved and restored around every item, and open_clip's
         ``MaybeToTensor`` + ``Normalize``. New: saved and restored once per batch
         (``__getitems__``), and the fused ``ToNormalizedTensor``.
  eval   the evaluation transform on the same images, open_clip's vs the fused one.

Both paths give every item the same tensor (tests/engine/test_data.py,
tests/plugins/test_openclip_transforms.py); only the time differs.

    python benchmarks/data_pipeline.py            # tracer-tiny-rn's transforms, batch 256
    python benchmarks/data_pipeline.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from open_clip.transform import image_transform_v2
from PIL import Image

from tracer_cli.engine.data import _SeededItems
from tracer_plugins.backbones.openclip import make_backbone
from tracer_plugins.datasets.synth.classification import synth_world


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="tracer-tiny-rn")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=8, help="timed batches per path")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON document")
    return p.parse_args()


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    args = _args()
    torch.set_num_threads(1)
    backbone = make_backbone({"arch": args.arch, "pretrained": "none"})
    spec = {"size": args.batch * (args.rounds + 1)}
    old_train = image_transform_v2(backbone.preprocess_cfg, is_train=True)
    old_eval = image_transform_v2(backbone.preprocess_cfg, is_train=False)
    datasets = {
        "old": _SeededItems(synth_world(spec, "train", old_train).dataset, seed=0),
        "new": _SeededItems(synth_world(spec, "train", backbone.preprocess_train).dataset, seed=0),
    }
    images = [datasets["new"].dataset.images[i] for i in range(args.batch)]
    pil = [Image.fromarray(pixels) for pixels in images]
    eval_tf = {"old": old_eval, "new": backbone.preprocess_eval}
    train_s: dict[str, list[float]] = {"old": [], "new": []}
    eval_s: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(args.rounds + 1):  # round 0 warms up
        keys = [(0, r * args.batch + i) for i in range(args.batch)]
        for name in ("old", "new") if r % 2 else ("new", "old"):
            items = datasets[name]
            fetch = (lambda: [items[k] for k in keys]) if name == "old" else \
                (lambda: items.__getitems__(keys))
            took = _time(fetch)
            took_eval = _time(lambda: [eval_tf[name](image) for image in pil])
            if r:
                train_s[name].append(took)
                eval_s[name].append(took_eval)
    per_item = {kind: {name: 1e6 * statistics.median(times[name]) / args.batch
                       for name in ("old", "new")}
                for kind, times in (("train", train_s), ("eval", eval_s))}
    result = {"arch": args.arch, "batch": args.batch, "rounds": args.rounds,
              "us_per_item": {k: {n: round(v, 1) for n, v in d.items()}
                              for k, d in per_item.items()},
              "speedup": {k: round(d["old"] / d["new"], 2) for k, d in per_item.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.arch}, batch {args.batch}, median of {args.rounds} interleaved rounds, 1 thread")
    for kind in ("train", "eval"):
        d = per_item[kind]
        print(f"  {kind:5s}  old {d['old']:7.1f} us/item   new {d['new']:7.1f} us/item   "
              f"old/new {d['old'] / d['new']:.2f}x")


if __name__ == "__main__":
    main()
