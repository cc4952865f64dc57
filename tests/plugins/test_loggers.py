"""Loggers: what TensorBoard, W&B (offline) and MLflow (local file store) received, read back with
their own readers; a run resumed into the same tracked runs; a logger that raises; recipe checks.

One module-scoped run trains 2 of 3 steps, then resumes to the end, with every built-in logger, a
logger that records each call and a logger that raises. No test touches the network: W&B is
offline, MLflow writes a file store under tmp_path, and HOME points into tmp_path.
"""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tracer_cli import hookimpl
from tracer_cli import plugins as plugins_mod
from tracer_cli import recipe as recipe_mod
from tracer_cli.cli import app
from tracer_cli.events import Reporter
from tracer_cli.plugins import PluginHost

LOGGERS = ["tensorboard", "wandb", "mlflow", "test-raising", "test-recorder"]
OFFLINE_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true",
               "WANDB_ERROR_REPORTING": "false",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}


class Recorder:
    """Keeps every call it gets (class-level, so tests read them after the run)."""

    calls: list[tuple[str, Any]] = []

    def start(self, run_dir, recipe, resume_step):
        self.calls.append(("start", (Path(run_dir), recipe, resume_step)))

    def log_scalars(self, step, scalars):
        self.calls.append(("scalars", (step, dict(scalars))))

    def log_eval(self, model, step, metrics, primary):
        self.calls.append(("eval", (model, step, json.loads(json.dumps(metrics)), primary)))

    def finish(self, outcome):
        self.calls.append(("finish", outcome))


class Raising:
    """Raises on every record: it must be reported once, switched off, and the run go on."""

    def start(self, run_dir, recipe, resume_step):
        pass

    def log_scalars(self, step, scalars):
        raise RuntimeError("tracker unreachable")

    def log_eval(self, model, step, metrics, primary):
        raise RuntimeError("tracker unreachable")

    def finish(self, outcome):
        pass


class TestLoggersPlugin:
    @hookimpl
    def tracer_register_loggers(self, registry):
        registry.add("test-recorder", lambda options: Recorder())
        registry.add("test-raising", lambda options: Raising())


class Notices(Reporter):
    def __init__(self):
        self.lines: list[str] = []

    def notice(self, message: str) -> None:
        self.lines.append(message)


def _offline(mp: pytest.MonkeyPatch, home: Path) -> None:
    for key, value in OFFLINE_ENV.items():
        mp.setenv(key, value)
    mp.setenv("HOME", str(home))
    for key in ("WANDB_API_KEY", "MLFLOW_TRACKING_URI", "WANDB_DIR"):
        mp.delenv(key, raising=False)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A 3-step run stopped after step 2 and resumed; its run dir and the notices of each part."""
    from tests.conftest import TINY_RECIPE
    from tracer_cli.engine.run import finetune

    base = tmp_path_factory.mktemp("loggers")
    raw = recipe_mod.apply_overrides(
        recipe_mod.tomllib.loads(TINY_RECIPE),
        [f"run.loggers={json.dumps(LOGGERS)}", "train.checkpoint_every=2"])
    recipe = recipe_mod.from_dict(raw)
    Recorder.calls.clear()
    with pytest.MonkeyPatch.context() as mp:
        _offline(mp, base / "home")
        mp.setattr(plugins_mod, "_HOST", PluginHost(plugins=(TestLoggersPlugin(),)))
        parts = []
        for kwargs in ({"stop_after": 2}, {"resume": "auto"}):
            notices = Notices()
            result = finetune(recipe, output_dir=base / "runs", reporter=notices, **kwargs)
            parts.append(notices.lines)
    return {"run_dir": result.run_dir, "notices": parts, "calls": list(Recorder.calls)}


def _jsonl(run_dir: Path, event: str) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _train_numbers(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> the numbers of its metrics.jsonl train record."""
    return {r["step"]: {k: v for k, v in r.items() if k not in ("event", "step", "time")}
            for r in _jsonl(run_dir, "train")}


