"""Pieces of :mod:`tracer_cli.commands.model_export` that need no run: method names, request
checks, hashing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tracer_cli.commands import model_export as export
from tracer_cli import recipe as recipe_mod
from tracer_cli.errors import UsageError


@pytest.mark.parametrize("sets, name", [
    ([], "TRACER (WMA teacher β=0.5, views crd/fd/icl/xkd, λ_sd=0.9, λ_fn=0.05)"),
    (["teacher.beta=2", "distill.lambda_fn=0", "distill.fd=0"],
     "TRACER (WMA teacher β=2, views crd/icl/xkd, λ_sd=0.9)"),
    (["teacher.kind=ema", "distill.lambda_orth=0.1", "teacher.update_every=0"],
     "CaRot (EMA teacher m=0.05→0.9 every 500 steps, views crd/fd/icl/xkd, λ_sd=0.9, "
     "λ_fn=0.05, λ_orth=0.1)"),
    (["teacher.kind=static", "distill.crd=0", "distill.fd=0", "distill.icl=0", "distill.xkd=0"],
     "static-teacher distillation (static teacher θ₀, soft-label distillation, λ_sd=0.9, "
     "λ_fn=0.05)"),
    (["teacher.kind=none", "distill.lambda_sd=0", "distill.lambda_fn=0"], "FLYP"),
    (["distill.lambda_sd=0", "distill.lambda_fn=0"], "FLYP (WMA teacher tracked, not distilled)"),
    (["teacher.kind=none", "distill.lambda_sd=0"], "FLYP + λ_fn=0.05"),
])
def test_method_name(tiny_recipe, sets, name):
    assert export.method_name(recipe_mod.load(tiny_recipe, sets)) == name


def test_check_request_fills_defaults_and_rejects_bad_values(tmp_path):
    req = export.check_request(export.ExportRequest(run_dir=tmp_path / "run", format="onnx",
                                                    output=tmp_path / "out"))
    assert req.which == "student" and req.precision == "fp32"
    with pytest.raises(UsageError, match="did you mean 'torchscript'"):
        export.check_request(export.ExportRequest(run_dir=tmp_path, format="torchscrpt",
                                                  output=tmp_path / "out"))
    with pytest.raises(UsageError, match="is a file"):
        (tmp_path / "file").write_text("x")
        export.check_request(export.ExportRequest(run_dir=tmp_path / "run", format="onnx",
                                                  output=tmp_path / "file"))


def test_file_entries_skip_the_card_and_hash_everything_else(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"\x00" * 3_000_000)
    (tmp_path / "MODEL_CARD.md").write_text("card")
    entries = export.file_entries(tmp_path)
    assert entries == [{"path": "sub/w.bin", "bytes": 3_000_000,
                        "sha256": hashlib.sha256(b"\x00" * 3_000_000).hexdigest()}]


def test_a_safetensors_export_is_the_same_file_every_time(tmp_path):
    # safetensors writes its metadata in hash order; the export sorts it, so the same tensors
    # give the same bytes (and the same SHA-256 in the model card) at every export.
    import torch
    from safetensors.torch import load_file, safe_open

    state = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}
    meta = {"format": "pt", "producer": "tracer test", "dtype": "float32", "ü": "ö"}
    digests = set()
    for i in range(8):
        path = tmp_path / f"m{i}.safetensors"
        export._save_tensors(state, path, meta)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    loaded = load_file(str(path))
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)  # stored, not computed
    with safe_open(str(path), "pt") as fh:
        assert fh.metadata() == meta
