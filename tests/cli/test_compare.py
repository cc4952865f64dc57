"""``tracer compare``: one real tiny run with a real WiSE-FT evaluation, plus run directories
written from that run's own lock file and summary structure with constructed accuracies (so
the means, pairs and verdicts have hand-computed answers)."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest

from tracer_cli.cli import app

N = 100


@pytest.fixture(scope="module")
def real_run(make_tiny_run) -> Path:
    from typer.testing import CliRunner

    run = make_tiny_run("compare")
    result = CliRunner().invoke(app, ["eval", str(run), "--wise-alpha", "0.5", "--output-dir",
                                      str(run / "eval" / "wise"), "--json"])
    assert result.exit_code == 0, result.stderr
    return run


def fake_run(real: Path, folder: Path, method: str, seed: int, id_acc: float, ood_acc: float,
             lock_edit: tuple[str, str] | None = None, drop_ood: bool = False) -> Path:
    """A run directory with the real run's lock (method, seed and one edit changed) and its
    summary's structure, every ID set at ``id_acc`` and every OOD set at ``ood_acc``."""
    folder.mkdir(parents=True)
    lock = (real / "recipe.lock.toml").read_text()
    lock = lock.replace('method = "tracer"', f'method = "{method}"', 1)
    lock = lock.replace("seed = 0", f"seed = {seed}", 1)
    if lock_edit:
        assert lock_edit[0] in lock
        lock = lock.replace(*lock_edit, 1)
    (folder / "recipe.lock.toml").write_text(lock)
    summary = json.loads((real / "summary.json").read_text())
    ev = copy.deepcopy(summary["eval"])
    if drop_ood:
        ev["ood"] = ev["ood"][:1]
    for metrics in ev["models"].values():
        for d in ev["id"] + ev["ood"]:
            metrics[d].update(accuracy=id_acc if d in ev["id"] else ood_acc, n=N)
        metrics["avg_ood_accuracy"] = ood_acc
    del ev["models"]["teacher"]
    summary.update(eval=ev, run_dir=str(folder))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def runs(real_run, tmp_path_factory) -> Path:
    """ft at ID .80 / .90, tracer at ID .70 / .70, seeds 0 and 1 (real_run stays apart)."""
    root = tmp_path_factory.mktemp("fake_runs")
    for method, seed, id_acc, ood_acc in (("ft", 0, 0.80, 0.60), ("ft", 1, 0.90, 0.62),
                                          ("tracer", 0, 0.70, 0.66), ("tracer", 1, 0.70, 0.70)):
        fake_run(real_run, root / "set" / f"{method}_s{seed}", method, seed, id_acc, ood_acc)
    return root


def invoke(runner, *args):
    return runner.invoke(app, ["compare", *map(str, args)])


def test_json_groups_by_recipe_without_seed_with_mean_se_and_paired_verdicts(runner, runs):
    result = invoke(runner, f"{runs}/set/*", "--baseline", "ft", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"task", "primary", "keys", "id", "ood", "retain", "by", "baseline",
                        "groups", "runs", "panels", "paired_pooled", "notes", "plot"}
    assert doc["retain"] == []
    assert doc["groups"] == ["ft", "tracer"] and doc["by"] is None
    assert doc["keys"] == ["id_accuracy", "avg_ood_accuracy", "avg_ood_ece"]
    (panel,) = doc["panels"]
    assert set(panel) == {"pretrained", "rows", "paired", "wise", "frontier", "fit"}
    rows = {r["label"]: r for r in panel["rows"]}
    assert set(rows) == {"zero-shot (pretrained)", "ft", "tracer"}
    mean, se = rows["ft"]["id_accuracy"]
    assert mean == pytest.approx(0.85) and se == pytest.approx(math.sqrt(0.0025 + 0.000625))
    (entry,) = panel["paired"]
    # ID: .70 − .80, .70 − .90 -> −.15 ± .05; OOD: .06, .08 -> .07 ± .01; both beyond noise
    assert entry["id_accuracy"]["mean"] == pytest.approx(-0.15)
    assert entry["id_accuracy"]["se"] == pytest.approx(0.05)
    assert entry["avg_ood_accuracy"]["mean"] == pytest.approx(0.07)
    assert entry["avg_ood_accuracy"]["verdict"] == "beyond noise"
    assert entry["avg_ood_ece"]["verdict"] in ("within noise", "beyond noise")


