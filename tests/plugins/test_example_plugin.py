"""Entry-point discovery of third-party plugins.

The slow test pip-installs ``examples/tracer-plugin-example`` into the running interpreter's
environment and lists plugins from a fresh process, exactly as ``tracer plugins list`` would.
The fast tests fake installed distributions with ``*.dist-info`` folders on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tracer_cli.sdk.host import DISABLE_ENV, PluginError, PluginHost

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "tracer-plugin-example"
DIST = "tracer-plugin-example"

_LIST_AND_BUILD = textwrap.dedent("""
    import json
    from tracer_cli.sdk.contracts import task_metrics
    from tracer_cli.sdk.host import PluginHost
    host = PluginHost()
    bundle = host.datasets.get("example-stripes").factory(
        {"_path": "data.train", "size": 7, "image_size": 16}, "train", None)
    item = bundle.dataset[5]
    task = host.tasks.get("example-balanced").factory({})
    print(json.dumps({"listing": host.listing(), "len": len(bundle.dataset),
                      "classnames": list(bundle.classnames), "templates": list(bundle.templates),
                      "shape": list(item["image"].shape), "label": item["label"],
                      "primary": task_metrics(task).primary}))
""")

# A 2-step run of the example task on the example dataset, through the installed `tracer` command.
_TASK_RECIPE = """
[run]
name = "balanced"
device = "cpu"
log_every = 1
loggers = ["example-csv"]

[loggers.example-csv]
file = "numbers.csv"

[model]
arch = "tracer-tiny-rn"
pretrained = "none"

[data]
train = { name = "example-stripes", size = 16 }
id = [{ name = "example-stripes", size = 12 }]
ood = [{ name = "example-stripes", label = "stripes-small", size = 12, image_size = 16 }]
eval_batch_size = 12

[task]
name = "example-balanced"

