"""The embedded-world scripts: phenomenon.py's pooled table over pretrained models (from a
benchmark's runs), vqa.py's plan, tasks.py's plan and report (on tiny runs), the report block
both write, and first_result.py's measurement (on a tiny recipe)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ["synth-photo", "synth-sketch", "synth-noisy"]


def _summary(run: Path, models: dict[str, dict[str, float]]) -> None:
    run.mkdir(parents=True)
    evals = {m: {d: {"accuracy": acc[d], "n": 1000} for d in DATASETS}
             for m, acc in models.items()}
    (run / "summary.json").write_text(json.dumps(
        {"eval": {"id": DATASETS[:1], "ood": DATASETS[1:], "models": evals}}))


def _fake_benchmark(root: Path, plain_ood: float) -> None:
    """Zero-shot ID 0.80 / OOD 0.70; plain finetuning ID 0.90 and OOD ``plain_ood``; TRACER
    ID 0.89 / OOD 0.71 (tiny per-seed jitter so every spread is non-zero)."""
    (root / "results.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps({"choice": {"beta": 0.5, "lambda_sd": 0.9}}))
    for p in range(3):
        _summary(root / "runs" / f"zeroshot_p{p}_s0",
                 {"student": dict(zip(DATASETS, [0.80 + p / 1000, 0.70, 0.70]))})
        for s in range(2):
            j = (p + s) / 1000
            _summary(root / "runs" / f"flyp_p{p}_s{s}",
                     {"student": dict(zip(DATASETS, [0.90 + j, plain_ood + j, plain_ood - j]))})
            tracer = dict(zip(DATASETS, [0.89 + j, 0.71 + j, 0.71 - j]))
            _summary(root / "runs" / f"tracer-b0.5-l0.9_p{p}_s{s}",
                     {"student": tracer, "teacher": tracer})


def _phenomenon(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "phenomenon.py"), "--from",
                           str(root), "--seeds", "0", "1"], capture_output=True, text=True,
                          timeout=120)


def test_phenomenon_pools_over_pretrained_models_and_says_where_it_is_shown(tmp_path):
    _fake_benchmark(tmp_path / "shown", plain_ood=0.60)
    done = _phenomenon(tmp_path / "shown")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count("phenomenon shown") == 3 and "Pooled over the 3 pretrained models" in out
    assert "tracer-b0.5-l0.9" in out and "Phenomenon shown by 3 of 3" in out
    # The pooled zero-shot ID is the mean of 80.0, 80.1, 80.2 and its SE holds their spread.
    assert "| synth-photo | ID | 80.10 ± " in out.split("Pooled")[1]

    _fake_benchmark(tmp_path / "flat", plain_ood=0.70)  # plain finetuning keeps OOD: not shown
    flat = _phenomenon(tmp_path / "flat")
    assert flat.returncode == 1 and "phenomenon NOT shown" in flat.stdout


def test_vqa_plan_sweeps_on_the_validation_domain_only():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vqa.py"), "--dry-run",
                           "--lambdas", "0.1", "0.9", "--icl", "1", "--sweep-seeds", "0", "1"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if line.startswith("-m tracer_cli")]
    assert len(commands) == 4
    for command in commands:
        assert 'label = "vqa-mono"' in command and 'domains = ["mono"]' in command
        assert "data.ood=" in command
    assert "phase 1: 4 runs; phase 2: 6 runs" in done.stdout


def test_tasks_plan_runs_each_quickstart_as_shipped_and_its_plain_baselines():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tasks.py"), "--dry-run",
                           "--embedded-seed", "2"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if line.startswith("-m tracer_cli")]
    names = sorted(c.split("run.name=")[1].split()[0] for c in commands)
    assert names == sorted(f"{m}_s{s}" for m in ("tracer", "flyp", "tracer", "lp", "ft", "flyp")
                           for s in range(3))
    assert "# 18 runs" in done.stdout
    for command in commands:
        assert "model.embedded_seed=2" in command
        shipped = "run.name=tracer_" in command
        # the TRACER run is the recipe as shipped and evaluates the pretrained model; a baseline
        # names its method and empties the teacher and distillation tables
        assert ("train.method=" in command) is not shipped
        assert ("run.eval_zeroshot=false" in command) is not shipped
        assert ("teacher={}" in command and "distill={}" in command) is not shipped
        recipe = command.split()[3]
        method = command.split("run.name=")[1].split("_s")[0]
        assert recipe == {"lp": "recipes/quickstart_vqa.toml",
                          "ft": "recipes/quickstart_vqa.toml"}.get(method, recipe)


def test_report_block_is_replaced_between_its_markers_and_appended_when_absent(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from cli_runs import replace_block
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    report = tmp_path / "REPORT.md"
    report.write_text("# Title\n\n<!-- x:begin -->\nold\n<!-- x:end -->\n\nafter\n")
    replace_block(report, "new\n", "x")
    assert report.read_text() == "# Title\n\n<!-- x:begin -->\nnew\n<!-- x:end -->\n\nafter\n"
    replace_block(report, "other", "y")
    assert report.read_text().endswith("after\n\n<!-- y:begin -->\nother\n<!-- y:end -->\n")
    assert "new" in report.read_text() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_tasks_report_compares_the_runs_and_reuses_them(tmp_path):
    report = tmp_path / "REPORT.md"
    report.write_text("### Quickstarts\n\n<!-- tasks:begin -->\nstale\n<!-- tasks:end -->\n")
    tiny = ["model.pretrained=none", "run.device=cpu", "data.options.size=32",
            "data.eval_batch_size=32", "train.steps=2", "train.batch_size=16",
            "train.warmup_steps=1"]
    args = [sys.executable, str(ROOT / "benchmarks" / "tasks.py"), "--tasks", "vqa", "--seeds",
            "0", "--out", str(tmp_path / "runs"), "--jobs", "2", "--threads", "1", "--report",
            str(report), *[a for item in tiny for a in ("--set", item)]]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    text = report.read_text()
    assert "stale" not in text and text.startswith("### Quickstarts\n\n<!-- tasks:begin -->")
    assert "**vqa** (`recipes/quickstart_vqa.toml`; tracer, lp, ft, flyp)" in text
    # tracer compare's tables, their headings moved under the report's own sections
    assert "\n#### tracer compare: 4 run(s), 4 group(s)" in text and "\n## tracer" not in text
    for row in ("| zero-shot (pretrained) |", "| ft |", "| lp |", "| flyp |", "| tracer |",
                "| teacher of tracer |"):
        assert row in text
    assert "Paired differences against flyp" in text and "**retrieval**" not in text
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("vqa/*/command.txt")}
    assert len(stamps) == 4
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # every run reused


@pytest.mark.slow
def test_first_result_measures_a_quickstart_on_an_empty_cache(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text("""
[run]
name = "tiny"
[model]
arch = "tracer-tiny-rn"
pretrained = "none"
[data]
train = { name = "synth-photo-narrow", size = 64 }
id = [{ name = "synth-photo", size = 32 }]
ood = [{ name = "synth-sketch", size = 32 }]
[task]
train_templates = ["a photo of a {}."]
[train]
steps = 2
batch_size = 16
""")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "first_result.py"),
                           "--recipe", str(recipe), "--keep", str(tmp_path / "work"), "--json"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["returncode"] == 0 and result["total_s"] > 0
    assert result["build_s"] == 0.0  # nothing to build: the recipe asks for no weights
    assert set(result["accuracy"]) >= {"synth-photo", "synth-sketch"}
    assert (tmp_path / "work" / "runs" / "tiny" / "summary.json").is_file()
