"""``benchmarks/vs_open_clip.py``: its plan (the commands a user of each program would type, in
interleaved order), its argument checks, its arithmetic on given timings, and one real run of each
program (timings are not asserted: the comparison belongs in BENCHMARKS.md, measured on an idle
machine)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "vs_open_clip.py"


@pytest.fixture(scope="module")
def vs():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports cli_runs beside it
    try:
        spec = importlib.util.spec_from_file_location("vs_open_clip_script", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def _script(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.slow  # imports torch and open_clip for the model config folder: seconds
def test_plan_runs_every_program_twice_per_repetition_in_alternating_order():
    done = _script("--plan", "--images", "64", "--batch", "16", "--warmup", "1", "--reps", "2",
                   "--short-epochs", "1", "--long-epochs", "3",
                   "--programs", "open_clip_train,flyp")
    assert done.returncode == 0, done.stderr
    *commands, footer = done.stdout.strip().splitlines()
    assert footer.startswith("# 8 runs; tracer-tiny-rn (embedded weights), 64 images")
    programs = ["open_clip" if "--open-clip-child" in c else "flyp" for c in commands]
    assert programs == ["open_clip", "flyp"] * 2 + ["flyp", "open_clip"] * 2
    open_clip = commands[0].split()
    user_args = " ".join(open_clip[open_clip.index("--train-data"):])
    for flag in ("--dataset-type csv", "--csv-img-key filepath", "--csv-caption-key title",
                 "--model tracer-tiny-rn", "--batch-size 16", "--lr 0.0001", "--warmup 1",
                 "--epochs 1", "--precision fp32", "--save-frequency 0", "--pretrained "):
        assert flag in user_args
    assert "--epochs 3" in commands[2]
    tracer = [c for c in commands if "finetune" in c]
    assert [c.split("train.steps=")[1] for c in tracer] == ["4", "12", "4", "12"]


@pytest.mark.parametrize("flags, named", [
    (("--images", "100", "--batch", "64"), "--images 100 must be a multiple of --batch 64"),
    (("--short-epochs", "3", "--long-epochs", "3"), "--long-epochs 3 must be more than"),
    (("--images", "128", "--batch", "64", "--short-epochs", "1", "--warmup", "2"), "--warmup 2"),
    (("--programs", "open_clip_train,lora"), "--programs: unknown lora"),
    (("--reps", "0"), "--reps must be at least 1"),
])
def test_inconsistent_arguments_exit_2_with_one_line(flags, named):
    done = _script(*flags)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and named in done.stderr


def test_keep_refuses_a_folder_with_earlier_runs(tmp_path):
    (tmp_path / "train.csv").write_text("filepath,title\n")
    done = _script("--keep", str(tmp_path), "--plan")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"--keep {tmp_path} is not empty" in done.stderr


def _args(**changes) -> argparse.Namespace:
    base = {"images": 100, "batch": 10, "short_epochs": 1, "long_epochs": 3, "arch": "a",
            "init": "random", "image_px": 32, "lr": 1e-4, "wd": 0.1, "warmup": 0, "threads": 1,
            "workers": 0, "reps": 2}
    return argparse.Namespace(**{**base, **changes})


def test_summary_times_only_the_extra_steps_and_ratios_each_repetition(vs):
    # 200 extra images: open_clip_train 10 s and 20 s per 200, tracer 8 s and 10 s.
    results = {"open_clip_train": [
        {"short_s": 15.0, "long_s": 25.0, "peak_mib": 1000.0, "logged_img_s": 20.0},
        {"short_s": 30.0, "long_s": 50.0, "peak_mib": 1200.0, "logged_img_s": 10.0}],
        "flyp": [{"short_s": 20.0, "long_s": 28.0, "peak_mib": 900.0, "logged_img_s": 30.0},
                 {"short_s": 20.0, "long_s": 30.0, "peak_mib": 1300.0, "logged_img_s": 30.0}]}
    summary = vs.summarize(_args(), results)
    assert summary["open_clip_train"]["img_s"] == [20.0, 10.0]
    assert summary["flyp"]["img_s"] == [25.0, 20.0]
    # Ratios per repetition (1.25 and 2.0), not a ratio of medians (22.5 / 15 = 1.5).
    assert (summary["flyp"]["img_s_ratio_min"], summary["flyp"]["img_s_ratio_max"]) == (1.25, 2.0)
    assert summary["flyp"]["logged_img_s_ratio"] == 2.25  # median of 1.5 and 3.0
    assert summary["flyp"]["peak_mib_ratio"] == pytest.approx((0.9 + 1300 / 1200) / 2)
    # Start-up: the short run less its 100 images at the repetition's rate (20 - 4, 20 - 5).
    assert summary["flyp"]["startup_s_median"] == 15.5
    table = vs.markdown(_args(), summary)
    assert "| tracer FLYP | 22 | 1.62 (1.25–2.00) | 30 (2.25) | 1100 MiB (0.99) | 15.5 s |" \
        in table
    assert "| open_clip_train (FLYP) | 15 | 1.00 (1.00–1.00) | 15 (1.00) |" in table


OPEN_CLIP_LOG = """\
2026-12-07,05:40:52 | INFO | Start epoch 0
2026-12-07,05:40:52 | INFO | Train Epoch: 0 [ 10/100 (10%)] Data (t): 0.1 Batch (t): 9.000, 1/s
2026-12-07,05:40:53 | INFO | Train Epoch: 0 [100/100 (100%)] Data (t): 0.1 Batch (t): 2.000, 5/s
2026-12-07,05:40:53 | INFO | Start epoch 1
2026-12-07,05:40:52 | INFO | Train Epoch: 1 [ 10/100 (10%)] Data (t): 0.1 Batch (t): 3.000, 3/s
2026-12-07,05:40:53 | INFO | Train Epoch: 1 [100/100 (100%)] Data (t): 0.1 Batch (t): 1.000, 9/s
"""


def test_self_reported_rates_cover_the_steps_after_the_short_run(vs):
    # open_clip_train, epoch 1 only: 1 step of 3 s and 9 steps of 1 s for 100 images.
    args = _args(short_epochs=1)
    assert vs.logged_rate("open_clip_train", OPEN_CLIP_LOG, args) == 100 / 12
    # tracer, 10 steps per epoch, a log every 4 steps: only windows that start at step 10 or
    # later count, (12, 16] at 40 img/s and (16, 18] at 20 img/s: 60 images in 2 s.
    lines = [{"event": "train", "step": 4, "img_per_s": 1.0},
             {"event": "checkpoint", "step": 4},
             {"event": "train", "step": 8, "img_per_s": 1.0},
             {"event": "train", "step": 12, "img_per_s": 1.0},
             {"event": "train", "step": 16, "img_per_s": 40.0},
             {"event": "train", "step": 18, "img_per_s": 20.0}]
    text = "\n".join(json.dumps(line) for line in lines)
    assert vs.logged_rate("flyp", text, args) == 60 / (1.0 + 1.0)
    with pytest.raises(SystemExit, match="no throughput logged after step 20"):
        vs.logged_rate("flyp", text, _args(short_epochs=2, long_epochs=3))


def test_summary_refuses_timings_drowned_in_noise(vs):
    results = {"flyp": [{"short_s": 20.0, "long_s": 19.0, "peak_mib": 900.0,
                         "logged_img_s": 9.0}]}
    with pytest.raises(SystemExit, match="timing noise is larger than the timed steps"):
        vs.summarize(_args(), results)


@pytest.mark.slow
def test_both_programs_really_train_from_the_same_weights(vs, tmp_path):
    """One repetition of each program on a tiny CSV (the plan and measuring code as the script
    runs them); both logs show training from the embedded weights' logit scale."""
    args = _args(arch="tracer-tiny-rn", init="embedded", images=16, batch=8, short_epochs=1,
                 long_epochs=2, reps=1, programs=["open_clip_train", "flyp"])
    csv = vs.write_dataset(tmp_path, args.images, 32)
    weights = vs.write_weights(tmp_path, args.arch)
    results = vs.measure(args, vs.plan(args, tmp_path, csv, weights), tmp_path)
    for program in ("open_clip_train", "flyp"):
        (row,) = results[program]
        assert row["short_s"] > 0 and row["long_s"] > 0 and row["peak_mib"] > 100
        assert row["logged_img_s"] > 0
    assert "Logit Scale: 34.5" in (tmp_path / "logs" / "open_clip_train-e2-r0.txt").read_text()
    assert "logit_scale=34.5" in (tmp_path / "logs" / "flyp-e2-r0.txt").read_text()
