"""GPU acceptance: run what users run, on CUDA, and print one table; exit 1 if any check fails.

Stages (each a real command or the engine a command runs):
  amp-bf16    tracer finetune recipes/quickstart.toml with run.precision = bf16-mixed: exit 0, no
              non-finite loss, ID and average-OOD accuracy within --tolerance points of the CPU
              reference (TRACER student at finetuning seed 0: 99.16 ID, 89.63 average OOD)
  amp-fp16    the same with 16-mixed (GradScaler); skipped optimizer steps are counted
  ddp         torchrun --nproc_per_node=<visible GPUs> ... finetune (DDP), --ddp-steps steps
  fsdp        the same with train.strategy = "fsdp"; its losses match the DDP run's
  step-time   benchmarks/step_time.py: FLYP vs TRACER at ViT-B/16, 224 px, batch 256, bf16
              (target: TRACER ≤ 1.35× FLYP)
  max-batch   the largest ViT-L/14 TRACER batch (bf16, doubling then bisecting until CUDA runs
              out of memory) without and with train.grad_checkpointing

    bash benchmarks/gpu_check.sh              # the whole check, on a CUDA machine (< 8 min, H100)
    python benchmarks/gpu_acceptance.py --smoke   # every stage at toy size on CPU (the plumbing)

The embedded tiny CLIP is built on first use (TRACER_CACHE); reuse a cache built elsewhere to
skip that. ``--smoke`` swaps in random-init tiny models, 2-step runs and 2 gloo processes on
CPU: it checks that every stage runs and reports, not any figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tracer_cli import rundir

ROOT = Path(__file__).resolve().parents[1]
# TRACER student of `tracer finetune recipes/quickstart.toml` on CPU, finetuning seed 0, on the
# shipped embedded CLIP (build version 5, seed 0), 2026-12-02 (`python benchmarks/first_result.py`).
CPU_REFERENCE = {"id": 99.16, "avg_ood": 89.63}
STEP_RATIO_TARGET = 1.35

SMOKE_RECIPE = """
[run]
name = "smoke"
device = "cpu"
[model]
arch = "tracer-tiny-vit"
pretrained = "none"
[data]
train = { name = "synth-photo-narrow", size = 32 }
id = [{ name = "synth-photo", size = 32 }]
ood = [{ name = "synth-sketch", size = 32 }]
eval_batch_size = 32
[task]
name = "classification"
train_templates = ["a photo of a {}."]
[train]
steps = 2
batch_size = 8
lr = 1e-4
"""


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="toy sizes on CPU (checks the plumbing)")
    p.add_argument("--only", help="comma-separated stages to run (default: all)")
    p.add_argument("--tolerance", type=float, default=2.0,
                   help="accuracy points the AMP runs may differ from the CPU reference")
    p.add_argument("--ddp-steps", type=int, default=100)
    p.add_argument("--out", type=Path, help="where runs go (default: a temporary folder)")
    p.add_argument("--max-batch-child", nargs=2, metavar=("ARCH", "CKPT"), help=argparse.SUPPRESS)
    p.add_argument("--cap", type=int, default=4096, help=argparse.SUPPRESS)
    return p.parse_args()


class Table:
    """Rows of (stage, figure, value, target, ok); ``failed`` when any check failed."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str, bool | None]] = []

    def add(self, stage: str, figure: str, value, target: str = "", ok: bool | None = None):
        self.rows.append((stage, figure, str(value), target, ok))

    @property
    def failed(self) -> bool:
        return any(ok is False for *_, ok in self.rows)

    def render(self) -> str:
        mark = {True: "pass", False: "**FAIL**", None: ""}
        lines = ["| stage | figure | value | target | check |", "|---|---|---|---|---|"]
        lines += [f"| {s} | {f} | {v} | {t} | {mark[ok]} |" for s, f, v, t, ok in self.rows]
        return "\n".join(lines)


