"""FLYP in tracer against open_clip_train's own training loop, side by side on this machine.

Both train the same model from the same weights on the same CSV of image-caption pairs, with the
same batch size, lr, warm-up, weight decay, AdamW, fp32 on the CPU and the same thread count,
no evaluation, and one checkpoint written at the end:

  open_clip_train   python -m open_clip_train.main --train-data train.csv --dataset-type csv
                    --csv-img-key filepath --csv-caption-key title --model ARCH --pretrained W ...
                    exactly as its users run it, through a two-line wrapper (this script with
                    --open-clip-child) that first makes open_clip know tracer's tiny model configs
                    (open_clip.add_model_config) and then calls open_clip_train.main.main(argv);
  tracer FLYP       python -m tracer_cli finetune recipe.toml (train.method = "flyp", a ``csv``
                    dataset in captions mode, the ``retrieval`` task);
  tracer TRACER     the same recipe with train.method = "tracer" (for reference: what the
                    teacher costs).

Whole-step throughput comes from outside, the same way for every program: each runs twice, for
--short-epochs and for --long-epochs passes over the data, and images/s is the images of the extra
steps over the extra wall time. Start-up (imports, model, data index), the first steps and the
final checkpoint are in both runs and cancel; what is left is everything a steady-state step
costs, data loading and logging at each program's defaults included. Runs are interleaved (each
repetition runs every program once per length, the order reversed every other repetition) so
machine noise hits all alike; the table gives medians, the per-repetition ratio to
open_clip_train with its range, and the peak resident set size of each long run (its process's
ru_maxrss; data loader workers, with --workers > 0, are not included).

    python benchmarks/vs_open_clip.py --report BENCHMARKS.md   # alone on an idle machine
    python benchmarks/vs_open_clip.py --plan                   # the commands only
    python benchmarks/vs_open_clip.py --images 256 --batch 64 --warmup 2 --reps 1  # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli_runs import ROOT, print_plan, replace_block
from tracer_cli import rundir

PROGRAMS = ("open_clip_train", "flyp", "tracer")
REPORT_MARKER = "vs-open-clip"
LABELS = {"open_clip_train": "open_clip_train (FLYP)", "flyp": "tracer FLYP",
          "tracer": "tracer TRACER"}
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220),
           "yellow": (230, 210, 40), "purple": (140, 50, 170), "grey": (128, 128, 128)}
SHAPES = ("square", "circle", "bar")

RECIPE = """
[run]
name = "vs-open-clip"
output_dir = "{runs}"
seed = 0
device = "cpu"
precision = "32-true"
eval = false
eval_zeroshot = false
# One throughput record per epoch, as open_clip_train logs with fewer than 100 steps an epoch.
log_every = {log_every}

[model]
arch = "{arch}"
pretrained = "{pretrained}"
# open_clip_train trains BatchNorm statistics too (model.train()); so does this run.
freeze_bn_stats = false

[data]
train = {{ name = "csv", path = "{csv}", mode = "captions", caption_column = "title" }}
num_workers = {workers}

[task]
name = "retrieval"

[train]
method = "{method}"
steps = 1  # each run sets its own: --set train.steps=N
batch_size = {batch}
lr = {lr}
weight_decay = {wd}
warmup_steps = {warmup}
# open_clip_train clips no gradients unless --grad-clip-norm is given.
grad_clip = 0.0
checkpoint_every = 0
"""


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--arch", default="tracer-tiny-rn", help="an open_clip or tracer model config")
    p.add_argument("--init", choices=("embedded", "random"), default="embedded",
                   help="embedded: tracer's shipped pretrained weights of --arch, given to both as "
                        "a weights file; random: each program's own random initialisation")
    p.add_argument("--images", type=int, default=2048, help="image-caption pairs in the CSV")
    p.add_argument("--image-px", type=int, default=64, help="side of the JPEGs written")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=10, help="linear warm-up steps (cosine after)")
    p.add_argument("--short-epochs", type=int, default=1)
    p.add_argument("--long-epochs", type=int, default=6)
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    p.add_argument("--threads", type=int, default=1, help="OMP/MKL threads of every run")
    p.add_argument("--workers", type=int, default=0, help="data loader workers of every run")
    p.add_argument("--programs", default=",".join(PROGRAMS),
                   help="comma-separated subset of: " + ", ".join(PROGRAMS))
    p.add_argument("--keep", type=Path, help="write data and runs here (default: a temp folder)")
    p.add_argument("--plan", action="store_true", help="print the commands and exit")
    p.add_argument("--report", type=Path,
                   help=f"also write the Markdown block between this file's <!-- {REPORT_MARKER}:"
                        "begin/end --> markers (BENCHMARKS.md)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--markdown", action="store_true", help="print the BENCHMARKS.md rows")
    out.add_argument("--json", action="store_true", help="print one JSON document")
    args = p.parse_args()
    _check(p, args)
    return args


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Inconsistent numbers: one line naming the option, exit 2 (usage)."""
    def error(message: str) -> None:
        p.exit(2, f"vs_open_clip.py: {message}\n")

    for name in ("images", "image_px", "batch", "short_epochs", "reps", "threads"):
        if getattr(args, name) < 1:
            error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.images % args.batch:
        error(f"--images {args.images} must be a multiple of --batch {args.batch} (every step "
              "of both programs then takes a full batch)")
    if args.long_epochs <= args.short_epochs:
        error(f"--long-epochs {args.long_epochs} must be more than --short-epochs "
                f"{args.short_epochs}: the extra steps are what is timed")
    if args.warmup >= args.short_epochs * args.images // args.batch:
        error(f"--warmup {args.warmup} must be fewer than the short run's steps "
                f"({args.short_epochs * args.images // args.batch})")
    if args.keep and args.keep.is_dir() and any(args.keep.iterdir()):
        error(f"--keep {args.keep} is not empty; name a new or empty folder (both programs refuse "
              "to write over an earlier run)")
    programs = [n.strip() for n in args.programs.split(",") if n.strip()]
    unknown = [n for n in programs if n not in PROGRAMS]
    if unknown or not programs:
        error(f"--programs: unknown {', '.join(unknown) or '(none given)'}; known: "
                f"{', '.join(PROGRAMS)}")
    args.programs = programs


