"""`tracer eval` end to end on one tiny run: sources, datasets, files, WiSE-FT, gates, bad input.

The run is made once per module (`tracer finetune --max-steps 2`, with its own evaluation), so the
eval numbers can be checked against what finetune wrote: same weights, same data, same metrics.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import LOGIT_TOLERANCE, assert_same_predictions
from tracer_cli.cli import app
from tracer_cli.results.metrics import classification_metrics
from tracer_plugins.backbones.openclip import register_tiny_configs
from tracer_plugins.datasets.synth import CLASSNAMES, render

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(make_tiny_run) -> Path:
    return make_tiny_run("eval-run")


def _eval(runner, *args: str):
    return runner.invoke(app, ["eval", *map(str, args)])


def _json(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _saved(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / "eval" / f"{name}.json").read_text())


def test_run_dir_reproduces_finetune_numbers(runner, run_dir):
    result = _eval(runner, run_dir, "--json")
    doc = _json(result)
    assert doc["datasets"] == _saved(run_dir, "final_student")
    assert doc["id"] == ["synth-photo"] and doc["ood"] == ["synth-sketch", "synth-noisy"]
    for key in ("accuracy", "top5", "ece", "nll", "brier", "macro_f1", "n"):
        assert key in doc["datasets"]["synth-sketch"]
    ood = [doc["datasets"][n] for n in doc["ood"]]
    assert doc["avg_ood_accuracy"] == pytest.approx(np.mean([m["accuracy"] for m in ood]))
    assert doc["avg_ood_ece"] == pytest.approx(np.mean([m["ece"] for m in ood]))
    assert doc["model"] == {"source": "run", "path": str(run_dir), "spec": None,
                            "checkpoint": str(run_dir / "last.pt"), "step": 2,
                            "which": "student", "backbone": "openclip", "arch": "tracer-tiny-rn",
                            "pretrained": "none", "wise_alpha": None}
    assert doc["wise"] == [] and doc["gates"] == []
    assert "average OOD" in result.stderr and "synth-noisy" in result.stderr

    teacher = _json(_eval(runner, run_dir, "--which", "teacher", "--json"))
    assert teacher["datasets"] == _saved(run_dir, "final_teacher")
    assert teacher["model"]["which"] == "teacher"


def test_wise_alpha_sweep_writes_curve_diagrams_and_predictions(runner, run_dir, tmp_path):
    out = tmp_path / "out"
    result = _eval(runner, run_dir, "--wise-alpha", "1,0,0.5", "--output-dir", out,
                   "--save-predictions", "--json")
    doc = _json(result)
    assert [e["alpha"] for e in doc["wise"]] == [0.0, 0.5, 1.0]
    # α = 0 is the run's own θ₀ (its zero-shot evaluation), α = 1 its finetuned student.
    assert doc["wise"][0]["datasets"] == _saved(run_dir, "zeroshot")
    assert doc["wise"][2]["datasets"] == _saved(run_dir, "final_student")
    assert doc["datasets"] == doc["wise"][2]["datasets"] and doc["model"]["wise_alpha"] == 1.0
    for entry in doc["wise"]:
        assert set(entry) == {"alpha", "datasets", "avg_ood_accuracy", "avg_ood_ece",
                              "id_accuracy"}
        assert entry["id_accuracy"] == entry["datasets"]["synth-photo"]["accuracy"]
    assert json.loads((out / "eval.json").read_text()) == doc
    for name in ("reliability_synth-photo.png", "reliability_synth-sketch.png",
                 "reliability_synth-noisy.png", "wise_curve.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    with np.load(out / "predictions" / "synth-sketch.npz") as saved:
        logits, labels = saved["logits"], saved["labels"]
    assert logits.dtype == np.float32 and logits.shape == (48, 10) and labels.shape == (48,)
    recomputed = classification_metrics(logits, labels)
    assert recomputed["accuracy"] == doc["datasets"]["synth-sketch"]["accuracy"]
    assert not list(out.rglob("*.tmp"))
    assert "WiSE-FT" in result.stderr


def test_named_datasets_reuse_recipe_tables_and_inherit_options(runner, run_dir):
    doc = _json(_eval(runner, run_dir, "--id", "synth-photo", "--ood", "synth-sketch,synth-cartoon",
                      "--set", "data.options.size=20", "--json"))
    assert doc["id"] == ["synth-photo"] and doc["ood"] == ["synth-sketch", "synth-cartoon"]
    # synth-sketch is the recipe's own table (size 48); synth-cartoon is new and takes
    # data.options.
    assert doc["datasets"]["synth-sketch"] == _saved(run_dir, "final_student")["synth-sketch"]
    assert doc["datasets"]["synth-cartoon"]["n"] == 20


def test_checkpoint_file_with_its_embedded_recipe(runner, run_dir, tmp_path):
    step = run_dir / "checkpoints" / "step_2.pt"
    doc = _json(_eval(runner, "--checkpoint", step, "--ood", "synth-sketch", "--json"))
    assert doc["datasets"]["synth-sketch"] == _saved(run_dir, "final_student")["synth-sketch"]
    assert doc["model"]["source"] == "checkpoint" and doc["model"]["step"] == 2

    # A step checkpoint of a run, named relative to the run directory.
    doc = _json(_eval(runner, run_dir, "--checkpoint", "checkpoints/step_2.pt", "--ood",
                      "synth-sketch", "--json"))
    assert doc["model"]["source"] == "run" and doc["model"]["checkpoint"] == str(step)
    assert doc["datasets"]["synth-sketch"] == _saved(run_dir, "final_student")["synth-sketch"]

    vit = tmp_path / "vit.toml"
    # A run's lock file works as --recipe; this one names another architecture.
    vit.write_text((run_dir / "recipe.lock.toml").read_text()
                   .replace('"tracer-tiny-rn"', '"tracer-tiny-vit"'))
    result = _eval(runner, "--checkpoint", step, "--recipe", vit)
    assert result.exit_code == 2
    assert "does not fit this model's architecture" in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr


def test_gates_exit_3_naming_the_failed_gates(runner, run_dir):
    result = _eval(runner, run_dir, "--ood", "synth-sketch",
                   "--fail-under", "synth-sketch.accuracy=0", "--fail-under",
                   "avg_ood_accuracy=0.99", "--fail-over", "synth-photo.nll=0.1", "--json")
    assert result.exit_code == 3, result.stderr
    doc = json.loads(result.stdout)  # the results are still printed
    assert [(g["metric"], g["flag"], g["passed"]) for g in doc["gates"]] == [
        ("synth-sketch.accuracy", "--fail-under", True),
        ("avg_ood_accuracy", "--fail-under", False),
        ("synth-photo.nll", "--fail-over", False)]
    assert doc["gates"][1]["value"] == doc["avg_ood_accuracy"]
    assert "gate passed: synth-sketch.accuracy" in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert "avg_ood_accuracy" in error[0] and "below 0.99" in error[0]
    assert "synth-photo.nll" in error[0] and "above 0.1" in error[0]
    assert "synth-sketch.accuracy" not in error[0]


def _shapes_folder(root: Path, per_class: int = 3) -> Path:
    images, labels, _ = render("photo", 10 * per_class, seed=7, image_size=32)
    for i, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / CLASSNAMES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


def _plain_open_clip_logits(weights: Path, folder: Path, templates: list[str]):
    """Zero-shot logits computed with open_clip calls only, none of tracer's code."""
    register_tiny_configs()
    model, _, preprocess = open_clip.create_model_and_transforms("tracer-tiny-rn",
                                                                 pretrained=str(weights))
    tokenizer = open_clip.get_tokenizer("tracer-tiny-rn")
    model.eval()
    classes = sorted(p.name for p in folder.iterdir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((folder / name).iterdir())]
    images = torch.stack([preprocess(Image.open(f).convert("RGB")) for f, _ in files])
    labels = torch.tensor([c for _, c in files])
    with torch.no_grad():
        feats = model.encode_image(images)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        rows = []
        for name in classes:
            text = model.encode_text(tokenizer([t.format(name) for t in templates]))
            mean = (text / text.norm(dim=-1, keepdim=True)).mean(dim=0)
            rows.append(mean / mean.norm())
        logits = model.logit_scale.exp() * feats @ torch.stack(rows).T
    return logits, labels


