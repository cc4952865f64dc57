"""``--overwrite`` replaces a tracer run and nothing else: a folder that is not a run, or a run
holding files tracer did not write, is refused with exit 2 naming them, and nothing is deleted;
through a symbolic link the same rules apply to the folder it points to."""

from __future__ import annotations

from pathlib import Path

from tracer_cli import rundir
from tracer_cli.cli import app

FAST = ["--set", "run.eval=false", "--max-steps", "2"]


def _overwrite(runner, recipe: Path, out: Path):
    return runner.invoke(app, ["finetune", str(recipe), "--output-dir", str(out), *FAST,
                               "--overwrite"])


def _error(result) -> str:
    assert result.exit_code == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: --overwrite: "), result.stderr
    return line


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != rundir.LOCK}


def test_a_folder_that_is_not_a_run_is_refused_and_kept(runner, tiny_recipe, tmp_path):
    folder = tmp_path / "runs" / "tiny"
    (folder / "chapters").mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    (folder / "chapters" / "one.tex").write_text("chapter one")
    before = _tree(folder)
    line = _error(_overwrite(runner, tiny_recipe, tmp_path / "runs"))
    assert f"'{folder}' is not a tracer run directory (it has no recipe.lock.toml)" in line
    assert "holds chapters/, thesis.tex;" in line
    assert _tree(folder) == before and sorted(p.name for p in folder.iterdir()) == \
        ["chapters", "thesis.tex"]  # not even a lock file is left


def test_through_a_link_the_folder_it_points_to_must_be_a_run(runner, tiny_recipe, tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    (tmp_path / "runs").mkdir()
    link = tmp_path / "runs" / "tiny"
    link.symlink_to(target, target_is_directory=True)
    line = _error(_overwrite(runner, tiny_recipe, tmp_path / "runs"))
    assert f"'{link}' (a link to '{target.resolve()}') is not a tracer run directory" in line
    assert link.is_symlink() and (target / "thesis.tex").read_text() == "years of work"


def test_files_tracer_did_not_write_in_a_run_are_named_and_nothing_is_deleted(
        runner, tiny_recipe, tmp_path):
    out = tmp_path / "runs"
    assert _overwrite(runner, tiny_recipe, out).exit_code == 0
    run_dir = out / "tiny"
    (run_dir / "notes.txt").write_text("my analysis")
    (run_dir / "checkpoints" / "best-by-hand.pt").write_bytes(b"kept")
    (run_dir / "plots").mkdir()
    before = _tree(run_dir)
    line = _error(_overwrite(runner, tiny_recipe, out))
    assert f"run directory '{run_dir}' holds what tracer did not write: " in line
    assert "notes.txt, plots/, checkpoints/best-by-hand.pt;" in line and "nothing was deleted" in line
    assert _tree(run_dir) == before and (run_dir / "plots").is_dir()


def test_a_run_holding_only_what_tracer_and_its_loggers_write_is_replaced(
        runner, tiny_recipe, tmp_path):
    out = tmp_path / "runs"
    assert _overwrite(runner, tiny_recipe, out).exit_code == 0
    run_dir = out / "tiny"
    (run_dir / "tensorboard").mkdir()
    (run_dir / "tensorboard" / "events.out.tfevents.1").write_bytes(b"x")
    (run_dir / "wandb_run.json").write_text("{}")
    (run_dir / "eval" / "wise").mkdir(parents=True)
    (run_dir / "eval" / "wise" / "eval.json").write_text("{}")
    (run_dir / ".summary.json.abc123.tmp").write_text("half")
    old_metrics = (run_dir / "metrics.jsonl").read_text()
    result = _overwrite(runner, tiny_recipe, out)
    assert result.exit_code == 0, result.stderr
    names = {p.name for p in run_dir.iterdir()}
    assert not names & {"tensorboard", "wandb_run.json", ".summary.json.abc123.tmp"}
    assert not (run_dir / "eval" / "wise").exists()
    assert (run_dir / "metrics.jsonl").read_text().count('"event": "train"') == \
        old_metrics.count('"event": "train"')  # the new run's records only, not appended