def _eval_json(run_dir: Path, model: str) -> dict[str, Any]:
    return json.loads((run_dir / "eval" / f"{model}.json").read_text())


def test_jsonl_is_complete_and_a_raising_logger_warns_once_per_run(logged):
    run_dir = logged["run_dir"]
    assert sorted(_train_numbers(run_dir)) == [1, 2, 3]
    assert [r["step"] for r in _jsonl(run_dir, "resume")] == [2]
    assert [(r["model"], r["step"]) for r in _jsonl(run_dir, "eval")] == [
        ("zeroshot", 0), ("final_student", 2), ("final_teacher", 2),
        ("final_student", 3), ("final_teacher", 3)]
    for notices in logged["notices"]:
        failed = [n for n in notices if "logger" in n and "failed" in n]
        assert len(failed) == 1, notices
        assert "'test-raising' failed in log_" in failed[0]
        assert "(RuntimeError: tracker unreachable)" in failed[0]
        assert "metrics.jsonl is not affected" in failed[0]


def test_every_logger_gets_the_jsonl_scalars_and_every_eval_metric(logged):
    run_dir, calls = logged["run_dir"], logged["calls"]
    starts = [args for kind, args in calls if kind == "start"]
    assert [(d, step) for d, _, step in starts] == [(run_dir, None), (run_dir, 2)]
    assert starts[0][1]["run"]["loggers"] == LOGGERS and starts[0][1]["train"]["steps"] == 3
    scalars = {step: numbers for kind, (step, numbers) in
               ((k, a) for k, a in calls if k == "scalars")}
    assert scalars == _train_numbers(run_dir)  # the same numbers, after the raising logger died
    evals = [(m, s, p) for kind, (m, s, metrics, p) in
             ((k, a) for k, a in calls if k == "eval")]
    assert evals == [("zeroshot", 0, "accuracy"), ("final_student", 2, "accuracy"),
                     ("final_teacher", 2, "accuracy"), ("final_student", 3, "accuracy"),
                     ("final_teacher", 3, "accuracy")]
    last = [a for k, a in calls if k == "eval"][-2]
    assert last[2] == _eval_json(run_dir, "final_student")  # every metric, not the headline only
    assert [a for k, a in calls if k == "finish"] == ["completed", "completed"]


