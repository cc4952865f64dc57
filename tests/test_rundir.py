"""The run directory's one owner: layout, readers and writers (the lock, retention and
verification are tested under tests/reliability/)."""

from __future__ import annotations

import json
import os

import pytest

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.rundir import checksums
from tracer_cli.errors import UsageError


def test_the_lock_file_reads_back_as_recipe_tables_and_lock_info(tmp_path):
    rec = recipe_mod.from_dict({"data": {"train": "synth-photo-narrow"}, "train": {"steps": 7}})
    path = rundir.write_recipe_lock(tmp_path, recipe_mod.lock_text(rec, {"torch": "x"}))
    assert path == rundir.recipe_lock_path(tmp_path) and rundir.is_run_dir(tmp_path)
    tables, lock = rundir.read_recipe_lock(tmp_path)
    assert lock == {"torch": "x"} and "lock" not in tables
    assert recipe_mod.from_dict(tables).to_dict() == rec.to_dict()
    assert rundir.strip_lock_table({"lock": {}, "run": {}}) == {"run": {}}


def test_metrics_append_and_read_skip_a_cut_line_and_end_it(tmp_path):
    rundir.append_metrics(tmp_path, {"event": "train", "step": 1})
    with open(rundir.metrics_path(tmp_path), "a") as fh:
        fh.write('{"event": "train", "st')  # a process killed mid-write
    assert list(rundir.read_metrics(tmp_path)) == [{"event": "train", "step": 1}]
    rundir.end_partial_metrics_line(tmp_path)
    rundir.append_metrics(tmp_path, {"event": "train", "step": 2})
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 2]


def test_eval_and_summary_files(tmp_path):
    rundir.write_eval(tmp_path, "zeroshot", {"a": {"accuracy": 0.5}})
    nested = tmp_path / rundir.EVAL / "wise" / "eval.json"
    nested.parent.mkdir()
    nested.write_text(json.dumps({"wise": []}))
    assert rundir.read_eval(tmp_path, "zeroshot") == {"a": {"accuracy": 0.5}}
    assert rundir.eval_files(tmp_path) == [rundir.eval_path(tmp_path, "zeroshot")]
    assert rundir.eval_files(tmp_path, nested=True) == sorted(
        [rundir.eval_path(tmp_path, "zeroshot"), nested])
    assert rundir.read_summary(tmp_path) is None
    rundir.write_summary(tmp_path, {"steps": 3})
    assert rundir.read_summary(tmp_path) == {"steps": 3}
    rundir.summary_path(tmp_path).write_text("{ half")
    assert rundir.read_summary(tmp_path) is None  # damaged or being written


def test_checkpoint_paths_resolve_inside_the_run_and_removal_keeps_the_rest(tmp_path):
    for step in (1, 2):
        path = rundir.step_path(tmp_path, step)
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
        checksums.write_sha(path, checksums.file_sha256(path))
    rundir.weights_path(tmp_path, 2).write_bytes(b"w")
    checksums.publish_last(tmp_path, rundir.step_path(tmp_path, 2))
    given = rundir.step_path(tmp_path, 1).relative_to(tmp_path)
    assert rundir.resolve_checkpoint(tmp_path, given) == rundir.step_path(tmp_path, 1)
    assert [s for s, _ in rundir.step_checkpoints(tmp_path)] == [2, 1]  # milestone not listed
    rundir.remove_checkpoints(tmp_path, keep_last=True)
    assert os.listdir(tmp_path / rundir.CHECKPOINTS) == []
    assert rundir.last_path(tmp_path).is_file() and checksums.verify(rundir.last_path(tmp_path)).ok


def test_last_pt_is_a_copy_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    import errno

    newest = rundir.step_path(tmp_path, 3)
    newest.parent.mkdir()
    newest.write_bytes(b"weights")
    checksums.write_sha(newest, checksums.file_sha256(newest))

    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not permitted")

    monkeypatch.setattr(os, "link", no_links)
    last = checksums.publish_last(tmp_path, newest)
    assert not os.path.samefile(last, newest)  # a copy, not a link
    assert last.read_bytes() == b"weights" and checksums.verify(last).ok
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_rebuilt_network_against_the_locked_one(tmp_path):
    built = {"backbone": "openclip", "activation": "QuickGELU"}
    assert rundir.check_built_as_locked(tmp_path, {"activation": "QuickGELU"}, built) is None
    assert rundir.check_built_as_locked(tmp_path, {}, {"backbone": "other"}) is None
    with pytest.raises(UsageError, match="trained with activation GELU .* now builds QuickGELU"):
        rundir.check_built_as_locked(tmp_path, {"activation": "GELU"}, built)
    notice = rundir.check_built_as_locked(tmp_path, {"backbone": "openclip"}, built)
    assert "does not record the network" in notice and "activation QuickGELU" in notice
    # GELU is what every older tracer built: nothing to say.
    assert rundir.check_built_as_locked(tmp_path, {}, {"activation": "GELU"}) is None


def test_per_example_correctness_round_trips_bit_packed(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    correct = {"synth-photo": rng.random(13) < 0.5, "odd/name": np.ones(8, dtype=bool)}
    path = rundir.write_correct(tmp_path, "final_student", correct)
    assert path == tmp_path / "eval" / "final_student.correct.npz"
    back = rundir.read_correct(tmp_path, "final_student")
    assert set(back) == set(correct)
    for name, vector in correct.items():
        assert back[name].dtype == bool and (back[name] == vector).all()
    assert rundir.read_correct(tmp_path, "final_teacher") is None
    path.write_bytes(b"not a zip")
    assert rundir.read_correct(tmp_path, "final_student") is None
    assert rundir.eval_files(tmp_path) == []  # not an eval document


def test_the_loggers_files_are_declared_here(tmp_path):
    """The logger plugins take their files' places from the run directory (through the SDK), and
    --overwrite counts exactly those as tracer's."""
    assert rundir.tracker_record_path(tmp_path, "wandb") == tmp_path / "wandb_run.json"
    assert rundir.tracker_record_path(tmp_path, "mlflow").name == "mlflow_run.json"
    assert rundir.logger_folder(tmp_path, "tensorboard") == tmp_path / "tensorboard"
    with pytest.raises(ValueError, match="declared: tensorboard, wandb"):
        rundir.logger_folder(tmp_path, "neptune")
    with pytest.raises(ValueError, match="lower-case"):
        rundir.tracker_record_path(tmp_path, "../x")
    (tmp_path / rundir.RECIPE_LOCK).write_text("")
    rundir.tracker_record_path(tmp_path, "mlflow").write_text("{}")
    for name in rundir.LOGGER_FOLDERS:
        rundir.logger_folder(tmp_path, name).mkdir()
    rundir.clear_run(tmp_path)
    assert rundir.contents(tmp_path) == []