def _env() -> dict[str, str]:
    env = {**os.environ, "CI": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return env


def _run(cmd: list[str], timeout: float = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _tail(done: subprocess.CompletedProcess) -> str:
    """The error line tracer printed (``error: ...``), else the last line of output."""
    lines = (done.stderr + done.stdout).strip().splitlines()
    errors = [line for line in lines if line.lstrip().startswith("error:")]
    line = errors[-1] if errors else (lines[-1] if lines else "(no output)")
    return line.strip().replace("|", "/")[:200]


def _records(run_dir: Path) -> list[dict]:
    return list(rundir.read_metrics(run_dir))


def _finetune(recipe: Path, out: Path, sets: list[str], launcher: list[str] | None = None):
    args = ["finetune", str(recipe), "--output-dir", str(out), "--overwrite"]
    for s in sets:
        args += ["--set", s]
    cmd = (launcher or [sys.executable, "-m", "tracer_cli"]) + args
    return _run(cmd)


def _losses_finite(table: Table, stage: str, run_dir: Path) -> list[dict]:
    train = [r for r in _records(run_dir) if r.get("event") == "train"]
    bad = [r["step"] for r in train if not math.isfinite(float(r["loss"]))]
    nonfinite = [r for r in _records(run_dir) if r.get("event") == "nonfinite"]
    table.add(stage, "train records / non-finite losses", f"{len(train)} / "
              f"{len(bad) + len(nonfinite)}", "> 0 / 0", bool(train) and not bad and not nonfinite)
    return train


def stage_amp(table: Table, args, recipe: Path, out: Path, precision: str, name: str) -> None:
    sets = [f"run.precision={precision}", f"run.name={name}"]
    start = time.perf_counter()
    done = _finetune(recipe, out, sets)
    table.add(name, "tracer finetune exit code (wall)", f"{done.returncode} "
              f"({time.perf_counter() - start:.0f} s)", "0", done.returncode == 0)
    if done.returncode != 0:
        table.add(name, "error", _tail(done), "", False)
        return
    run_dir = out / name
    train = _losses_finite(table, name, run_dir)
    if precision == "16-mixed":
        skipped = sum(int(r.get("amp_skipped", 0)) for r in train)
        table.add(name, "logged steps the GradScaler skipped", skipped, "(info)")
    summary = json.loads(rundir.summary_path(run_dir).read_text())["eval"]
    student = summary["models"]["student"]
    measured = {"id": 100 * student[summary["id"][0]]["accuracy"],
                "avg_ood": 100 * student["avg_ood_accuracy"]}
    for key, value in measured.items():
        if args.smoke:
            table.add(name, f"{key} accuracy (smoke: random init, not compared)", f"{value:.2f}")
            continue
        ref = CPU_REFERENCE[key]
        table.add(name, f"{key} accuracy vs CPU {ref:.2f}", f"{value:.2f}",
                  f"±{args.tolerance:g}", abs(value - ref) <= args.tolerance)


def _nproc(args) -> int:
    if args.smoke:
        return 2
    import torch

    return max(1, torch.cuda.device_count())


def stage_distributed(table: Table, args, recipe: Path, out: Path, strategy: str) -> list[dict]:
    nproc = _nproc(args)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={nproc}", "-m", "tracer_cli"]
    steps = 2 if args.smoke else args.ddp_steps
    sets = [f"run.name={strategy}", f"train.steps={steps}", "train.warmup_steps=0",
            "run.eval=false", f"train.strategy={strategy}", "train.checkpoint_every=0"]
    done = _finetune(recipe, out, sets, launcher)
    table.add(strategy, f"torchrun --nproc_per_node={nproc} exit code", done.returncode, "0",
              done.returncode == 0)
    if done.returncode != 0:
        table.add(strategy, "error", _tail(done), "", False)
        return []
    return _losses_finite(table, strategy, out / strategy)


def stage_step_time(table: Table, args) -> None:
    cmd = [sys.executable, "benchmarks/step_time.py", "--json", "--update-repeats", "3"]
    if args.smoke:
        cmd += ["--arch", "tracer-tiny-vit", "--batch", "8", "--steps", "2", "--warmup", "1",
                "--eval-images", "32", "--device", "cpu"]
    else:
        cmd += ["--arch", "ViT-B-16", "--image-size", "224", "--batch", "256", "--steps", "20",
                "--warmup", "3", "--eval-images", "1024", "--device", "cuda",
                "--precision", "bf16-mixed"]
    done = _run(cmd)
    if done.returncode != 0:
        table.add("step-time", "benchmarks/step_time.py", _tail(done), "exit 0", False)
        return
    report = json.loads(done.stdout)
    ratio = report["step_ratio_tracer_over_flyp"]
    table.add("step-time", f"TRACER / FLYP step time, {report['arch']} batch "
              f"{report['batch']}", f"{ratio:.2f}", f"≤ {STEP_RATIO_TARGET}",
              None if args.smoke else ratio <= STEP_RATIO_TARGET)
    table.add("step-time", "TRACER / FLYP peak memory",
              f"{report['memory_ratio_tracer_over_flyp']:.2f}", "(info)")


def stage_max_batch(table: Table, args) -> None:
    arch = "tracer-tiny-vit" if args.smoke else "ViT-L-14"
    found = {}
    for ckpt in ("false", "true"):
        cmd = [sys.executable, __file__, "--max-batch-child", arch, ckpt,
               "--cap", "8" if args.smoke else str(args.cap)]
        if args.smoke:
            cmd.append("--smoke")
        done = _run(cmd)
        if done.returncode != 0:
            table.add("max-batch", f"{arch} checkpointing={ckpt}", _tail(done), "exit 0", False)
            return
        found[ckpt] = json.loads(done.stdout.strip().splitlines()[-1])
        row = found[ckpt]
        value = f"{row['largest']}" + (" (cap reached)" if row["capped"] else "")
        table.add("max-batch", f"largest TRACER batch, {arch}, checkpointing={ckpt}", value,
                  "(info)")
    table.add("max-batch", "checkpointing allows a batch at least as large", "",
              "yes", found["true"]["largest"] >= found["false"]["largest"])


def _max_batch_child(args) -> None:
    """Largest batch of two TRACER steps that fits (doubling, then bisecting on OOM)."""
    import torch

    from tracer_cli.engine.step import StepConfig, Trainer, enable_grad_checkpointing
    from tracer_cli.engine.precision import resolve_precision
    from tracer_cli.engine.teachers import make_teacher
    from tracer_cli.recipe import TRACER_WEIGHTS, TrainConfig
    from tracer_plugins.backbones.openclip import make_backbone
    from tracer_plugins.tasks.classification import ClassificationTask

    arch, ckpt = args.max_batch_child[0], args.max_batch_child[1] == "true"
    device = torch.device("cpu" if args.smoke else "cuda")
    precision = resolve_precision("32-true" if args.smoke else "bf16-mixed", device)
    backbone = make_backbone({"arch": arch, "pretrained": "none"})
    backbone.model.to(device)
    teacher = make_teacher("wma", backbone.model, 10)
    if ckpt:
        enable_grad_checkpointing(backbone, backbone.model, lambda msg: None)
    distill = TRACER_WEIGHTS
    trainer = Trainer(backbone, ClassificationTask(train_templates=["a photo of a {}."]), None,
                      teacher, StepConfig(TrainConfig(steps=10, batch_size=1), distill, precision,
                                          seed=0, freeze_bn_stats=False))
    trainer.task.train_texts = lambda batch, bundle, rng: ["a photo."] * len(batch["image"])
    size = backbone.preprocess_cfg.size
    size = size if isinstance(size, int) else size[0]

    def fits(batch: int) -> bool:
        images = torch.randn(batch, 3, size, size)
        try:
            for step in (1, 2):
                trainer.step(step, {"image": images, "label": torch.zeros(batch, dtype=torch.long)})
            return True
        except torch.cuda.OutOfMemoryError:
            trainer.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            return False

    good, bad, batch = 0, None, 8
    while batch <= args.cap and fits(batch):
        good, batch = batch, batch * 2
    bad = batch if batch <= args.cap else None
    while bad is not None and bad - good > max(8, good // 8):
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    print(json.dumps({"arch": arch, "grad_checkpointing": ckpt, "largest": good,
                      "capped": bad is None}))


STAGES = ("amp-bf16", "amp-fp16", "ddp", "fsdp", "step-time", "max-batch")


def main() -> int:
    args = _args()
    if args.max_batch_child:
        _max_batch_child(args)
        return 0
    stages = [s.strip() for s in (args.only or ",".join(STAGES)).split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        sys.exit(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    table = Table()
    if not args.smoke:
        import torch

        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run this on a GPU machine (or --smoke on CPU)")
        table.add("env", "device", f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        recipe = ROOT / "recipes" / "quickstart.toml"
        if args.smoke:
            recipe = Path(tmp) / "smoke.toml"
            recipe.write_text(SMOKE_RECIPE)
        _run_stages(table, args, stages, recipe, out)
    print(table.render())
    return 1 if table.failed else 0


def _run_stages(table: Table, args, stages: list[str], recipe: Path, out: Path) -> None:
    start = time.perf_counter()
    if "amp-bf16" in stages:
        stage_amp(table, args, recipe, out, "bf16-mixed", "amp-bf16")
    if "amp-fp16" in stages:
        stage_amp(table, args, recipe, out, "16-mixed", "amp-fp16")
    ddp = stage_distributed(table, args, recipe, out, "ddp") if "ddp" in stages else []
    if "fsdp" in stages:
        fsdp = stage_distributed(table, args, recipe, out, "fsdp")
        if ddp and fsdp:
            diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(ddp, fsdp))
            table.add("fsdp", "largest loss difference FSDP vs DDP, logged steps",
                      f"{diff:.2e}", "≤ 1e-2", diff <= 1e-2)
    if "step-time" in stages:
        stage_step_time(table, args)
    if "max-batch" in stages:
        stage_max_batch(table, args)
    table.add("total", "wall time", f"{time.perf_counter() - start:.0f} s",
              "" if args.smoke else "< 480 s (H100/H200)")


if __name__ == "__main__":
    sys.exit(main())
