"""The real-weight recipes: a fast, clear failure without weights or with an activation the
weights were not trained with; the RN50 path on tiny data; a tag's QuickGELU carried from the
run through every export format to the network open_clip rebuilds from the export folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU
from PIL import Image

from tests.hub import offline_hub, weights_path
from tracer_cli.cli import app
from tracer_cli.recipe import load
from tracer_cli.rundir import read_recipe_lock
from tracer_plugins.backbones.openclip import (make_backbone, register_tiny_configs,
                                               visual_text_projections)

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
    model = load(RECIPES / recipe).model.options
    # The recipe's own weights and arch (ViT-L-14 laion400m_e31, ...), resolved by open_clip.
    assert line.startswith(f"error: pretrained weights '{model['pretrained']}'")
    assert f"for '{model['arch']}'" in line
    for hint in ("model.pretrained", "local-dir:", "HF_HUB_OFFLINE=1"):
        assert hint in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("recipe, value", [("vitb16_imagenet.toml", "false"),
                                           ("rn50_flowers.toml", "false"),
                                           ("vitl14_imagenet.toml", "true")])
def test_an_activation_the_weights_were_not_trained_with_exits_2(runner, offline, tmp_path,
                                                                 recipe, value):
    """Before any weights are looked for: the recipe's choice, the weights' and the fix."""
    result = runner.invoke(app, ["finetune", str(RECIPES / recipe), "--output-dir",
                                 str(tmp_path / "runs"), "--set", f"model.quick_gelu={value}"])
    assert result.exit_code == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    model = load(RECIPES / recipe).model.options
    trained = "GELU" if value == "true" else "QuickGELU"
    assert line == (f"error: recipe key 'model.quick_gelu': {value} contradicts the weights: "
                    f"open_clip's pretrained config says the '{model['pretrained']}' weights of "
                    f"'{model['arch']}' were trained with {trained}; remove model.quick_gelu "
                    "(tracer builds what the weights need)")
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


@pytest.fixture
def tiny_openai(monkeypatch, tmp_path) -> Path:
    """An open_clip tag 'openai' for the tiny ViT, trained with QuickGELU like OpenAI's (its
    pretrained config is ViT-B-16's 'openai' one, on another hub id), with random weights in a
    private offline Hugging Face cache: the whole tag path of a real model, at tiny size."""
    register_tiny_configs()
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    cfg = {**open_clip.get_pretrained_cfg("ViT-B-16", "openai"), "url": "",
           "hf_hub": "tracer-tests/tiny-vit.openai/"}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tracer-tiny-vit", {"openai": cfg})
    torch.manual_seed(0)
    model = open_clip.create_model("tracer-tiny-vit", force_quick_gelu=True)
    torch.save(model.state_dict(), weights_path(cache, "tracer-tiny-vit", "openai"))
    return tmp_path


def _quick_gelus(module: torch.nn.Module) -> int:
    return sum(isinstance(m, QuickGELU) for m in module.modules())


def _export(runner, run_dir: Path, out: Path, fmt: str) -> dict:
    result = runner.invoke(app, ["export", str(run_dir), "--format", fmt, "--output", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.numerics
def test_a_tags_quick_gelu_survives_training_and_every_export(runner, tiny_openai, tiny_recipe):
    """The issue's reproduction at tiny size: finetune from the 'openai' tag, export, and
    rebuild in plain open_clip from the folder: QuickGELU in the lock, the cards and the config,
    the same embeddings as the run's own network (TorchScript traces it), and not those of the
    GELU network the arch name alone would build."""
    runs = tiny_openai / "runs"
    result = runner.invoke(app, [
        "finetune", str(tiny_recipe), "--output-dir", str(runs), "--max-steps", "1",
        "--set", "model.arch=tracer-tiny-vit", "--set", "model.pretrained=openai",
        "--set", "model.freeze_bn_stats=false", "--set", "run.eval=false"])
    assert result.exit_code == 0, result.stderr
    run_dir = runs / "tiny"
    assert read_recipe_lock(run_dir)[1]["backbone"]["activation"] == "QuickGELU"

    folder = tiny_openai / "oc"
    doc = _export(runner, run_dir, folder, "open_clip")
    assert doc["model"]["activation"] == "QuickGELU" and doc["model"]["model_cfg"]["quick_gelu"]
    assert doc["model"]["by_name"]["kwargs"] == {"force_quick_gelu": True}
    assert "force_quick_gelu=True" in doc["load"]["by_name"]
    assert "built with QuickGELU" in (folder / "MODEL_CARD.md").read_text()
    config = json.loads((folder / "open_clip_config.json").read_text())
    assert config["model_cfg"]["quick_gelu"] is True
    rebuilt = open_clip.create_model(f"local-dir:{folder}").eval()
    plain = open_clip.create_model("tracer-tiny-vit",
                                   pretrained=str(folder / "open_clip_model.safetensors")).eval()
    assert _quick_gelus(rebuilt) > 0 and _quick_gelus(plain) == 0

    # The card's model section is the same for every format; ONNX traces the same module as
    # TorchScript (tests/cli/test_export.py checks both against it).
    card = _export(runner, run_dir, tiny_openai / "torchscript", "torchscript")["model"]
    assert card["activation"] == "QuickGELU" and card["model_cfg"]["quick_gelu"] is True
    traced = torch.jit.load(str(tiny_openai / "torchscript" / "image_encoder.pt"))
    size = config["preprocess_cfg"]["size"]
    images = torch.randn(4, 3, *((size, size) if isinstance(size, int) else size),
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = traced(images)
        torch.testing.assert_close(rebuilt.encode_image(images, normalize=True), want,
                                   atol=1e-5, rtol=0)
        gelu_gap = (plain.encode_image(images, normalize=True) - want).abs().max()
    assert gelu_gap > 1e-3  # the tolerance above tells the two activations apart
