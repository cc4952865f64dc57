"""What TRACER costs over FLYP, measured side by side in one process.

Prints, for one architecture (random init: no downloads needed):
  1. median optimizer-step time of FLYP (contrastive only) and TRACER (WMA teacher forward +
     distillation views + cross-F-norm + teacher update) on the same batches, steps interleaved
     ABAB so machine noise hits both alike, and the ratio;
  2. peak memory of each (CUDA: max allocated; CPU: peak RSS of a child process per method);
  3. the WMA teacher update: one fused ``_foreach_lerp_`` vs a per-parameter Python loop of the
     same formula, φ ← (φ + r·θ)/(1 + r) (how the reference implementation does it);
  4. zero-shot evaluation images/s: tracer's classification task vs a plain open_clip loop.

    python benchmarks/step_time.py                       # the embedded tiny CLIP
    python benchmarks/step_time.py --arch ViT-B-16 --batch 16 --image-size 224
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from tracer_cli.engine.build import build_dataset
from tracer_cli.engine.data import eval_loader
from tracer_cli.engine.step import StepConfig, Trainer
from tracer_cli.engine.precision import resolve_device, resolve_precision
from tracer_cli.engine.teachers import make_teacher
from tracer_cli.recipe import TRACER_WEIGHTS, DistillWeights, TrainConfig
from tracer_cli.sdk.contracts import DatasetBundle
from tracer_plugins.backbones.openclip import make_backbone
from tracer_plugins.tasks.classification import ClassificationTask, zero_shot_head

def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="tracer-tiny-rn")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per method")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--eval-images", type=int, default=2000)
    p.add_argument("--update-repeats", type=int, default=20)
    p.add_argument("--only", choices=("flyp", "tracer"), help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON document")
    return p.parse_args()


def _setup(args: argparse.Namespace):
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    options = {"arch": args.arch, "pretrained": "none"}
    if args.image_size:
        options["image_size"] = args.image_size
    backbone = make_backbone(options)
    backbone.model.to(device)
    size = backbone.preprocess_cfg.size
    size = size if isinstance(size, int) else size[0]
    spec = {"name": "synth-photo", "size": max(args.batch * 4, args.eval_images),
            "image_size": min(max(size, 16), 128)}
    bundle = build_dataset(spec, "benchmark", "test", backbone.preprocess_eval)
    return device, precision, backbone, bundle


def _batches(bundle: DatasetBundle, batch: int, count: int = 4) -> list[dict]:
    loader = torch.utils.data.DataLoader(bundle.dataset, batch_size=batch, shuffle=False)
    out = []
    for item in loader:
        out.append({"image": item["image"], "label": item["label"]})
        if len(out) == count:
            break
    return out


def _trainer(method: str, backbone, bundle, precision, steps: int) -> Trainer:
    kind = "wma" if method == "tracer" else "none"
    distill = TRACER_WEIGHTS if method == "tracer" else DistillWeights()
    teacher = make_teacher(kind, backbone.model, steps)
    train = TrainConfig(steps=steps, batch_size=1, lr=1e-5, warmup_steps=0)
    task = ClassificationTask(train_templates=["a photo of a {}."])
    return Trainer(backbone, task, bundle, teacher,
                   StepConfig(train, distill, precision, seed=0, freeze_bn_stats=False))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(args, device, precision, backbone, bundle) -> dict[str, list[float]]:
    """Interleaved FLYP/TRACER steps on separate copies of the same initial model."""
    import copy

    total = args.warmup + args.steps + 1
    batches = _batches(bundle, args.batch)
    flyp_backbone = copy.copy(backbone)
    flyp_backbone.model = copy.deepcopy(backbone.model)
    trainers = {"flyp": _trainer("flyp", flyp_backbone, bundle, precision, total),
                "tracer": _trainer("tracer", backbone, bundle, precision, total)}
    times: dict[str, list[float]] = {"flyp": [], "tracer": []}
    for step in range(args.warmup + args.steps):
        batch = batches[step % len(batches)]
        for name, trainer in trainers.items():
            _sync(device)
            start = time.perf_counter()
            # Step index 1+ so TRACER pays its teacher forward from the first timed step.
            trainer.step(step + 1, batch)
            _sync(device)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return times


def peak_memory(args, device, precision, backbone, bundle) -> dict[str, float]:
    """MiB at peak for each method: CUDA allocator peak, or a child process's peak RSS on CPU."""
    if device.type == "cuda":
        out = {}
        for method in ("flyp", "tracer"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            trainer = _trainer(method, backbone, bundle, precision, 10)
            for step, batch in enumerate(_batches(bundle, args.batch, 3)):
                trainer.step(step + 1, batch)
            out[method] = torch.cuda.max_memory_allocated(device) / 2**20
            del trainer
        return out
    out = {}
    for method in ("flyp", "tracer"):
        cmd = [sys.executable, __file__, "--only", method, *_passthrough(args)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[method] = float(done.stdout.strip().splitlines()[-1])
    return out


def _passthrough(args: argparse.Namespace) -> list[str]:
    flags = ["--arch", args.arch, "--batch", str(args.batch), "--device", args.device,
             "--precision", args.precision, "--eval-images", str(args.batch * 4)]
    if args.image_size:
        flags += ["--image-size", str(args.image_size)]
    return flags


def _child_peak_rss(args, device, precision, backbone, bundle) -> None:
    trainer = _trainer(args.only, backbone, bundle, precision, 10)
    for step, batch in enumerate(_batches(bundle, args.batch, 3)):
        trainer.step(step + 1, batch)
    with open("/proc/self/status") as fh:
        hwm = next(line for line in fh if line.startswith("VmHWM"))
    print(int(hwm.split()[1]) / 1024)


def teacher_update(args, backbone) -> dict[str, float]:
    """Seconds per update: fused foreach lerp (tracer) vs per-parameter loop (reference style)."""
    student = backbone.model
    teacher = make_teacher("wma", student, 10_000)
    phis = [p.detach().clone() for p in student.parameters()]
    thetas = [p.detach() for p in student.parameters()]
    fused, loop = [], []
    for i in range(args.update_repeats):
        _sync(student.logit_scale.device)
        start = time.perf_counter()
        teacher.update(i + 1, student)
        _sync(student.logit_scale.device)
        fused.append(time.perf_counter() - start)
        start = time.perf_counter()
        r = 0.01
        with torch.no_grad():
            phis = [(phi + r * theta) / (1 + r) for phi, theta in zip(phis, thetas)]
        _sync(student.logit_scale.device)
        loop.append(time.perf_counter() - start)
    return {"fused_s": statistics.median(fused), "loop_s": statistics.median(loop)}


def _plain_open_clip_eval(backbone, model, bundle, loader, device, precision) -> int:
    """The loop a user would write with open_clip alone: head, encode, normalize, argmax."""
    with torch.no_grad(), precision.autocast():
        head = zero_shot_head(backbone, model, bundle.classnames, bundle.templates, device,
                              precision.autocast)
        correct = 0
        for batch in loader:
            feats = model.encode_image(batch["image"].to(device))
            feats = feats / feats.norm(dim=-1, keepdim=True)
            logits = model.logit_scale.exp() * feats.float() @ head.T
            correct += int((logits.argmax(-1).cpu() == batch["label"]).sum())
    return correct


def eval_throughput(args, device, precision, backbone, bundle, repeats: int = 3
                    ) -> dict[str, float]:
    """Images/s of tracer's evaluation (metrics included) vs a plain open_clip loop over the same
    loader, alternating the two ``repeats`` times and keeping each one's median."""
    model = backbone.model.eval()
    loader = eval_loader(bundle.dataset, 256)
    task = ClassificationTask()
    tracer_s, plain_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        task.evaluate(backbone, model, {"bench": (bundle, loader)}, device, precision.autocast)
        tracer_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        _plain_open_clip_eval(backbone, model, bundle, loader, device, precision)
        plain_s.append(time.perf_counter() - start)
    n = len(bundle.dataset)
    return {"tracer_img_s": n / statistics.median(tracer_s),
            "open_clip_img_s": n / statistics.median(plain_s)}


def main() -> None:
    args = _args()
    device, precision, backbone, bundle = _setup(args)
    if args.only:
        _child_peak_rss(args, device, precision, backbone, bundle)
        return
    times = step_times(args, device, precision, backbone, bundle)
    med = {k: statistics.median(v) for k, v in times.items()}
    memory = peak_memory(args, device, precision, backbone, bundle)
    update = teacher_update(args, backbone)
    evals = eval_throughput(args, device, precision, backbone, bundle)
    report = {
        "arch": args.arch, "device": str(device), "precision": precision.name,
        "batch": args.batch, "timed_steps": args.steps,
        "params_million": sum(p.numel() for p in backbone.model.parameters()) / 1e6,
        "step_s": med, "step_ratio_tracer_over_flyp": med["tracer"] / med["flyp"],
        "peak_memory_mib": memory,
        "memory_ratio_tracer_over_flyp": memory["tracer"] / memory["flyp"],
        "teacher_update": {**update, "speedup": update["loop_s"] / update["fused_s"]},
        "eval": {**evals, "ratio": evals["tracer_img_s"] / evals["open_clip_img_s"]},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"arch {args.arch} ({report['params_million']:.1f} M params), {device}, "
          f"{precision.name}, batch {args.batch}, {args.steps} timed steps (interleaved)")
    print(f"step time  FLYP {med['flyp'] * 1e3:8.1f} ms   TRACER {med['tracer'] * 1e3:8.1f} ms   "
          f"ratio {report['step_ratio_tracer_over_flyp']:.2f}")
    print(f"peak mem   FLYP {memory['flyp']:8.0f} MiB  TRACER {memory['tracer']:8.0f} MiB  "
          f"ratio {report['memory_ratio_tracer_over_flyp']:.2f}")
    print(f"WMA update fused {update['fused_s'] * 1e3:8.2f} ms   loop {update['loop_s'] * 1e3:8.2f} ms"
          f"   speedup {report['teacher_update']['speedup']:.1f}x")
    print(f"eval       tracer {evals['tracer_img_s']:8.0f} img/s  open_clip loop "
          f"{evals['open_clip_img_s']:8.0f} img/s  ratio {report['eval']['ratio']:.2f}")


if __name__ == "__main__":
    main()
