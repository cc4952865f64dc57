"""Shared fixtures: a tiny recipe that runs the real engine in seconds, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tracer_cli.sdk.host import reset_host

ROOT = Path(__file__).resolve().parents[1]

TINY_RECIPE = """
[run]
name = "tiny"
seed = 0
log_every = 1
device = "cpu"

[model]
backbone = "openclip"
arch = "tracer-tiny-rn"
pretrained = "none"
freeze_bn_stats = true

[data]
train = { name = "synth-photo-narrow", size = 64 }
id = [{ name = "synth-photo", size = 48 }]
ood = [{ name = "synth-sketch", size = 48 }, { name = "synth-noisy", size = 48 }]
eval_batch_size = 48

[task]
name = "classification"
train_templates = ["a photo of a {}."]

[train]
steps = 3
batch_size = 16
lr = 1e-4
warmup_steps = 1
checkpoint_every = 2

[teacher]
kind = "wma"

[distill]
lambda_sd = 0.9
crd = 1.0
fd = 2000.0
icl = 1.0
xkd = 1.0
lambda_fn = 0.05
"""


@pytest.fixture
def tiny_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.fixture(scope="session")
def make_tiny_run(tmp_path_factory):
    """``make(name, *finetune_args) -> run dir``: a 2-step finetune of TINY_RECIPE, for modules
    that read one run in many tests (use it from a module-scoped fixture)."""
    from tracer_cli.cli import app

    def make(name: str, *args: str) -> Path:
        base = tmp_path_factory.mktemp(name)
        recipe = base / "tiny.toml"
        recipe.write_text(TINY_RECIPE)
        result = CliRunner().invoke(app, ["finetune", str(recipe), "--output-dir",
                                          str(base / "runs"), "--max-steps", "2", *args])
        assert result.exit_code == 0, result.stderr
        return base / "runs" / "tiny"

    return make


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(autouse=True)
def _fresh_plugin_host(monkeypatch: pytest.MonkeyPatch):
    """Each test sees the entry points as they are now (tests install and block plugins)."""
    monkeypatch.setenv("CI", "1")
    reset_host()
    yield
    reset_host()


# Floats from two different computations (other batch or matrix shapes, another library's code
# path) agree to float32 rounding only: the order of sums depends on the CPU's kernels (AVX-512,
# AVX2, plain). These tolerances are a few hundred float32 ulps at the logits' scale (|z| <= ~20).
LOGIT_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def assert_clear_of_ties(logits, margin: float = 1e-4) -> None:
    """Every row's top logit clears its runner-up by more than ``margin`` (far above float32
    rounding), so no other computation of the same logits can flip a prediction: accuracies
    from two computations are then equal exactly. A row closer to a tie fails the test instead
    of letting it pass by luck on one CPU."""
    import torch

    top2 = torch.as_tensor(logits).topk(2, dim=1).values
    close = (top2[:, 0] - top2[:, 1] <= margin).nonzero().flatten().tolist()
    assert not close, f"rows {close} are within {margin} of a tie: choose other test data"


def assert_same_predictions(actual, expected, margin: float = 1e-4) -> None:
    """Top-1 predictions of two logit tensors from different computations are the same, and
    ``expected`` is clear of ties (:func:`assert_clear_of_ties`)."""
    import torch

    assert_clear_of_ties(expected, margin)
    predicted = torch.as_tensor(actual).argmax(dim=1)
    assert torch.equal(predicted, torch.as_tensor(expected).argmax(dim=1))
