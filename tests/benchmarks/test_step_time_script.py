"""The step-time benchmark script runs and reports every figure (its numbers are not asserted:
speed targets live in BENCHMARKS.md, not in tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_time.py"


@pytest.mark.slow
def test_step_time_script_reports_all_figures():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "2", "--warmup", "1", "--batch", "8",
         "--eval-images", "64", "--update-repeats", "2", "--device", "cpu", "--json"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["arch"] == "tracer-tiny-rn" and report["timed_steps"] == 2
    for key in ("flyp", "tracer"):
        assert report["step_s"][key] > 0 and report["peak_memory_mib"][key] > 0
    assert report["teacher_update"]["fused_s"] > 0 and report["teacher_update"]["loop_s"] > 0
    assert report["eval"]["tracer_img_s"] > 0 and report["eval"]["open_clip_img_s"] > 0


DATA_SCRIPT = SCRIPT.with_name("data_pipeline.py")


def test_data_pipeline_script_reports_both_paths():
    done = subprocess.run([sys.executable, str(DATA_SCRIPT), "--batch", "8", "--rounds", "2",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["batch"] == 8 and report["rounds"] == 2
    for kind in ("train", "eval"):
        assert report["us_per_item"][kind]["old"] > 0 and report["us_per_item"][kind]["new"] > 0
        assert report["speedup"][kind] > 0
