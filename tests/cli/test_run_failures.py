"""How a run fails, or does not: non-finite losses, unreadable images, missing data, an output
directory that cannot be written. Every failure is one line and the documented exit code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tracer_cli.cli import app
from tracer_cli.engine import checkpoint
from tracer_cli.engine import step as step_mod


def _records(run_dir: Path, event: str | None = None) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if event is None or r["event"] == event]


def _nan_on_calls(monkeypatch, calls: set[int] | None) -> None:
    """Make the contrastive loss NaN on the given calls (1-based; None: on every call)."""
    real, seen = step_mod.clip_loss, {"n": 0}

    def fake(*args):
        seen["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls is None or seen["n"] in calls else loss

    monkeypatch.setattr(step_mod, "clip_loss", fake)


def _finetune(runner, recipe: Path, out: Path, *args: str):
    return runner.invoke(app, ["finetune", str(recipe), "--output-dir", str(out),
                               "--set", "run.eval=false", *args])


def test_nonfinite_loss_stops_naming_the_step_and_last_good_checkpoint(runner, tiny_recipe,
                                                                       tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, {3})
    result = _finetune(runner, tiny_recipe, tmp_path)
    assert result.exit_code == 1, result.stderr
    ckpt = tmp_path / "tiny" / "checkpoints" / "step_2.pt"
    assert (f"error: non-finite loss (nan) at step 3; the last good checkpoint is {ckpt} "
            f"(step 2); continue from it with --resume {ckpt}") in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert [(r["step"], r["loss"], r["action"]) for r in _records(tmp_path / "tiny", "nonfinite")
            ] == [(3, "nan", "stop")]


def test_nonfinite_loss_before_any_checkpoint(runner, tiny_recipe, tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, {1})
    result = _finetune(runner, tiny_recipe, tmp_path)
    assert result.exit_code == 1
    assert "at step 1; no checkpoint was written before it" in result.stderr


def test_nonfinite_loss_skipped(runner, tiny_recipe, tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, {2})
    result = _finetune(runner, tiny_recipe, tmp_path, "--set", "train.on_nonfinite=skip")
    assert result.exit_code == 0, result.stderr
    assert "non-finite loss (nan) at step 2: batch skipped" in result.stderr
    run_dir = tmp_path / "tiny"
    assert [r["step"] for r in _records(run_dir, "train")] == [1, 2, 3]
    assert [(r["step"], r["action"]) for r in _records(run_dir, "nonfinite")] == [(2, "skip")]
    # The skipped batch is consumed: 4 batches for 3 optimizer steps, i.e. the whole first epoch
    # of 64 images at batch 16, so the position is the start of epoch 1.
    assert checkpoint.load(run_dir / "last.pt")["data_position"] == {"epoch": 1, "batch": 0}


def test_skipping_gives_up_on_a_broken_run(runner, tiny_recipe, tmp_path, monkeypatch):
    _nan_on_calls(monkeypatch, None)
    result = _finetune(runner, tiny_recipe, tmp_path, "--set", "train.on_nonfinite=skip")
    assert result.exit_code == 1
    assert "the 10th non-finite loss in a row" in result.stderr


# --------------------------------------------------------------------------- unreadable data


def _image_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(("circle", "square")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((24, 24, 3)) * 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _truncated_jpeg(path: Path) -> Path:
    Image.fromarray(np.full((24, 24, 3), 120, dtype="uint8")).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _folder_recipe(tiny_recipe: Path, tmp_path: Path, root: Path, fraction: float) -> Path:
    text = tiny_recipe.read_text()
    data = (f'[data]\ntrain = {{ name = "imagefolder", root = "{root}" }}\n'
            f'id = [{{ name = "imagefolder", root = "{root}", label = "folder" }}]\n'
            f"eval_batch_size = 8\nmax_bad_fraction = {fraction}\n\n[task]")
    text = text[:text.index("[data]")] + data + text[text.index("[task]") + len("[task]"):]
    path = tmp_path / "folder.toml"
    path.write_text(text.replace("batch_size = 16", "batch_size = 4"))
    return path


def test_a_truncated_jpeg_is_skipped_counted_and_reported(runner, tiny_recipe, tmp_path):
    root = _image_folder(tmp_path / "images")
    bad = _truncated_jpeg(root / "circle" / "broken.jpg")
    recipe = _folder_recipe(tiny_recipe, tmp_path, root, 0.1)  # 1 of 13 is 7.7%
    result = runner.invoke(app, ["finetune", str(recipe), "--output-dir", str(tmp_path / "runs"),
                                 "--set", "train.steps=6"])
    assert result.exit_code == 0, result.stderr
    # PIL words it "image file is truncated" or "Truncated File Read" depending on where the
    # data ends.
    assert f"skipping unreadable training items (first: {bad} (OSError: " in result.stderr
    assert "training: 1 unreadable item(s), 7.69% of the training set, skipped" in result.stderr
    run_dir = tmp_path / "runs" / "tiny"
    events = _records(run_dir, "bad_data")
    train = [e for e in events if e["split"] == "train"]
    assert len(train[0]["new"]) == 1 and train[0]["new"][0].startswith(f"{bad} (OSError: ")
    final = [e for e in train if e.get("final")]
    assert len(final) == 1 and final[0]["distinct"] == 1 and final[0]["skipped"] >= 1
    evals = [e for e in events if e["split"] == "eval"]
    assert {(e["model"], e["dataset"], e["skipped"]) for e in evals} == {
        ("zeroshot", "folder", 1), ("student", "folder", 1), ("teacher", "folder", 1)}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["bad_data"]["distinct"] == 1
    assert summary["eval"]["models"]["student"]["folder"]["n"] == 12


def test_too_much_bad_data_stops_the_run(runner, tiny_recipe, tmp_path):
    root = _image_folder(tmp_path / "images")
    _truncated_jpeg(root / "circle" / "broken.jpg")
    (root / "square" / "text.png").write_text("not an image")
    recipe = _folder_recipe(tiny_recipe, tmp_path, root, 0.1)  # 2 of 14 is 14%
    result = runner.invoke(app, ["finetune", str(recipe), "--output-dir", str(tmp_path / "runs"),
                                 "--set", "train.steps=8", "--set", "run.eval=false"])
    assert result.exit_code == 1, result.stderr
    assert "2 of 14 training items (14.29%) could not be read, more than " \
           "data.max_bad_fraction = 0.1 allows" in result.stderr
    assert "UnidentifiedImageError" in result.stderr and "Traceback" not in result.stderr
    stop = _records(tmp_path / "runs" / "tiny", "bad_data")[-1]
    assert stop["distinct"] == 2 and stop["fraction"] == pytest.approx(2 / 14, abs=1e-6)


# --------------------------------------------------------------------------- before training


def test_missing_root_empty_split_and_unwritable_output_fail_before_training(runner, tiny_recipe,
                                                                             tmp_path):
    missing = _folder_recipe(tiny_recipe, tmp_path, tmp_path / "nowhere", 0.01)
    result = runner.invoke(app, ["finetune", str(missing), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "tiny").exists()

    (tmp_path / "index.csv").write_text("filepath,label\n")
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path),
                                 "--set", f'data.train={{name="csv", path="{tmp_path}/index.csv",'
                                          ' label_column="label"}'])
    assert result.exit_code == 2 and "has no data rows" in result.stderr
    assert not (tmp_path / "tiny").exists()

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir",
                                 str(blocker / "runs"), "--set", "run.eval=false"])
    assert result.exit_code == 2, result.stderr
    assert f"cannot write to run directory '{blocker / 'runs' / 'tiny'}'" in result.stderr
    assert "[train]" not in result.stderr
