"""benchmarks/retention.py: its plan (finetunes without evaluation, then ``tracer eval
--retain``) and its table from eval documents with hand-computed answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import retention
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return retention


def test_dry_run_plans_three_methods_per_seed_then_their_evaluations(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/retention.py", "--dry-run", "--seeds",
                           "0", "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "# 6 runs, 6 evals"
    finetunes = [line for line in lines if " finetune " in line]
    assert [line.split()[3] for line in finetunes[:3]] == [
        "recipes/synth_ft.toml", "recipes/synth_flyp.toml", "recipes/synth_tracer.toml"]
    assert all("run.eval=false" in line for line in finetunes)
    assert "teacher.beta=0.2" in finetunes[2] and "teacher.beta" not in finetunes[1]
    evals = [line for line in lines if " eval " in line]
    assert all("--retain synth-colour" in line and "data.retain[0].size=2000" in line
               for line in evals)


def _doc(after: float, before: float = 0.9) -> dict:
    return {"datasets": {"synth-colour": {"accuracy": after, "n": 100}},
            "retain_before": {"synth-colour": {"accuracy": before, "n": 100}},
            "retain_accuracy": after, "retain_change": after - before}


def test_table_rows_changes_and_paired_differences(script):
    docs = {("ft", 0): _doc(0.80), ("flyp", 0): _doc(0.60), ("tracer", 0): _doc(0.88),
            ("ft", 1): _doc(0.70), ("flyp", 1): _doc(0.62), ("tracer", 1): _doc(0.90)}
    lines = script.table(docs, "flyp").splitlines()
    assert lines[2] == "| zero-shot (pretrained) | 90.00 ± 3.00 | — | — | — |"
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in lines[3:]}
    # ft: change −.10, −.20 -> −15.00 ± 5.00; paired vs flyp: .20, .08 -> +14.00 ± 6.00
    assert rows["ft"][1] == "-15.00 ± 5.00"
    assert rows["ft"][2] == "+14.00 ± 6.00 (beyond noise)"
    assert rows["flyp"][2] == "—"
    # tracer vs flyp: .28, .28 -> no spread
    assert rows["tracer"][2].startswith("+28.00")
    assert rows["tracer"][3] == "0, 1 |"