def test_markdown_and_plot(runner, runs, tmp_path):
    png = tmp_path / "figs" / "id_ood.png"
    result = invoke(runner, f"{runs}/set/*", "--by", "train.method", "--baseline", "tracer",
                    "--markdown", "--plot", png)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert text.startswith("## tracer compare: 4 run(s), 2 group(s)")
    assert "### openclip:tracer-tiny-rn:none" in text and "grouped by train.method" in text
    assert "| ft | 85.00 ± 5.59 |" in text  # ID: SE sqrt(.0025 + .000625) = 5.59%
    assert "beyond noise" in text and "Paired differences against tracer" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_real_run_with_its_wise_evaluation(runner, real_run):
    result = invoke(runner, real_run, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["runs"][0]["wise_alphas"] == [0.5]
    (panel,) = doc["panels"]
    (curve,) = panel["wise"].values()
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 1.0]
    evaluated = json.loads((real_run / "eval" / "wise" / "eval.json").read_text())["wise"][0]
    assert curve[1]["id_accuracy"][0] == evaluated["id_accuracy"]
    summary = json.loads((real_run / "summary.json").read_text())["eval"]["models"]
    assert curve[2]["avg_ood_accuracy"][0] == pytest.approx(
        summary["student"]["avg_ood_accuracy"])
    assert curve[0]["avg_ood_accuracy"][0] == pytest.approx(
        summary["zeroshot"]["avg_ood_accuracy"])
    assert {r["label"] for r in panel["rows"]} == {"zero-shot (pretrained)", "tracer",
                                                    "teacher of tracer"}


def test_other_pretrained_weights_get_their_own_panel(runner, runs, real_run, tmp_path):
    for name in ("ft_s0", "ft_s1", "tracer_s0", "tracer_s1"):
        shutil.copytree(runs / "set" / name, tmp_path / name)
    fake_run(real_run, tmp_path / "ft_emb", "ft", 0, 0.5, 0.4,
             ('pretrained = "none"', 'pretrained = "embedded"\nembedded_seed = 1'))
    result = invoke(runner, *sorted(tmp_path.iterdir()), "--by", "train.method", "--json")
    assert result.exit_code == 0, result.stderr
    panels = {p["pretrained"]: p for p in json.loads(result.stdout)["panels"]}
    assert set(panels) == {"openclip:tracer-tiny-rn:none",
                           "openclip:tracer-tiny-rn:embedded (embedded_seed 1)"}
    first = panels["openclip:tracer-tiny-rn:none"]
    second = panels["openclip:tracer-tiny-rn:embedded (embedded_seed 1)"]
    ft = {r["label"]: r for r in first["rows"]}["ft"]
    assert ft["n_runs"] == 2 and ft["id_accuracy"][0] == pytest.approx(0.85)
    assert {r["label"]: r for r in second["rows"]}["ft"]["runs"] == [str(tmp_path / "ft_emb")]


def test_paired_differences_pooled_over_pretrained_models(runner, runs, real_run, tmp_path):
    for name in ("ft_s0", "ft_s1", "tracer_s0", "tracer_s1"):
        shutil.copytree(runs / "set" / name, tmp_path / name)
    other = ('pretrained = "none"', 'pretrained = "embedded"\nembedded_seed = 1')
    fake_run(real_run, tmp_path / "ft_emb", "ft", 0, 0.5, 0.40, other)
    fake_run(real_run, tmp_path / "tracer_emb", "tracer", 0, 0.5, 0.46, other)
    args = (*sorted(tmp_path.iterdir()), "--by", "train.method", "--baseline", "ft")
    result = invoke(runner, *args, "--json")
    assert result.exit_code == 0, result.stderr
    (pooled,) = json.loads(result.stdout)["paired_pooled"]
    ood = pooled["avg_ood_accuracy"]  # pairs: none/0 +.06, none/1 +.08, embedded-1/0 +.06
    assert ood["n"] == 3 and ood["mean"] == pytest.approx((0.06 + 0.08 + 0.06) / 3)
    markdown = invoke(runner, *args, "--markdown")
    assert markdown.exit_code == 0 and "### Pooled over the 2 pretrained models" in markdown.stdout


def test_runs_that_cannot_be_compared_exit_2_naming_them(runner, runs, real_run, tmp_path):
    odd = fake_run(real_run, tmp_path / "odd", "ft", 2, 0.8, 0.6, drop_ood=True)
    result = invoke(runner, f"{runs}/set/*", odd)
    assert result.exit_code == 2
    assert "cannot be compared" in result.stderr and str(odd) in result.stderr
    assert str(runs / "set" / "ft_s0") in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--by", "train.methd"], "--by train.methd: no run's recipe has this key (did you mean "
                              "train.method"),
    (["--baseline", "flyp"], "--baseline 'flyp' is not a group; the groups are: 'ft', 'tracer'"),
    (["--json", "--markdown"], "--json and --markdown"),
    (["MISSING"], "'MISSING' does not exist"),
    (["NOTHING/*"], "'NOTHING/*' matches no run directory"),
    (["--by", "run.name", "--baseline", "tiny"], "same seed"),
])
def test_usage_errors_exit_2_with_one_line(runner, runs, args, message):
    result = invoke(runner, f"{runs}/set/*", *args)
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