# --------------------------------------------------------------------------- inputs


def write_dataset(folder: Path, count: int, px: int) -> Path:
    """``count`` JPEGs (a coloured shape on a coloured ground) and ``train.csv`` with absolute
    ``filepath`` and ``title`` columns (open_clip_train opens paths as written)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    names = list(COLOURS)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["filepath,title"]
    for i in range(count):
        fg, bg = rng.choice(len(names), size=2, replace=False)
        shape = SHAPES[i % len(SHAPES)]
        image = Image.new("RGB", (px, px), COLOURS[names[bg]])
        x0, y0 = (int(v) for v in rng.integers(0, px // 2, size=2))
        box = (x0, y0, x0 + px // 2, y0 + (px // 6 if shape == "bar" else px // 2))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[names[fg]])
        path = images / f"{i:06d}.jpg"
        image.save(path, quality=90)
        rows.append(f"{path},a {names[fg]} {shape} on a {names[bg]} background")
    csv = folder / "train.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def write_weights(folder: Path, arch: str) -> Path:
    """Tracer's shipped pretrained weights of ``arch``, unpacked into one ``.pt`` state dict that
    both programs load (tracer as ``model.pretrained``, open_clip_train as ``--pretrained``)."""
    import torch

    from tracer_plugins.backbones.embedded import load_shipped, shipped_path

    shipped = shipped_path(arch)
    if not shipped.is_file():
        sys.exit(f"--init embedded: tracer ships no weights for '{arch}' ({shipped.name}); use "
                 "--init random")
    state, _ = load_shipped(shipped)
    path = folder / f"{arch}.pt"
    torch.save(state, path)
    return path


# --------------------------------------------------------------------------- commands


def _open_clip_cmd(args, csv: Path, weights: Path | None, logs: Path, name: str,
                   epochs: int) -> list[str]:
    from tracer_plugins.backbones.embedded import CONFIG_DIR

    cmd = [sys.executable, str(Path(__file__).resolve()), "--open-clip-child", str(CONFIG_DIR),
           "--train-data", str(csv), "--dataset-type", "csv", "--csv-separator", ",",
           "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", args.arch,
           "--batch-size", str(args.batch), "--lr", str(args.lr), "--wd", str(args.wd),
           "--warmup", str(args.warmup), "--epochs", str(epochs), "--workers", str(args.workers),
           "--precision", "fp32", "--device", "cpu", "--save-frequency", "0", "--seed", "0",
           "--logs", str(logs), "--name", name]
    return cmd + (["--pretrained", str(weights)] if weights else [])


def _tracer_cmd(recipe: Path, name: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "tracer_cli", "finetune", str(recipe),
            "--set", f"run.name={name}", "--set", f"train.steps={steps}"]


def plan(args, folder: Path, csv: Path, weights: Path | None) -> list[tuple]:
    """Every run in the order it is made: ``(rep, program, epochs, command)``."""
    per_epoch = args.images // args.batch
    recipes = {}
    for method in ("flyp", "tracer"):
        recipes[method] = folder / f"{method}.toml"
        recipes[method].write_text(RECIPE.format(
            runs=folder / "runs", arch=args.arch, pretrained=weights or "none", csv=csv,
            workers=args.workers, method=method, log_every=per_epoch, batch=args.batch,
            lr=args.lr, wd=args.wd, warmup=args.warmup))
    runs = []
    for rep in range(args.reps):
        order = args.programs if rep % 2 == 0 else args.programs[::-1]
        for epochs in (args.short_epochs, args.long_epochs):
            for program in order:
                name = f"{program}-e{epochs}-r{rep}"
                cmd = (_open_clip_cmd(args, csv, weights, folder / "open_clip_logs", name, epochs)
                       if program == "open_clip_train"
                       else _tracer_cmd(recipes[program], name, epochs * per_epoch))
                runs.append((rep, program, epochs, cmd))
    return runs


# --------------------------------------------------------------------------- measuring


def run_one(cmd: list[str], threads: int, log: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB, the child's ru_maxrss) of one run; exits on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd[1:])}\n{tail}")
    return seconds, usage.ru_maxrss / 1024


def measure(args, runs: list[tuple], folder: Path) -> dict[str, list[dict]]:
    """``{program: [{"short_s", "long_s", "peak_mib", "logged_img_s"} per repetition]}``."""
    results: dict[str, dict[int, dict]] = {p: {} for p in args.programs}
    logs = folder / "logs"
    logs.mkdir(exist_ok=True)
    for rep, program, epochs, cmd in runs:
        log = logs / f"{program}-e{epochs}-r{rep}.txt"
        seconds, peak = run_one(cmd, args.threads, log)
        entry = results[program].setdefault(rep, {})
        if epochs == args.short_epochs:
            entry["short_s"] = seconds
        else:
            text = (log if program == "open_clip_train"
                    else rundir.metrics_path(folder / "runs" / log.stem)).read_text()
            entry.update(long_s=seconds, peak_mib=peak,
                         logged_img_s=logged_rate(program, text, args))
        print(f"[rep {rep}] {program} {epochs} epochs: {seconds:.1f} s, peak {peak:.0f} MiB",
              file=sys.stderr, flush=True)
    return {p: [reps[r] for r in sorted(reps)] for p, reps in results.items()}


# open_clip_train's training log line: "Train Epoch: E [SEEN/TOTAL (P%)] Data (t): .. Batch (t): T"
# with T the mean step time since its previous log line.
_OPEN_CLIP_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) .*?Batch \(t\): ([0-9.]+)")


def logged_rate(program: str, text: str, args) -> float:
    """The program's own throughput log over the timed steps (after the short run's epochs), as
    images/s: a cross-check of the wall-clock figure that start-up noise cannot reach. Each
    program times its steps its own way: open_clip_train's windows include its logging, tracer's
    (``img_per_s`` of metrics.jsonl) leave out the work of the log step itself."""
    windows = (_open_clip_windows(text, args) if program == "open_clip_train"
               else _tracer_windows(text, args))
    if not windows:
        sys.exit(f"{program}: no throughput logged after step "
                 f"{args.short_epochs * args.images // args.batch}; raise --long-epochs")
    return sum(i for i, _ in windows) / sum(t for _, t in windows)


def _open_clip_windows(text: str, args) -> list[tuple[int, float]]:
    """(images, seconds) of each logged window in the epochs after the short run's."""
    windows, seen_before = [], 0
    for epoch, seen, _total, step_s in _OPEN_CLIP_LINE.findall(text):
        seen = int(seen)
        images = seen - seen_before if seen > seen_before else seen  # a new epoch restarts at 0
        seen_before = seen
        if int(epoch) >= args.short_epochs:
            windows.append((images, images / args.batch * float(step_s)))
    return windows


