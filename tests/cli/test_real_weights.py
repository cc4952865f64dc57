"""The real-weight recipes: a fast, clear failure without weights; the RN50 path on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tracer_cli.cli import app
from tracer_cli.recipe import load
from tracer_plugins.backbones.openclip import make_backbone, visual_text_projections

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache, whatever the machine has."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


@pytest.mark.parametrize("recipe", ["rn50_flowers.toml", "vitb16_imagenet.toml",
                                    "vitl14_imagenet.toml", "vitb16_iwildcam.toml"])
def test_missing_weights_fail_fast_with_instructions(runner, offline, tmp_path, recipe):
    result = runner.invoke(app, ["finetune", str(RECIPES / recipe), "--output-dir",
                                 str(tmp_path / "runs")])
    assert result.exit_code == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: pretrained weights 'openai'")
    arch = load(RECIPES / recipe).model.options["arch"]
    assert f"for '{arch}'" in line  # the recipe's own arch (ViT-L-14, ...), resolved by open_clip
    for hint in ("model.pretrained", "local-dir:", "HF_HUB_OFFLINE=1"):
        assert hint in line
    assert not (tmp_path / "runs").exists()


def _image_folder(root: Path, classes=("daisy", "rose", "tulip"), per_class=4) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


@pytest.mark.slow
def test_rn50_recipe_runs_two_steps_from_random_init(runner, tmp_path):
    root = _image_folder(tmp_path / "flowers")
    train = f'{{ name = "imagefolder", root = "{root}" }}'
    result = runner.invoke(app, [
        "finetune", str(RECIPES / "rn50_flowers.toml"), "--output-dir", str(tmp_path / "runs"),
        "--max-steps", "2", "--json",
        "--set", "model.pretrained=none", "--set", "model.image_size=64",
        "--set", f"data.train={train}", "--set", f"data.id=[{train}]",
        "--set", f'data.retain=[{{ name = "imagefolder", root = "{root}", label = "kept" }}]',
        "--set", "train.batch_size=4", "--set", "data.num_workers=0",
        "--set", "data.eval_batch_size=6", "--set", "run.device=cpu"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["eval"]["models"]["student"]["imagefolder"]["n"] == 12
    assert doc["eval"]["retain"] == ["kept"]
    assert doc["eval"]["models"]["student"]["retain_change"] is not None
    records = [json.loads(l) for l in (tmp_path / "runs/rn50_flowers/metrics.jsonl").open()]
    last = [r for r in records if r["event"] == "train"][-1]
    # The cross-F-norm regularizer went through the ResNet projection (attnpool.c_proj).
    assert last["step"] == 2 and last["reg_cross_fnorm"] > 0 and "loss_sd" in last


def test_resnet_and_vit_projections():
    rn = make_backbone({"arch": "tracer-tiny-rn"}).model
    v, t = visual_text_projections(rn)
    dim = rn.text_projection.shape[1]  # the embedding width (64 for tracer-tiny-rn)
    assert v.shape == (rn.visual.attnpool.c_proj.in_features, dim) and t.shape == (dim, dim)
    assert v.shape[0] != dim  # the projection's input is the tower's width, not the embedding
    assert v.data_ptr() == rn.visual.attnpool.c_proj.weight.data_ptr()  # a view, not a copy
    vit = make_backbone({"arch": "tracer-tiny-vit"}).model
    v, t = visual_text_projections(vit)
    assert v is vit.visual.proj and t is vit.text_projection
    assert visual_text_projections(torch.nn.Linear(2, 2)) is None