@pytest.mark.numerics
def test_zero_shot_equals_plain_open_clip(runner, run_dir, tmp_path):
    folder = _shapes_folder(tmp_path / "shapes")
    weights = run_dir / "last.pt"
    templates = ["a photo of a {}.", "a drawing of a {}."]
    out = tmp_path / "out"
    doc = _json(_eval(runner, "--model", f"openclip:tracer-tiny-rn:{weights}", "--id",
                      "imagefolder", "--set", f"data.options.root={folder}",
                      "--set", f"task.templates={json.dumps(templates)}",
                      "--set", "run.device=cpu", "--output-dir", out, "--save-predictions",
                      "--json"))
    logits, labels = _plain_open_clip_logits(weights, folder, templates)
    assert doc["datasets"]["imagefolder"]["n"] == 30
    with np.load(out / "predictions" / "imagefolder.npz") as saved:
        assert np.array_equal(saved["labels"], labels.numpy())
        saved_logits = torch.from_numpy(saved["logits"])
    # Two computations (tracer's batched evaluation, one open_clip forward): equal to float32
    # rounding, not bit for bit, since the order of sums depends on the CPU's kernels.
    torch.testing.assert_close(saved_logits, logits, **LOGIT_TOLERANCE)
    assert_same_predictions(saved_logits, logits)
    expected_accuracy = float((logits.argmax(dim=1) == labels).double().mean())
    assert doc["datasets"]["imagefolder"]["accuracy"] == expected_accuracy
    assert doc["model"]["source"] == "model" and doc["model"]["pretrained"] == str(weights)