[train]
method = "flyp"
steps = 2
batch_size = 8
"""


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True,
                   text=True, timeout=300)


@pytest.fixture
def example_installed(tmp_path):
    """The example package installed for the test; removed again unless it was there before."""
    was_installed = _installed_version(DIST) is not None
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = shutil.copytree(EXAMPLE_DIR, tmp_path / "src",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    # Installing over an existing copy is a plain reinstall, so repeated runs behave the same.
    _pip("install", "--no-deps", "--no-build-isolation", "-q", str(source))
    yield
    if not was_installed:
        _pip("uninstall", "-y", "-q", DIST)


@pytest.mark.slow
def test_example_package_is_discovered_through_entry_points(example_installed):
    env = {k: v for k, v in os.environ.items() if k != DISABLE_ENV}
    done = subprocess.run([sys.executable, "-c", _LIST_AND_BUILD], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    entry = {e["name"]: e for e in out["listing"]["datasets"]}["example-stripes"]
    assert entry == {"name": "example-stripes", "plugin": "example", "distribution": DIST,
                     "version": "0.1.0"}
    # Built-in plugins come through the same group and still load alongside.
    assert any(e["name"] == "imagefolder" for e in out["listing"]["datasets"])
    assert out["len"] == 7 and out["shape"] == [3, 16, 16] and out["label"] == 2
    assert out["classnames"] == ["horizontal stripes", "vertical stripes", "checkerboard"]
    assert out["templates"] == ["a picture of {}."]
    task = {e["name"]: e for e in out["listing"]["tasks"]}["example-balanced"]
    assert task == {"name": "example-balanced", "plugin": "example", "distribution": DIST,
                    "version": "0.1.0"}
    assert out["primary"] == "balanced_accuracy"


@pytest.mark.slow
def test_example_task_runs_through_the_cli(example_installed, tmp_path):
    recipe = tmp_path / "balanced.toml"
    recipe.write_text(_TASK_RECIPE)
    env = {k: v for k, v in os.environ.items() if k != DISABLE_ENV}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-m", "tracer_cli", "finetune", str(recipe),
                           "--output-dir", str(tmp_path / "runs"), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    models = json.loads(done.stdout)["eval"]["models"]
    student = models["student"]
    assert 0.0 <= student["example-stripes"]["balanced_accuracy"] <= 1.0
    assert student["avg_ood_balanced_accuracy"] == \
        student["stripes-small"]["balanced_accuracy"]
    assert "balanced accuracy (%)" in done.stderr  # the finetune table's headline metric

    # The example's logger got the numbers of every metrics.jsonl train record and every metric.
    run_dir = tmp_path / "runs" / "balanced"
    with open(run_dir / "numbers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {(int(r["step"]), r["key"]): float(r["value"]) for r in rows if r["event"] == "train"}
    assert train == {(r["step"], k): v for r in records if r["event"] == "train"
                     for k, v in r.items() if k not in ("event", "step", "time")}
    final = json.loads((run_dir / "eval" / "final_student.json").read_text())
    evals = {r["key"]: float(r["value"]) for r in rows if r["event"] == "eval"}
    assert evals["final_student/stripes-small/balanced_accuracy"] == \
        pytest.approx(final["stripes-small"]["balanced_accuracy"])
    assert [(r["event"], r["value"]) for r in rows if r["event"] in ("start", "finish")] == \
        [("start", "balanced"), ("finish", "completed")]


# --------------------------------------------------------------------------- fake distributions


def _fake_distribution(site: Path, dist: str, version: str, entry_name: str, module: str,
                       dataset: str) -> None:
    """A module registering ``dataset`` and a dist-info that exposes it in the ``tracer`` group."""
    (site / f"{module}.py").write_text(textwrap.dedent(f"""
        from tracer_cli import hookimpl

        def make(spec, split, transform):
            raise NotImplementedError("discovery test only")

        @hookimpl
        def tracer_register_datasets(registry):
            registry.add({dataset!r}, make)
    """))
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[tracer]\n{entry_name} = {module}\n")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """An extra sys.path folder for ``tracer_test_*`` modules, forgotten again after the test."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    yield site
    for name in [n for n in sys.modules if n.startswith("tracer_test_")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def test_fake_distribution_is_discovered(fake_site):
    _fake_distribution(fake_site, "fake-tracer-plugin", "1.2.3", "fakeplug",
                       "tracer_test_fakeplug", "fake-data")
    importlib.invalidate_caches()  # the finder may have cached the folder before it was filled
    host = PluginHost()
    entry = host.datasets.get("fake-data")
    assert entry.as_dict() == {"name": "fake-data", "plugin": "fakeplug",
                               "distribution": "fake-tracer-plugin", "version": "1.2.3"}
    assert "imagefolder" in host.datasets  # built-ins still load alongside


def test_fake_distribution_can_be_disabled(fake_site, monkeypatch):
    _fake_distribution(fake_site, "fake-tracer-plugin", "1.2.3", "fakeplug",
                       "tracer_test_fakeplug_off", "fake-data")
    importlib.invalidate_caches()
    monkeypatch.setenv(DISABLE_ENV, "fakeplug")
    assert "fake-data" not in PluginHost().datasets


def test_duplicate_name_from_two_distributions_names_both(fake_site):
    _fake_distribution(fake_site, "dist-alpha", "1.0", "alpha", "tracer_test_alpha", "dup-data")
    _fake_distribution(fake_site, "dist-beta", "2.0", "beta", "tracer_test_beta", "dup-data")
    importlib.invalidate_caches()
    with pytest.raises(PluginError) as err:
        PluginHost()
    message = str(err.value)
    assert "'dup-data'" in message
    assert "dist-alpha 1.0" in message and "dist-beta 2.0" in message


def test_example_task_is_discovered_and_usable(fake_site, monkeypatch, request):
    """The example package's module, exposed by a fake distribution (the installed one, if any,
    blocked by its plugin name): its task is listed and evaluates with its own metric."""
    import torch

    from tracer_cli.sdk.contracts import task_metrics
    from tracer_cli.engine.data import eval_loader

    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    request.addfinalizer(lambda: sys.modules.pop("tracer_plugin_example", None))
    monkeypatch.setenv(DISABLE_ENV, "example")
    info = fake_site / "tracer_plugin_example_local-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tracer-plugin-example-local\n"
                                   "Version: 0.1.0\n")
    (info / "entry_points.txt").write_text("[tracer]\nexample-local = tracer_plugin_example\n")
    importlib.invalidate_caches()
    host = PluginHost()
    entry = host.tasks.get("example-balanced")
    assert entry.as_dict() == {"name": "example-balanced", "plugin": "example-local",
                               "distribution": "tracer-plugin-example-local", "version": "0.1.0"}
    assert "classification" in host.tasks and "example-stripes" in host.datasets
    logger = host.loggers.get("example-csv")
    assert logger.as_dict()["distribution"] == "tracer-plugin-example-local"
    assert logger.factory({"file": "x.csv"}).file_name == "x.csv"

    assert entry.factory.resume_free_keys == ("templates", "templates_file")
    task = entry.factory({})
    spec = task_metrics(task)
    assert spec.primary == "balanced_accuracy" and "avg_ood_balanced_accuracy" in spec.ood_keys
    backbone = host.backbones.get("openclip").factory({"arch": "tracer-tiny-rn",
                                                        "pretrained": "none"})
    bundle = host.datasets.get("example-stripes").factory({"size": 12}, "test",
                                                          backbone.preprocess_eval)
    sets = {"stripes": (bundle, eval_loader(bundle.dataset, 6))}
    cpu = torch.device("cpu")
    [result] = task.evaluate(backbone, backbone.model, sets, cpu, contextlib.nullcontext).values()
    predicted, labels = result["logits"].argmax(1), result["labels"]
    by_hand = np.mean([(predicted[labels == c] == c).float().mean().item() for c in range(3)])
    assert result["metrics"]["balanced_accuracy"] == pytest.approx(by_hand)
    assert result["metrics"]["n"] == 12 and "accuracy" in result["metrics"]
