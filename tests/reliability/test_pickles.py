"""A malicious pickle is refused on every path that loads weights, in one line, and never run.

Each file holds an object whose unpickling would create a marker file (the stand-in for running
arbitrary code). Every command that reads weights must exit 2 with one line naming the file as
"not a safe/readable weights file" (never torch's advice to retry with ``weights_only=False``),
and the marker must never appear.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import open_clip
import pytest
import torch

from tests.conftest import TINY_RECIPE
from tracer_cli.cli import app
from tracer_plugins.backbones import embedded
from tracer_plugins.backbones.openclip import register_tiny_configs


class _Payload:
    """Unpickling it calls ``open(marker, "w")``: proof that the file was loaded unsafely."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


def _evil(tmp_path: Path, marker: Path, kind: str) -> Path:
    """A weights file carrying the payload: torch.save's zip format, or a bare pickle of
    protocol 2 (the global is the first thing the loader meets) or 4 (framed)."""
    path = tmp_path / f"evil-{kind}.pt"
    payload = {"state_dict": {"visual.conv1.weight": _Payload(marker)}}
    if kind == "torch-zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(kind[-1])))
    return path


def test_the_payload_does_run_when_loaded_unsafely(tmp_path, marker):
    """The proof the other tests rely on: loading without weights_only creates the marker."""
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def _run_dir(tmp_path: Path, weights: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.lock.toml").write_text(TINY_RECIPE)
    (run / "last.pt").write_bytes(weights.read_bytes())
    return run


def _local_dir(tmp_path: Path, weights: Path) -> Path:
    register_tiny_configs()
    folder = tmp_path / "local"
    folder.mkdir()
    config = {"model_cfg": open_clip.get_model_config("tracer-tiny-rn"), "preprocess_cfg": {}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    (folder / "open_clip_pytorch_model.bin").write_bytes(weights.read_bytes())
    return folder


def _args(path: str, tmp_path: Path, evil: Path) -> tuple[list[str], Path]:
    """The command line for one loading path, and the file its error must name."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    out = ["--output-dir", str(tmp_path / "runs")]
    if path == "eval-run":
        run = _run_dir(tmp_path, evil)
        return ["eval", str(run)], run / "last.pt"
    if path == "eval-checkpoint":
        return ["eval", "--checkpoint", str(evil), "--recipe", str(recipe)], evil
    if path == "eval-model":
        return ["eval", "--model", f"openclip:tracer-tiny-rn:{evil}", "--id", "synth-photo"], evil
    if path == "export":
        run = _run_dir(tmp_path, evil)
        return ["export", str(run), "--format", "safetensors", "--output",
                str(tmp_path / "export")], run / "last.pt"
    if path == "finetune-pretrained":
        return ["finetune", str(recipe), "--set", f"model.pretrained={evil}", *out], evil
    if path == "finetune-resume":
        return ["finetune", str(recipe), "--resume", str(evil), *out], evil
    if path == "local-dir":
        folder = _local_dir(tmp_path, evil)
        return ["finetune", str(recipe), "--set", f"model.arch=local-dir:{folder}", *out], \
            folder / "open_clip_pytorch_model.bin"
    raise AssertionError(path)


@pytest.mark.parametrize("path, kind", [
    *[(path, "torch-zip") for path in ("eval-run", "eval-checkpoint", "eval-model", "export",
                                       "finetune-pretrained", "finetune-resume", "local-dir")],
    # The two loaders (tracer's checkpoint.load, open_clip's) with bare pickles as well.
    *[(path, kind) for path in ("eval-checkpoint", "finetune-pretrained")
      for kind in ("pickle-2", "pickle-4")],
])
def test_refused_on_every_loading_path(path, kind, runner, tmp_path, marker):
    args, named = _args(path, tmp_path, _evil(tmp_path, marker, kind))
    _assert_refused(runner.invoke(app, args), named, marker, tmp_path)


def test_refused_in_the_embedded_weights_cache(runner, tmp_path, marker, monkeypatch):
    """A file planted in the cache (no checksum beside it) goes through the same safe loader."""
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    cached = embedded.embedded_path("tracer-tiny-rn")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_evil(tmp_path, marker, "torch-zip").read_bytes())
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    result = runner.invoke(app, ["finetune", str(recipe), "--set", "model.pretrained=embedded",
                                 "--output-dir", str(tmp_path / "runs")])
    _assert_refused(result, cached, marker, tmp_path)
    assert "delete it" in result.stderr


def _assert_refused(result, named: Path, marker: Path, tmp_path: Path) -> None:
    assert not marker.exists(), "the pickle's payload ran"
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith("error:")
    errors = [line for line in lines if "error" in line.lower() or "warning" in line.lower()]
    assert errors == [lines[-1]], result.stderr
    assert f"not a safe/readable weights file: {named}" in lines[-1] or \
        f"'{named}' is not a safe/readable weights file" in lines[-1], lines[-1]
    assert "weights_only" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "export").exists()
