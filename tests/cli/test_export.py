"""`tracer export` end to end on one tiny run: each format loads in the tool it is for and gives
the run's embeddings; teacher and WiSE-FT weights; the model card; bad input and bad runs.

The run is made once per module (`tracer finetune --max-steps 2`, evaluation off); the exported
models are compared against the same run loaded through tracer (`RunDir.model`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from tracer_cli.commands import model_export as export_mod
from tracer_cli import hookimpl
from tracer_cli.sdk import host as plugins_mod
from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.cli import app
from tracer_cli.errors import RunError
from tracer_cli.engine.run import pretrained_backbone
from tracer_cli.sdk.host import PluginHost
from tracer_cli.commands.finished_run import RunDir
from tracer_plugins.backbones.openclip import register_tiny_configs
from tracer_plugins.backbones.openclip_export import OpenClipFormat

TEXTS = ["a photo of a circle.", "a sketch of a red triangle on grass.", "a star."]


@pytest.fixture(scope="module")
def run_dir(make_tiny_run) -> Path:
    return make_tiny_run("export-run", "--set", "run.eval=false")


@pytest.fixture(scope="module")
def tracer_model(run_dir):
    """(backbone, student module) as tracer itself loads the run."""
    backbone, module = RunDir(run_dir).model("student")
    return backbone, module.eval()


def _export(runner, run_dir: Path, out: Path, *args: str):
    return runner.invoke(app, ["export", str(run_dir), "--output", str(out), *map(str, args)])


def _doc(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _pil_images(n: int, size: int = 40) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            for _ in range(n)]


def _tracer_embeddings(tracer_model, images: torch.Tensor, tokens: torch.Tensor):
    backbone, module = tracer_model
    with torch.no_grad():
        return backbone.encode_image(module, images), backbone.encode_text(module, tokens)


def test_open_clip_folder_loads_in_plain_open_clip_with_the_same_embeddings(
        runner, run_dir, tracer_model, tmp_path):
    out = tmp_path / "oc"
    doc = _doc(_export(runner, run_dir, out, "--format", "open_clip", "--json"))
    assert doc["output"] == str(out) and doc["format"] == "open_clip"
    assert sorted(p.name for p in out.iterdir()) == [
        "MODEL_CARD.md", "README.md", "model_card.json", "open_clip_config.json",
        "open_clip_model.safetensors"]
    # README.md: Hugging Face's front matter (no license: these weights are random-init), then
    # the card of MODEL_CARD.md.
    assert (out / "README.md").read_text() == "\n".join([
        "---", 'library_name: "open_clip"', 'pipeline_tag: "zero-shot-image-classification"',
        "tags:", '- "tracer"', '- "clip"', '- "classification"', '- "open_clip"',  # tracer once
        "---", "", ""]) + (out / "MODEL_CARD.md").read_text()
    backbone, _ = tracer_model
    config = json.loads((out / "open_clip_config.json").read_text())
    register_tiny_configs()
    # The config it was built from, with the activation spelled out (open_clip's default, GELU).
    assert config["model_cfg"] == {**open_clip.get_model_config("tracer-tiny-rn"),
                                   "quick_gelu": False}
    assert config["preprocess_cfg"] == json.loads(json.dumps(vars(backbone.preprocess_cfg)))

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    model.eval()
    pil = _pil_images(3)
    images = torch.stack([preprocess(im) for im in pil])
    assert torch.equal(images, torch.stack([backbone.preprocess_eval(im) for im in pil]))
    tokens = tokenizer(TEXTS)
    assert torch.equal(tokens, backbone.tokenize(TEXTS))
    want_img, want_txt = _tracer_embeddings(tracer_model, images, tokens)
    with torch.no_grad():
        got_img = model.encode_image(images, normalize=True)
        got_txt = model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(got_img, want_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_txt, want_txt, atol=1e-5, rtol=0)

    # By name (open_clip knows the tiny archs once tracer registers them) with pretrained=FILE.
    assert doc["model"]["by_name"] == {"arch": "tracer-tiny-rn", "kwargs": {},
                                       "weights": "open_clip_model.safetensors",
                                       "known_to_open_clip": False}
    named = open_clip.create_model("tracer-tiny-rn",
                                   pretrained=str(out / "open_clip_model.safetensors")).eval()
    with torch.no_grad():
        torch.testing.assert_close(named.encode_image(images, normalize=True), want_img,
                                   atol=1e-5, rtol=0)


def test_onnx_graphs_agree_with_pytorch_at_any_batch_size(runner, run_dir, tracer_model,
                                                          tmp_path):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "onnx"
    doc = _doc(_export(runner, run_dir, out, "--format", "onnx", "--json"))
    assert doc["details"]["opset"] >= 17
    for check in doc["details"]["verified"].values():
        assert check["checked"] and check["max_abs_diff"] <= 1e-4 and check["batch"] == 3
    assert set(doc["versions"]) >= {"onnx", "onnxruntime", "onnxscript", "torch", "open_clip"}
    image_graph, text_graph = out / "image_encoder.onnx", out / "text_encoder.onnx"
    for path, fixed, name in ((image_graph, [3, 32, 32], "image"), (text_graph, [16], "text")):
        graph = onnx.load(str(path)).graph
        dims = graph.input[0].type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == fixed
        assert graph.input[0].name == name and graph.output[0].name == f"{name}_embeds"
    image_session = ort.InferenceSession(str(image_graph), providers=["CPUExecutionProvider"])
    text_session = ort.InferenceSession(str(text_graph), providers=["CPUExecutionProvider"])
    backbone, _ = tracer_model
    for n in (1, 4):
        images = torch.stack([backbone.preprocess_eval(im) for im in _pil_images(n)])
        tokens = backbone.tokenize((TEXTS * 2)[:n])
        want_img, want_txt = _tracer_embeddings(tracer_model, images, tokens)
        got_img = image_session.run(None, {"image": images.numpy()})[0]
        got_txt = text_session.run(None, {"text": tokens.numpy()})[0]
        np.testing.assert_allclose(got_img, want_img.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got_txt, want_txt.numpy(), atol=1e-4, rtol=0)


@pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*:FutureWarning")
def test_torchscript_encoders_reproduce_embeddings(runner, run_dir, tracer_model, tmp_path):
    out = tmp_path / "ts"
    doc = _doc(_export(runner, run_dir, out, "--format", "torchscript", "--json"))
    assert doc["details"]["modules"] == {"image": "image_encoder.pt", "text": "text_encoder.pt"}
    # Frozen: each file holds its own tower, not the whole CLIP (the tiny text tower is larger).
    model_bytes = sum(t.numel() * t.element_size() for t in RunDir(run_dir).weights().values())
    assert (out / "image_encoder.pt").stat().st_size < 0.6 * model_bytes
    image_encoder = torch.jit.load(str(out / "image_encoder.pt"))
    text_encoder = torch.jit.load(str(out / "text_encoder.pt"))
    backbone, _ = tracer_model
    for n in (1, 4):
        images = torch.stack([backbone.preprocess_eval(im) for im in _pil_images(n)])
        tokens = backbone.tokenize((TEXTS * 2)[:n])
        want_img, want_txt = _tracer_embeddings(tracer_model, images, tokens)
        with torch.no_grad():
            torch.testing.assert_close(image_encoder(images), want_img, atol=1e-5, rtol=0)
            torch.testing.assert_close(text_encoder(tokens), want_txt, atol=1e-5, rtol=0)


@pytest.mark.filterwarnings(r"ignore:.*torch\.jit.*:FutureWarning")
def test_bf16_torchscript_takes_fp32_inputs_and_returns_fp32(runner, run_dir, tracer_model,
                                                            tmp_path):
    out = tmp_path / "ts16"
    doc = _doc(_export(runner, run_dir, out, "--format", "torchscript", "--precision", "bf16",
                       "--json"))
    assert doc["precision"] == "bf16"
    backbone, _ = tracer_model
    images = torch.stack([backbone.preprocess_eval(im) for im in _pil_images(2)])
    want_img, _ = _tracer_embeddings(tracer_model, images, backbone.tokenize(TEXTS))
    with torch.no_grad():
        got = torch.jit.load(str(out / "image_encoder.pt"))(images)
    assert got.dtype == torch.float32
    assert (got - want_img).abs().max() < 0.1  # bf16 keeps ~3 significant digits


def test_teacher_wise_alpha_and_precision_weights(runner, run_dir, tmp_path):
    run = RunDir(run_dir)
    student, teacher = run.weights("student"), run.weights("teacher")
    theta0 = pretrained_backbone(run.recipe).model.state_dict()

    def exported(*args: str) -> dict[str, torch.Tensor]:
        out = tmp_path / "-".join(a.strip("-").replace("/", "_") for a in args)
        _doc(_export(runner, run_dir, out, "--format", "safetensors", "--json", *args))
        return load_file(str(out / "model.safetensors"))

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    assert same(exported(), student)
    assert same(exported("--wise-alpha", "1"), student)
    assert same(exported("--wise-alpha", "0"), theta0)  # exactly θ₀, integer buffers included
    assert same(exported("--which", "teacher"), teacher)
    # A step checkpoint named relative to the run (the 2-step run's last one is step 2).
    assert same(exported("--checkpoint", "checkpoints/step_2.pt"), student)
    assert not same(teacher, student)
    half = exported("--wise-alpha", "0.5")
    key = "visual.attnpool.c_proj.weight"
    torch.testing.assert_close(half[key], torch.lerp(theta0[key], student[key], 0.5))
    fp16 = exported("--precision", "fp16")
    for name, tensor in fp16.items():
        expect = student[name].half() if student[name].is_floating_point() else student[name]
        assert tensor.dtype == expect.dtype and torch.equal(tensor, expect), name


def test_model_card_names_method_metrics_versions_and_hashes(runner, run_dir, tmp_path):
    # A copy of the run with an evaluated summary, as a run with run.eval = true leaves it.
    run = tmp_path / "evaluated"
    run.mkdir()
    shutil.copy(run_dir / "recipe.lock.toml", run)
    (run / "last.pt").symlink_to(run_dir / "last.pt")
    metrics = {"synth-photo": {"accuracy": 0.5, "ece": 0.1}, "synth-sketch": {"accuracy": 0.25},
               "synth-noisy": {"accuracy": 0.75}, "avg_ood_accuracy": 0.5, "avg_ood_ece": 0.2}
    (run / "summary.json").write_text(json.dumps({"eval": {
        "id": ["synth-photo"], "ood": ["synth-sketch", "synth-noisy"],
        "models": {"zeroshot": metrics, "student": metrics, "teacher": metrics}}}))
    out = tmp_path / "card"
    doc = _doc(_export(runner, run, out, "--format", "safetensors", "--json"))
    card = json.loads((out / "model_card.json").read_text())
    assert doc == {"output": str(out), **card, "tracked": {}}  # the run had no trackers
    assert card["method"] == ("TRACER (WMA teacher β=0.5, views crd/fd/icl/xkd, λ_sd=0.9, "
                              "λ_fn=0.05)")
    assert card["teacher"]["kind"] == "wma" and card["which"] == "student"
    assert card["eval"]["source"] == "summary.json" and card["eval"]["describes"] == "student"
    assert card["eval"]["models"]["student"]["avg_ood_accuracy"] == 0.5
    assert card["recipe"]["model"]["arch"] == "tracer-tiny-rn" and "lock" not in card["recipe"]
    assert card["run"]["step"] == 2 and card["run"]["trained_with"]["tracer"]
    assert {"tracer", "torch", "open_clip"} <= set(card["versions"])
    assert card["model"]["logit_scale"] > 0 and card["model"]["inputs"]["text"]["shape"] == [
        "batch", 16]
    [entry] = card["files"]
    weights = out / "model.safetensors"
    assert entry == {"path": "model.safetensors", "bytes": weights.stat().st_size,
                     "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert card["hub"] == {"pipeline_tag": "zero-shot-image-classification",
                           "tags": ["tracer", "clip", "classification", "safetensors"]}
    text = (out / "MODEL_CARD.md").read_text()
    assert (out / "README.md").read_text().endswith(text)
    for needle in (card["method"], entry["sha256"], "| student | 50.00 | 25.00 | 75.00 | 50.00 |",
                   "load_file("):
        assert needle in text, needle

    # A WiSE-FT mix is none of the run's evaluated models; α = 0 is its zero-shot model.
    mixed = _doc(_export(runner, run, tmp_path / "mix", "--format", "safetensors",
                         "--wise-alpha", "0.3", "--json"))
    assert mixed["eval"]["describes"] is None and mixed["wise_alpha"] == 0.3
    zero = _doc(_export(runner, run, tmp_path / "zero", "--format", "safetensors",
                        "--wise-alpha", "0", "--json"))
    assert zero["eval"]["describes"] == "zeroshot"


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_missing_or_truncated_checkpoint_exits_2_and_writes_nothing(runner, run_dir, tmp_path,
                                                                    damage):
    run = tmp_path / "broken"
    run.mkdir()
    shutil.copy(run_dir / "recipe.lock.toml", run)
    if damage == "truncated":
        with open(run_dir / "last.pt", "rb") as src:
            (run / "last.pt").write_bytes(src.read(1 << 20))
    result = _export(runner, run, tmp_path / "out", "--format", "open_clip")
    assert result.exit_code == 2, result.stderr
    assert ("no checkpoint" if damage == "missing" else "truncated") in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert _leftovers(tmp_path, "out") == []


def test_failure_while_writing_leaves_no_folder(run_dir, tmp_path, monkeypatch):
    def broken_writer(folder, subject, reporter):
        (folder / "model.safetensors").write_bytes(b"half")
        raise RunError("disk full")

    monkeypatch.setitem(export_mod.WRITERS, "safetensors", broken_writer)
    request = export_mod.ExportRequest(run_dir=run_dir, format="safetensors",
                                       output=tmp_path / "out")
    with pytest.raises(RunError, match="disk full"):
        export_mod.export(request)
    assert _leftovers(tmp_path, "out") == []


def test_existing_output_needs_overwrite(runner, run_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    result = _export(runner, run_dir, out, "--format", "safetensors")
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (out / "old.txt").read_text() == "keep me"
    _doc(_export(runner, run_dir, out, "--format", "safetensors", "--overwrite", "--json"))
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    umask = os.umask(0)
    os.umask(umask)
    # Built in a private temporary folder, published with the modes any new folder gets.
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (out / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert _leftovers(tmp_path, "taken") == ["taken"]


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite"], "allowed: open_clip, safetensors, onnx, torchscript"),
    (["--format", "onxx"], "did you mean 'onnx'"),
    (["--format", "onnx", "--precision", "fp16"], "fp32 graphs only"),
    (["--format", "safetensors", "--precision", "fp8"], "allowed: fp32, fp16, bf16"),
    (["--format", "safetensors", "--wise-alpha", "1.5"], "outside [0, 1]"),
    (["--format", "safetensors", "--which", "ema"], "allowed: student, teacher"),
])
def test_usage_errors_exit_2_before_loading(runner, run_dir, tmp_path, args, message):
    result = _export(runner, run_dir, tmp_path / "out", *args)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_output_may_not_replace_the_run_and_teacherless_runs_refuse_teacher(runner, run_dir,
                                                                            tmp_path):
    result = _export(runner, run_dir, run_dir, "--format", "safetensors", "--overwrite")
    assert result.exit_code == 2 and "run directory itself" in result.stderr
    assert (run_dir / "last.pt").is_file()

    run = tmp_path / "flyp"
    run.mkdir()
    shutil.copy(run_dir / "recipe.lock.toml", run)
    state = RunDir(run_dir).checkpoint
    torch.save({"state_dict": state["state_dict"], "step": 2,
                "teacher": {"kind": "none", "module": None}}, run / "last.pt")
    result = _export(runner, run, tmp_path / "out", "--format", "safetensors", "--which",
                     "teacher")
    assert result.exit_code == 2 and "no teacher weights" in result.stderr


@pytest.mark.slow  # about 6-13 s on 2 shared cores (RN50 built three times, 400 MB written)
def test_rn50_at_64px_loads_by_name_with_forced_image_size(runner, tmp_path, tiny_recipe):
    """A built-in open_clip arch (random init, small images so it runs on CPU): the folder loads
    with local-dir, and by name with pretrained=FILE plus the image size the card names."""
    recipe = recipe_mod.load(tiny_recipe, ["model.arch=RN50", "model.image_size=64",
                                           "teacher.kind=none", "distill.lambda_sd=0",
                                           "distill.lambda_fn=0"])
    run = tmp_path / "rn50"
    run.mkdir()
    rundir.write_recipe_lock(run, recipe_mod.lock_text(recipe, {"tracer": "test"}))
    backbone = pretrained_backbone(recipe)
    torch.save({"state_dict": backbone.model.state_dict(), "step": 0,
                "teacher": {"kind": "none", "module": None}}, run / "last.pt")
    out = tmp_path / "rn50-oc"
    doc = _doc(_export(runner, run, out, "--format", "open_clip", "--json"))
    assert doc["method"] == "FLYP"
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["model_cfg"]["vision_cfg"]["image_size"] == 64
    assert config["preprocess_cfg"]["size"] == 64
    by_name = doc["model"]["by_name"]
    assert by_name["known_to_open_clip"] and by_name["kwargs"] == {"force_image_size": 64}
    assert "force_image_size=64" in doc["load"]["by_name"]

    module = backbone.model.eval()
    images = torch.stack([backbone.preprocess_eval(im) for im in _pil_images(2, size=80)])
    with torch.no_grad():
        want = module.encode_image(images, normalize=True)
    local, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    named, _, _ = open_clip.create_model_and_transforms(
        "RN50", pretrained=str(out / "open_clip_model.safetensors"), **by_name["kwargs"])
    assert torch.equal(torch.stack([preprocess(im) for im in _pil_images(2, size=80)]), images)
    for model in (local.eval(), named.eval()):
        with torch.no_grad():
            torch.testing.assert_close(model.encode_image(images, normalize=True), want,
                                       atol=1e-5, rtol=0)


class _PlainBackbonePlugin:
    """A third-party backbone that declares no export format of its own."""

    @staticmethod
    @hookimpl
    def tracer_register_backbones(registry):
        from tracer_plugins.backbones.openclip import make_backbone

        registry.add("plain-clip", lambda options: make_backbone(options))


def test_own_format_of_another_backbone_exits_2_before_loading(runner, run_dir, tmp_path,
                                                               monkeypatch):
    """--format open_clip is the openclip backbone's capability (its factory's export_formats):
    a run whose backbone does not declare it is refused, naming the formats it can use."""
    monkeypatch.setattr(plugins_mod, "_HOST", PluginHost(plugins=(_PlainBackbonePlugin(),)))
    run = tmp_path / "plain"
    run.mkdir()
    lock = (run_dir / "recipe.lock.toml").read_text()
    assert 'backbone = "openclip"' in lock
    (run / "recipe.lock.toml").write_text(lock.replace('backbone = "openclip"',
                                                       'backbone = "plain-clip"'))
    result = _export(runner, run, tmp_path / "out", "--format", "open_clip")
    assert result.exit_code == 2, result.stderr
    assert ("--format open_clip needs a backbone that writes it (openclip); this run uses "
            "'plain-clip' (use --format safetensors, onnx or torchscript)") in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
    assert export_mod.formats() == ("open_clip", "safetensors", "onnx", "torchscript")


def test_the_open_clip_format_states_the_license_of_tracers_own_weights():
    def license_of(pretrained: str):
        backbone = SimpleNamespace(describe=lambda: {"pretrained": pretrained})
        return OpenClipFormat().license(SimpleNamespace(backbone=backbone))

    assert license_of("embedded") == "mit"
    assert license_of("openai") is None  # the publisher's terms: not tracer's to state