def _tracer_windows(text: str, args) -> list[tuple[int, float]]:
    """(images, seconds) of each logged window that starts after the short run's steps."""
    windows, step_before = [], 0
    first = args.short_epochs * args.images // args.batch
    for line in text.splitlines():
        record = json.loads(line)
        if record.get("event") != "train":
            continue
        images = (record["step"] - step_before) * args.batch
        if step_before >= first:
            windows.append((images, images / record["img_per_s"]))
        step_before = record["step"]
    return windows


def summarize(args, results: dict[str, list[dict]]) -> dict:
    """Per program: images/s of the extra steps per repetition (wall clock) and as its own log
    has them, peak RSS, their medians, and the medians of the per-repetition ratios to
    open_clip_train (with the range for the wall-clock images/s)."""
    extra_images = (args.long_epochs - args.short_epochs) * args.images
    if any(r["long_s"] <= r["short_s"] for reps in results.values() for r in reps):
        sys.exit("a long run took no longer than its short run: the timing noise is larger than "
                 "the timed steps; raise --long-epochs (or --images) or run on an idle machine")
    figures = {p: {"img_s": [extra_images / (r["long_s"] - r["short_s"]) for r in reps],
                   "logged_img_s": [r["logged_img_s"] for r in reps],
                   "peak_mib": [r["peak_mib"] for r in reps]} for p, reps in results.items()}
    base = figures.get("open_clip_train")
    out = {}
    for program, fig in figures.items():
        row = {"img_s": fig["img_s"], "logged_img_s": fig["logged_img_s"],
               **{f"{key}_median": statistics.median(values) for key, values in fig.items()},
               "startup_s_median": statistics.median(
                   r["short_s"] - args.short_epochs * args.images / v
                   for r, v in zip(results[program], fig["img_s"]))}
        for key in fig if base else ():
            ratios = [v / b for v, b in zip(fig[key], base[key])]
            row[f"{key}_ratio"] = statistics.median(ratios)
            if key == "img_s":
                row.update(img_s_ratio_min=min(ratios), img_s_ratio_max=max(ratios))
        out[program] = row
    return out


