"""``benchmarks/memory.py`` measures and tabulates every configuration; ``benchmarks/gpu_check.sh``
parses and its Python runs every stage in ``--smoke`` mode on CPU (figures are not asserted:
they belong in BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_memory_script_reports_each_configuration():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--arch", "tracer-tiny-vit",
         "--batch", "4", "--accum", "2", "--configs", "flyp,tracer+all", "--json"],
        capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)["results"]["tracer-tiny-vit"]
    assert set(rows) == {"flyp", "tracer+all"}
    assert all(r["peak_mib"] > r["baseline_mib"] > 0 for r in rows.values())


def test_gpu_check_script_parses():
    done = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_gpu_acceptance_smoke_runs_its_stages_on_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--smoke",
         "--only", "amp-fp16,max-batch", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=_env(), cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "| amp-fp16 | tracer finetune exit code" in done.stdout
    assert "| max-batch | checkpointing allows a batch at least as large |  | yes | pass |" \
        in done.stdout
    assert "FAIL" not in done.stdout