def test_tensorboard_event_files_read_back(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = logged["run_dir"]
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    numbers = _train_numbers(run_dir)
    for key in ("loss", "lr", "loss_clip", "kl_i2t", "drift", "img_per_s"):
        logged_steps = [s for s in sorted(numbers) if key in numbers[s]]
        got = events.Scalars(f"train/{key}")
        assert [e.step for e in got] == logged_steps, key
        # TensorBoard stores float32.
        torch.testing.assert_close(torch.tensor([e.value for e in got]),
                                   torch.tensor([numbers[s][key] for s in logged_steps],
                                                dtype=torch.float32), rtol=1e-6, atol=0)
    final = _eval_json(run_dir, "final_student")
    for dataset, metrics in final.items():
        for metric in ("accuracy", "ece", "nll"):
            [*_, last] = events.Scalars(f"eval/final_student/{dataset}/{metric}")
            assert last.step == 3
            assert last.value == pytest.approx(metrics[metric], rel=1e-6)
    [zeroshot] = events.Scalars("eval/zeroshot/synth-photo/accuracy")
    assert zeroshot.step == 0


# --------------------------------------------------------------------------- W&B offline files

_BLOCK = 32 * 1024  # W&B's transaction log is a LevelDB-style log: 32 KiB blocks of chunks


def _wandb_records(path: Path):
    """The protobuf records (wandb's own ``Record`` message) of an offline ``run-*.wandb`` file.

    wandb >= 0.19 reads these files only from its Go core, so the test reads the documented
    LevelDB log framing itself: a 7-byte file header (``:W&B``, magic, version), then chunks of
    a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last) and the payload, never
    crossing a 32 KiB block boundary (the rest of a block shorter than a header is padding).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _wandb_run(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"history": [], "exit": None}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"] = record.run.run_id
            out["project"] = record.run.project
            out["config"] = {i.key: json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "history":
            # Keys W&B would split at "/" arrive as nested_key parts.
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "exit":
            out["exit"] = record.exit.exit_code
    return out


def _closed_wandb_run(path: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """:func:`_wandb_run` once W&B's service has written the run's exit record (it writes the
    file from its own process, so the last records can land just after ``finish`` returns)."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = _wandb_run(path)
        if run["exit"] is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def test_wandb_offline_run_files_read_back(logged):
    run_dir = logged["run_dir"]
    saved = json.loads((run_dir / "wandb_run.json").read_text())
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # the first part and the resumed part ...
    first, second = (_closed_wandb_run(f) for f in files)
    assert first["id"] == second["id"] == saved["id"]  # ... are one W&B run
    assert first["project"] == "tracer" and first["exit"] == 0 and second["exit"] == 0
    lock = recipe_mod.read_toml(run_dir / "recipe.lock.toml")
    for section in ("train", "teacher", "distill", "run"):
        assert first["config"][section] == lock[section], section
    rows = [r for part in (first, second) for r in part["history"]]
    numbers = _train_numbers(run_dir)
    for step, values in numbers.items():
        [row] = [r for r in rows if r["_step"] == step and "train/loss" in r]
        assert {k: row[f"train/{k}"] for k in values} == pytest.approx(values, rel=1e-12)
    [zeroshot] = [r for r in rows if "eval/zeroshot/synth-photo/accuracy" in r]
    assert zeroshot["_step"] == 0
    final = _eval_json(run_dir, "final_teacher")
    [*_, last] = [r for r in rows if "eval/final_teacher/synth-noisy/ece" in r]
    assert last["_step"] == 3
    assert last["eval/final_teacher/synth-noisy/ece"] == pytest.approx(final["synth-noisy"]["ece"])


def test_mlflow_file_store_read_back(logged):
    from mlflow.tracking import MlflowClient

    run_dir = logged["run_dir"]
    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    assert saved["tracking_uri"] == (run_dir.parent / "mlruns").resolve().as_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        client = MlflowClient(tracking_uri=saved["tracking_uri"])
        run = client.get_run(saved["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
        assert run.data.params["train.lr"] == "0.0001"
        assert run.data.params["run.loggers"] == json.dumps(LOGGERS)
        numbers = _train_numbers(run_dir)
        history = client.get_metric_history(saved["run_id"], "train/loss")
        assert sorted((m.step, m.value) for m in history) == \
            [(s, pytest.approx(numbers[s]["loss"], rel=1e-12)) for s in sorted(numbers)]
        final = _eval_json(run_dir, "final_student")
        history = client.get_metric_history(saved["run_id"],
                                            "eval/final_student/synth-sketch/accuracy")
        assert max(history, key=lambda m: m.step).value == \
            pytest.approx(final["synth-sketch"]["accuracy"])


# --------------------------------------------------------------------------- outcomes


def test_mlflow_and_wandb_record_how_a_run_ended(tmp_path, monkeypatch):
    """Interrupted -> MLflow KILLED; failed -> W&B exit code 1 (no training needed)."""
    from mlflow.tracking import MlflowClient

    from tracer_plugins.loggers.mlflow import make_mlflow
    from tracer_plugins.loggers.wandb import make_wandb

    _offline(monkeypatch, tmp_path / "home")
    recipe = {"run": {"name": "ended"}}
    run_dir = tmp_path / "runs" / "ended"
    run_dir.mkdir(parents=True)
    ml = make_mlflow({"experiment": "outcomes"})
    ml.start(run_dir, recipe, None)
    ml.log_scalars(1, {"loss": 2.5})
    ml.finish("interrupted")
    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    client = MlflowClient(tracking_uri=saved["tracking_uri"])
    assert client.get_run(saved["run_id"]).info.status == "KILLED"
    ml = make_mlflow({"experiment": "outcomes"})
    ml.start(run_dir, recipe, 1)  # resumed: the same MLflow run, running again
    assert ml.run_id == saved["run_id"]
    assert client.get_run(saved["run_id"]).info.status == "RUNNING"
    ml.finish("completed")
    assert client.get_run(saved["run_id"]).info.status == "FINISHED"

    wb = make_wandb({"project": "outcomes", "tags": ["a"]})
    wb.start(run_dir, recipe, None)
    wb.log_scalars(1, {"loss": 2.5})
    wb.finish("failed")
    [path] = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    run = _closed_wandb_run(path)
    assert run["exit"] == 1 and run["project"] == "outcomes"
    assert [r["train/loss"] for r in run["history"]] == [2.5]


def test_closing_finishes_started_loggers_with_the_outcome():
    from tracer_cli.engine.loggers import RunLoggers
    from tracer_cli.errors import Interrupted, RunError

    def outcome(exc: BaseException | None) -> list[str]:
        jsonl, rec = Recorder(), Recorder()
        Recorder.calls = []
        loggers = RunLoggers(jsonl, [("rec", rec)])
        with pytest.raises(type(exc)) if exc else _nothing():
            with loggers.closing():
                loggers.start(Path("."), recipe_mod.from_dict({"data": {"train": "x"}}), None,
                              lambda m: None)
                if exc:
                    raise exc
        return [a for k, a in Recorder.calls if k == "finish"]

    assert outcome(None) == ["completed", "completed"]
    assert outcome(Interrupted(15, 3, "last.pt")) == ["interrupted", "interrupted"]
    assert outcome(RunError("non-finite loss")) == ["failed", "failed"]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------- recipe checks


def _check(runner, tiny_recipe, tmp_path, *sets: str):
    args = ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path / "runs")]
    for item in sets:
        args += ["--set", item]
    return runner.invoke(app, args)


@pytest.mark.parametrize("sets, message", [
    (["run.loggers=tensorbord"], "recipe key 'run.loggers': unknown logger 'tensorbord': did you "
                                 "mean 'tensorboard'?"),
    (["run.loggers=3"], "recipe key 'run.loggers': expected a list of strings, got 3"),
    (['run.loggers=["wandb", "wandb"]'], "recipe key 'run.loggers': wandb listed twice"),
    (["run.loggers=wandb", "loggers.wandb.projekt=x"],
     "recipe key 'loggers.wandb.projekt': unknown key"),
    (["run.loggers=tensorboard", "loggers.tensorboard.flush_secs=soon"],
     "recipe key 'loggers.tensorboard.flush_secs': expected an integer, got 'soon'"),
    (["run.loggers=mlflow", "loggers.mlflow=3"], "recipe key 'loggers.mlflow': expected a table"),
    (["loggers.mlflow.experiment=x"], "recipe key 'loggers.mlflow': options for a logger that "
                                      "run.loggers does not turn on"),
])
def test_bad_logger_keys_exit_2_naming_the_key(runner, tiny_recipe, tmp_path, sets, message):
    result = _check(runner, tiny_recipe, tmp_path, *sets)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "runs").exists()  # before any work


@pytest.mark.parametrize("logger, module, install", [
    ("tensorboard", "tensorboard", "pip install 'tracer-clip[tensorboard]'"),
    ("wandb", "wandb", "pip install 'tracer-clip[wandb]'"),
    ("mlflow", "mlflow", "pip install 'tracer-clip[mlflow]'"),
])
def test_missing_logger_package_fails_before_training(runner, tiny_recipe, tmp_path, monkeypatch,
                                                      logger, module, install):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as when absent
    result = _check(runner, tiny_recipe, tmp_path, f"run.loggers={logger}")
    assert result.exit_code == 2, result.stderr
    assert f"logger '{logger}' (run.loggers) needs the Python package '{module}'" in result.stderr
    assert install in result.stderr
    assert not (tmp_path / "runs").exists()