def test_classnames_file_must_match_the_label_space(runner, run_dir, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("circle\nsquare\ntriangle\n")
    result = _eval(runner, run_dir, "--ood", "synth-sketch", "--set",
                   f"task.classnames_file={names}")
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert str(names) in line and "3 class names" in line and "10 classes" in line


@pytest.fixture
def run_without_checkpoint(run_dir, tmp_path) -> Path:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run_dir / "recipe.lock.toml", bare)
    return bare


@pytest.mark.parametrize("args, fragment", [
    (["RUN", "--ood", "synth-skech"], "unknown dataset 'synth-skech': did you mean 'synth-sketch'"),
    (["BARE"], "has no checkpoint (last.pt)"),
    ([], "nothing to evaluate"),
    (["RUN", "--model", "openclip:tracer-tiny-rn:none"], "drop RUN_DIR"),
    (["--model", "openclip:ViT-B-16", "--id", "synth-photo"], "BACKBONE:ARCH[:PRETRAINED]"),
    (["--model", "tracer-tiny-rn", "--id", "synth-photo"], "BACKBONE:ARCH[:PRETRAINED]"),
    (["--model", "openclip:tracer-tiny-rn:none"], "no datasets to evaluate"),
    (["--model", "openclip:tracer-tiny-rn:none", "--id", "synth-photo", "--wise-alpha", "0.5"],
     "--wise-alpha mixes pretrained and finetuned weights"),
    (["RUN", "--wise-alpha", "0,2"], "outside [0, 1]"),
    (["RUN", "--which", "coach"], "--which 'coach': allowed: student, teacher"),
    (["RUN", "--fail-under", "avg_ood_ece=0.1"], "use --fail-over avg_ood_ece=0.1"),
    (["RUN", "--fail-under", "synth-skech.accuracy=0.5"], "did you mean synth-sketch.accuracy"),
    (["RUN", "--fail-under", "avg_ood_accuracy=55"], "fraction in [0, 1]"),
    (["RUN", "--save-predictions"], "--save-predictions writes into --output-dir"),
    (["RUN", "--recipe", "RECIPE"], "drop --recipe"),
])
def test_bad_input_exits_2_with_one_line(runner, run_dir, run_without_checkpoint, args, fragment,
                                        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./runs here: without a source there is nothing to evaluate
    swap = {"RUN": str(run_dir), "BARE": str(run_without_checkpoint),
            "RECIPE": str(ROOT / "recipes" / "quickstart.toml")}
    result = _eval(runner, *[swap.get(a, a) for a in args])
    assert result.exit_code == 2, result.stderr
    assert fragment in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- default run, roots


def test_no_source_evaluates_the_most_recent_run(runner, run_dir, monkeypatch):
    """`tracer finetune recipe.toml` then `tracer eval --ood ...` in the same folder."""
    monkeypatch.chdir(run_dir.parent.parent)  # its runs/ holds the tiny run
    result = _eval(runner, "--ood", "synth-sketch", "--which", "teacher", "--json")
    doc = _json(result)
    assert "evaluating the most recent run under runs/: runs/tiny (last.pt written" in result.stderr
    assert doc["model"]["path"] == "runs/tiny" and doc["model"]["which"] == "teacher"
    assert doc["ood"] == ["synth-sketch"]
    assert doc["datasets"]["synth-sketch"] == _saved(run_dir, "final_teacher")["synth-sketch"]


def test_most_recent_run_is_the_newest_last_pt(tmp_path):
    from tracer_cli.rundir import latest_run

    def run(name: str, mtime: int, lock: bool = True, last: bool = True) -> None:
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        if lock:
            (folder / "recipe.lock.toml").write_text("")
        if last:
            (folder / "last.pt").write_bytes(b"")
            os.utime(folder / "last.pt", (mtime, mtime))

    assert latest_run(tmp_path / "runs") is None
    run("old", 100)
    run("new", 200)
    run("no-lock", 300, lock=False)  # not a run: no recipe.lock.toml
    run("no-checkpoint", 0, last=False)  # nothing to evaluate yet
    (tmp_path / "runs" / "stray.txt").write_text("")
    assert latest_run(tmp_path / "runs") == tmp_path / "runs" / "new"
    run("tie", 200)  # equal times: the name that sorts last
    assert latest_run(tmp_path / "runs") == tmp_path / "runs" / "tie"


def test_missing_root_shows_the_command_line_form(runner, run_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TRACER_DATA", str(tmp_path / "datasets"))
    result = _eval(runner, run_dir, "--ood", "synth-sketch,imagenet-r")
    assert result.exit_code == 2, result.stderr
    assert 'set data.ood[1].root = "/path/to/imagenet-r" in the recipe' in result.stderr
    assert "--set data.ood[1].root=/path/to/imagenet-r" in result.stderr
    # ... and that form reaches the dataset the error was about
    given = tmp_path / "elsewhere"
    result = _eval(runner, run_dir, "--ood", "synth-sketch,imagenet-r",
                   "--set", f"data.ood[1].root={given}")
    assert result.exit_code == 2, result.stderr
    assert f"tried: {given} (from data.ood[1].root)" in result.stderr


def _rewrite_locked_activation(run: Path, line: str | None) -> None:
    """Replace (or, with None, drop) the ``activation`` entry of ``[lock.backbone]``."""
    text = (run / "recipe.lock.toml").read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("activation = ")]
    if line is not None:
        at = lines.index("[lock.backbone]") + 1
        lines.insert(at, line)
    (run / "recipe.lock.toml").write_text("\n".join(lines) + "\n")


def test_rebuilt_network_is_checked_against_the_lock(runner, run_dir, tmp_path):
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    assert 'activation = "GELU"' in (run / "recipe.lock.toml").read_text()
    args = ("--id", "synth-photo", "--ood", "synth-sketch", "--json")
    # Recorded and equal: no notice.
    result = _eval(runner, run, *args)
    assert result.exit_code == 0 and "does not record" not in result.stderr, result.stderr
    # Recorded and different: the weights would be read into another network.
    _rewrite_locked_activation(run, 'activation = "QuickGELU"')
    result = _eval(runner, run, *args)
    assert result.exit_code == 2
    assert "was trained with activation QuickGELU" in result.stderr
    assert "now builds GELU" in result.stderr
    # Not recorded (an older tracer's lock file): evaluated; GELU is what older tracers built
    # too, so nothing to say (rundir's test covers the QuickGELU notice).
    _rewrite_locked_activation(run, None)
    result = _eval(runner, run, *args)
    assert result.exit_code == 0 and "does not record" not in result.stderr, result.stderr
