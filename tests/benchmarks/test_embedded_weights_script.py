"""benchmarks/embedded_weights.py builds through the engine's own build (build.train_weights):
the packed file it writes, with its SHA-256 sidecar and lock file, unpacks to exactly what the
same build keeps in the cache (``--cache``). A two-step pretraining recipe stands in for the
packaged one. Packing a finished run (``--from``) is tested with the shipped weights
(tests/plugins/test_embedded.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tests.plugins.test_embedded import TINY_PRETRAIN
from tracer_cli import rundir
from tracer_cli.rundir import checksums
from tracer_plugins.backbones import embedded

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "embedded_weights.py"


@pytest.fixture()
def script(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("embedded_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(embedded, "pretrain_recipe_text", lambda: TINY_PRETRAIN)
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))  # the script sets it
    return module


def test_the_packed_file_is_what_the_build_keeps(script, tmp_path):
    from safetensors.torch import load_file

    threads = str(torch.get_num_threads())
    assert script.main(["--out", str(tmp_path / "weights"), "--threads", threads]) == 0
    cached = embedded.embedded_path("tracer-tiny-rn")
    assert not cached.exists()  # without --cache the build's weights stay in a temporary folder
    path = tmp_path / "weights" / embedded.shipped_path("tracer-tiny-rn").name
    sidecar = rundir.sha_path(path)
    assert sidecar.read_text() == f"{checksums.file_sha256(path)}  {path.name}\n"
    lock = path.with_name(path.name.removesuffix(".safetensors") + ".lock.toml")
    assert sidecar.stat().st_mode == lock.stat().st_mode  # a plain file's, readable by all
    assert lock.read_text().count("steps = 2") == 1
    assert not list(path.parent.glob("*.partial"))

    assert script.main(["--cache", "--threads", threads]) == 0
    assert checksums.verify(cached).ok and cached.with_suffix(".lock.toml").is_file()
    kept = torch.load(cached, weights_only=True)["state_dict"]
    unpacked = embedded.unpack(load_file(str(path)))
    assert unpacked.keys() == kept.keys()
    # Bit-exact on purpose: both sides are unpack(pack(weights)) of the same build repeated (same
    # seed, threads and machine): one computation, twice, as the shipped weights' checksum needs.
    for key in kept:
        assert torch.equal(unpacked[key], kept[key]), key
