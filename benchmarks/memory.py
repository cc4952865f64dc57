"""Peak memory of FLYP vs TRACER, and what the memory options buy, at real CLIP sizes.

Each configuration runs in its own child process (random init, no downloads): it builds the run's
trainer exactly as ``tracer finetune`` does (``build_trainer``), takes two optimizer steps (step
indices 1 and 2, so TRACER pays for its teacher forward and AdamW has its moments), and reports
its peak resident set size (``VmHWM``), with the drift statistics computed after each step as at
a log step. The parent prints one table per architecture with each peak as a ratio to FLYP's at
the same settings:

  flyp                  contrastive finetuning (no teacher, no θ₀)
  flyp+ckpt             ... with train.grad_checkpointing
  tracer                WMA teacher + θ₀ (drift tracking, kept off the compute device: a
                        temporary file on CPU) + distillation views
  tracer+ckpt           ... with train.grad_checkpointing
  tracer+accum          ... with train.accum_steps = --accum
  tracer-drift          ... with run.track_drift = false (no θ₀ copy)
  tracer+all            checkpointing + accumulation + no drift tracking

    python benchmarks/memory.py                                   # ViT-B-16 and ViT-L-14
    python benchmarks/memory.py --arch ViT-B-16 --batch 8 --json
    python benchmarks/memory.py --arch tracer-tiny-vit --batch 16 --configs flyp,tracer

On CPU this is the process's whole footprint (Python, torch, the dataset) as well as the model;
the fixed part is printed as the ``baseline`` row (the process after import, before any model).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "flyp": {"method": "flyp"},
    "flyp+ckpt": {"method": "flyp", "grad_checkpointing": True},
    "tracer": {"method": "tracer"},
    "tracer+ckpt": {"method": "tracer", "grad_checkpointing": True},
    "tracer+accum": {"method": "tracer", "accum": True},
    "tracer-drift": {"method": "tracer", "track_drift": False},
    "tracer+all": {"method": "tracer", "grad_checkpointing": True, "accum": True,
                   "track_drift": False},
}
DEFAULT_ARCHS = ("ViT-B-16", "ViT-L-14")

RECIPE = """
[run]
name = "memory"
device = "cpu"
precision = "{precision}"
track_drift = {track_drift}
eval = false

[model]
arch = "{arch}"
pretrained = "none"

[data]
train = {{ name = "synth-photo", size = {size}, image_size = 64 }}

[task]
name = "classification"
train_templates = ["a photo of a {{}}."]