# --------------------------------------------------------------------------- reporting


def _setup_line(args) -> str:
    return (f"{args.arch} ({args.init} weights), {args.images} images of {args.image_px} px, "
            f"batch {args.batch}, lr {args.lr:g}, wd {args.wd:g}, warm-up {args.warmup}, fp32 "
            f"CPU, {args.threads} thread(s), {args.workers} loader worker(s); timed: epochs "
            f"{args.short_epochs + 1}..{args.long_epochs} "
            f"({(args.long_epochs - args.short_epochs) * args.images // args.batch} steps), "
            f"{args.reps} interleaved repetition(s)")


def markdown(args, summary: dict) -> str:
    """The BENCHMARKS.md block: the setup, then one table row per program."""
    lines = [f"Setup: {_setup_line(args)}.", "",
             "| program | images/s (median) | × open_clip_train (median, range) | self-reported "
             "images/s (× open_clip_train) | peak RSS (× open_clip_train) | start-up |",
             "|---|---|---|---|---|---|"]
    for program, row in summary.items():
        has_base = "img_s_ratio" in row
        ratio = (f"{row['img_s_ratio']:.2f} ({row['img_s_ratio_min']:.2f}–"
                 f"{row['img_s_ratio_max']:.2f})" if has_base else "-")
        logged = f"{row['logged_img_s_median']:.0f}" + \
            (f" ({row['logged_img_s_ratio']:.2f})" if has_base else "")
        peak = f"{row['peak_mib_median']:.0f} MiB" + \
            (f" ({row['peak_mib_ratio']:.2f})" if has_base else "")
        lines.append(f"| {LABELS[program]} | {row['img_s_median']:.0f} | {ratio} | {logged} | "
                     f"{peak} | {row['startup_s_median']:.1f} s |")
    return "\n".join(lines)


def _report(args, summary: dict) -> None:
    if args.report:
        replace_block(args.report, markdown(args, summary), REPORT_MARKER)
    if args.json:
        print(json.dumps({"setup": vars(args) | {"keep": str(args.keep) if args.keep else None},
                          "results": summary}, indent=2))
    elif args.markdown:
        print(markdown(args, summary))
    else:
        print(_setup_line(args))
        for program, row in summary.items():
            ratio = f"  x{row['img_s_ratio']:.2f} open_clip_train" if "img_s_ratio" in row else ""
            print(f"{LABELS[program]:24s} {row['img_s_median']:8.1f} img/s{ratio}   peak "
                  f"{row['peak_mib_median']:.0f} MiB")


def _open_clip_child(argv: list[str]) -> None:
    """``python -m open_clip_train.main ARGV`` with tracer's model configs known to open_clip."""
    import open_clip
    from open_clip_train.main import main as open_clip_main

    open_clip.add_model_config(argv[0])
    open_clip_main(argv[1:])


def main() -> None:
    if sys.argv[1:2] == ["--open-clip-child"]:
        _open_clip_child(sys.argv[2:])
        return
    args = _args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        csv = folder / "train.csv" if args.plan else write_dataset(folder, args.images,
                                                                   args.image_px)
        weights = None
        if args.init == "embedded":
            weights = folder / f"{args.arch}.pt" if args.plan else write_weights(folder, args.arch)
        runs = plan(args, folder, csv, weights)
        if args.plan:
            print_plan([cmd for *_, cmd in runs], f"{len(runs)} runs; {_setup_line(args)}")
            return
        summary = summarize(args, measure(args, runs, folder))
    _report(args, summary)


if __name__ == "__main__":
    main()