[train]
method = "{method}"
steps = 10
batch_size = {batch}
lr = 1e-5
grad_checkpointing = {ckpt}
accum_steps = {accum}
"""


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", action="append", help=f"repeatable; default {', '.join(DEFAULT_ARCHS)}")
    p.add_argument("--batch", type=int, default=8, help="examples per optimizer step")
    p.add_argument("--accum", type=int, default=4, help="train.accum_steps of the +accum rows")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help="comma-separated subset of: " + ", ".join(CONFIGS))
    p.add_argument("--precision", default="32-true")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--max-mib", type=float, default=0,
                   help="end a configuration whose RSS passes this many MiB (0: no cap)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args()


def _peak_mib() -> float:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def _child(recipe_path: str) -> None:
    """Build the trainer as ``tracer finetune`` does, take two steps, print the peak RSS."""
    import torch

    from tracer_cli import recipe as recipe_mod
    from tracer_cli.engine.distributed import DistContext
    from tracer_cli.engine.precision import resolve_precision
    from tracer_cli.engine.build import build_dataset, build_task
    from tracer_cli.engine.run import build_backbone
    from tracer_cli.engine.loop import build_trainer

    baseline = _peak_mib()
    rec = recipe_mod.load(recipe_path)
    torch.manual_seed(0)
    backbone = build_backbone(rec)
    bundle = build_dataset(rec.data.train, "data.train", "train", backbone.preprocess_train)
    precision = resolve_precision(rec.run.precision, torch.device("cpu"))
    trainer = build_trainer(rec, DistContext(), backbone, build_task(rec), bundle, precision,
                            notice=lambda msg: None)
    params = sum(p.numel() for p in backbone.model.parameters())
    loader = torch.utils.data.DataLoader(bundle.dataset, batch_size=rec.train.batch_size)
    start = time.perf_counter()
    for step, batch in zip((1, 2), loader):
        trainer.step(step, {"image": batch["image"], "label": batch["label"]})
        trainer.drift_stats()  # as at a log step: ‖θ − θ₀‖ and ‖θ − φ‖ (nothing without drift)
    print(json.dumps({"peak_mib": _peak_mib(), "baseline_mib": baseline, "params": params,
                      "step_s": (time.perf_counter() - start) / 2}))


def _recipe_text(arch: str, config: dict, args: argparse.Namespace) -> str:
    return RECIPE.format(precision=args.precision, arch=arch, method=config["method"],
                         track_drift=str(config.get("track_drift", True)).lower(),
                         ckpt=str(config.get("grad_checkpointing", False)).lower(),
                         accum=args.accum if config.get("accum") else 1, batch=args.batch,
                         size=args.batch * 2)


def measure(arch: str, name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """One configuration in a fresh child process; a failure (killed for memory, timeout) is
    reported, not raised, so the rest of the table still gets measured."""
    path = workdir / f"{arch}-{name}.toml"
    path.write_text(_recipe_text(arch, CONFIGS[name], args))
    with open(workdir / "out.txt", "w+") as out, open(workdir / "err.txt", "w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(path)], stdout=out,
                                stderr=err, text=True)
        verdict = _watch(proc, args)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if verdict:
        return {"error": verdict}
    if proc.returncode != 0:
        last = (stderr.strip().splitlines() or ["(no output)"])[-1]
        reason = "killed (out of memory?)" if proc.returncode in (-9, 137) else last
        return {"error": f"exit {proc.returncode}: {reason}"}
    return json.loads(stdout.strip().splitlines()[-1])


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            line = next((line for line in fh if line.startswith("VmRSS")), None)
    except OSError:
        return 0.0
    return int(line.split()[1]) / 1024 if line else 0.0


def _watch(proc: subprocess.Popen, args: argparse.Namespace) -> str | None:
    """Wait for the child; end it (and say why) past ``--timeout`` or ``--max-mib``, so that a
    configuration that does not fit never pushes a shared machine into its OOM killer."""
    deadline = time.monotonic() + args.timeout
    while proc.poll() is None:
        if args.max_mib and _rss_mib(proc.pid) > args.max_mib:
            proc.kill()
            proc.wait()
            return f"did not fit: over --max-mib {args.max_mib:.0f} MiB"
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return f"timed out after {args.timeout:.0f} s"
        time.sleep(0.1)
    return None


def _table(arch: str, rows: dict[str, dict], args: argparse.Namespace) -> str:
    flyp = rows.get("flyp", {}).get("peak_mib")
    params = next((r["params"] for r in rows.values() if "params" in r), None)
    title = f"### {arch} ({params / 1e6:.1f} M parameters), " if params else f"### {arch}, "
    lines = [title + f"batch {args.batch}, {args.precision}, CPU", "",
             "| configuration | peak RSS | × FLYP | step time |", "|---|---|---|---|"]
    baseline = next((r["baseline_mib"] for r in rows.values() if "baseline_mib" in r), None)
    if baseline is not None:
        lines.append(f"| baseline (python + torch, no model) | {baseline:.0f} MiB | | |")
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | {row['error']} | | |")
            continue
        ratio = f"{row['peak_mib'] / flyp:.2f}" if flyp else "-"
        lines.append(f"| {name} | {row['peak_mib']:.0f} MiB | {ratio} | {row['step_s']:.1f} s |")
    return "\n".join(lines)


def main() -> None:
    args = _args()
    if args.child:
        _child(args.child)
        return
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    if args.batch % args.accum:
        sys.exit(f"--batch {args.batch} must be a multiple of --accum {args.accum}")
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch or DEFAULT_ARCHS:
            results[arch] = {}
            for name in names:
                results[arch][name] = measure(arch, name, args, Path(tmp))
                if not args.json:
                    print(f"[{arch}] {name}: {results[arch][name]}", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps({"batch": args.batch, "accum": args.accum,
                          "precision": args.precision, "results": results}, indent=2))
        return
    for arch, rows in results.items():
        print(_table(arch, rows, args) + "\n")


if __name__ == "__main__":
    main()
