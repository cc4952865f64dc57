"""Loggers: what TensorBoard, W&B (offline) and MLflow (local file store) received, read back with
their own readers; a run resumed into the same tracked runs; a logger that raises; recipe checks.

One module-scoped run trains 2 of 3 steps, evaluating two sets every step, then resumes to the
end, with every built-in logger, a logger that records each call and a logger that raises. No test touches the network: W&B is
offline, MLflow writes a file store under tmp_path, and HOME points into tmp_path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tracer_cli import hookimpl
from tracer_cli.sdk import host as plugins_mod
from tracer_cli import recipe as recipe_mod
from tracer_cli.cli import app
from tracer_cli.events import Reporter
from tracer_cli.sdk.host import PluginHost

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

    def log_files(self, run_dir, paths):
        self.calls.append(("files", (Path(run_dir), list(paths))))

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
    """Notices, and the progress tasks started and finished (``("start", task, total)``, ...)."""

    def __init__(self):
        self.lines: list[str] = []
        self.progress: list[tuple[Any, ...]] = []

    def notice(self, message: str) -> None:
        self.lines.append(message)

    def start(self, task: str, total: int, completed: int = 0) -> None:
        self.progress.append(("start", task, total))

    def advance(self, task: str, completed: int, fields=None) -> None:
        self.progress.append(("advance", task, completed))

    def finish(self, task: str) -> None:
        self.progress.append(("finish", task))


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
        [f"run.loggers={json.dumps(LOGGERS)}", "train.checkpoint_every=2", "run.eval_every=1",
         'run.eval_sets=["synth-photo", "synth-noisy"]', "run.eval_max_images=20"])
    recipe = recipe_mod.from_dict(raw)
    Recorder.calls.clear()
    with pytest.MonkeyPatch.context() as mp:
        _offline(mp, base / "home")
        mp.chdir(base)  # where MLflow would put artifacts it was not told where to put
        mp.setattr(plugins_mod, "_HOST", PluginHost(plugins=(TestLoggersPlugin(),)))
        parts = []
        for kwargs in ({"stop_after": 2}, {"resume": "auto"}):
            notices = Notices()
            result = finetune(recipe, output_dir=base / "runs", reporter=notices, **kwargs)
            parts.append(notices)
    return {"run_dir": result.run_dir, "notices": [n.lines for n in parts],
            "progress": [n.progress for n in parts], "calls": list(Recorder.calls)}


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
    # Every step is evaluated once: step 2's evaluation came before its checkpoint, which the
    # resumed part continues from; step 3, the last, is the final evaluation's.
    assert [(r["model"], r["step"]) for r in _jsonl(run_dir, "eval")] == [
        ("zeroshot", 0), ("student", 1), ("teacher", 1), ("student", 2), ("teacher", 2),
        ("final_student", 2), ("final_teacher", 2), ("final_student", 3), ("final_teacher", 3)]
    during = [r for r in _jsonl(run_dir, "eval") if r["model"] in ("student", "teacher")]
    assert all(sorted(k for k in r if "/" in k) == ["synth-noisy/accuracy", "synth-photo/accuracy"]
               for r in during)
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
    evals = [(m, s) for kind, (m, s, metrics, p) in ((k, a) for k, a in calls if k == "eval")]
    assert evals == [("zeroshot", 0), ("student", 1), ("teacher", 1), ("student", 2),
                     ("teacher", 2), ("final_student", 2), ("final_teacher", 2),
                     ("final_student", 3), ("final_teacher", 3)]
    assert {p for kind, (*_, p) in ((k, a) for k, a in calls if k == "eval")} == {"accuracy"}
    during = [a for k, a in calls if k == "eval" and a[0] == "student"]
    # run.eval_max_images = 20 evenly spaced images of each of the two named sets
    assert [{name: m["n"] for name, m in a[2].items()} for a in during] == \
        [{"synth-photo": 20, "synth-noisy": 20}] * 2
    last = [a for k, a in calls if k == "eval"][-2]
    assert last[2] == _eval_json(run_dir, "final_student")  # every metric, not the headline only
    assert [a for k, a in calls if k == "finish"] == ["completed", "completed"]
    # Each completed part hands its result files over, the resumed one with its new results.
    [*_, (files_dir, files)] = [a for k, a in calls if k == "files"]
    assert files_dir == run_dir
    assert {p.relative_to(run_dir).as_posix() for p in files} == {
        "recipe.lock.toml", "summary.json", "eval/zeroshot.json", "eval/final_student.json",
        "eval/final_teacher.json", "eval/curves.png"}


def test_every_evaluation_shows_its_progress_per_dataset(logged):
    first, resumed = logged["progress"]
    during = [f"eval {model} {name}" for model in ("student", "teacher")
              for name in ("synth-photo", "synth-noisy")]
    final = [f"eval {model} {name}" for model in ("student", "teacher")
             for name in ("synth-photo", "synth-sketch", "synth-noisy")]
    zeroshot = [f"eval zeroshot {n}" for n in ("synth-photo", "synth-sketch", "synth-noisy")]
    assert [task for kind, task, *_ in first if kind == "start"] == \
        [*zeroshot, "train", *during, *during, *final]
    assert [task for kind, task, *_ in resumed if kind == "start"] == ["train", *final]
    for kind, task, *rest in first + resumed:
        if kind == "start" and task.startswith("eval "):
            assert rest == [1]  # one batch of 48 (or of the 20 kept) images
            assert ("advance", task, 1) in first + resumed and ("finish", task) in first + resumed
    assert any(n.startswith("step 1 student accuracy: synth-photo ") for n in logged["notices"][0])


def test_counts_and_standard_errors_are_not_metrics():
    from tracer_cli.sdk.contracts import eval_scalars

    got = eval_scalars({"a": {"accuracy": 0.5, "n": 10, "accuracy_se": 0.1, "n_images": 3,
                              "mean_recall": 0.2}}, "eval/m/")
    assert got == {"eval/m/a/accuracy": 0.5, "eval/m/a/mean_recall": 0.2}

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
    assert [e.step for e in events.Scalars("eval/student/synth-noisy/accuracy")] == [1, 2]
    tags = events.Tags()["scalars"]
    assert not [t for t in tags if t.endswith(("/n", "_se"))], tags


def test_tensorboard_hparams_hold_the_recipe(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_dir = logged["run_dir"]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    starts = []
    for raw in content.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        if data.HasField("session_start_info"):
            starts.append(data.session_start_info.hparams)
    [hparams] = starts  # the resumed part keeps the session the first one started

    def value(key):
        v = hparams[key]
        return getattr(v, v.WhichOneof("kind"))

    lock = recipe_mod.read_toml(run_dir / "recipe.lock.toml")
    assert value("train.lr") == pytest.approx(lock["train"]["lr"])
    assert value("train.method") == lock["train"]["method"]
    assert value("run.eval_every") == 1
    assert json.loads(value("run.loggers")) == LOGGERS


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
    out: dict[str, Any] = {"history": [], "exit": None, "summary": {}}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"] = record.run.run_id
            out["project"] = record.run.project
            out["resume"] = record.run.resume  # whether this attempt asked W&B to resume
            out["config"] = {i.key: json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "history":
            # Keys W&B would split at "/" arrive as nested_key parts.
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.history.item})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                   for i in record.summary.update})
        elif kind == "exit":
            out["exit"] = record.exit.exit_code
        elif kind == "artifact":
            out.setdefault("artifacts", []).append({
                "type": record.artifact.type, "name": record.artifact.name,
                "files": {e.path: (e.digest, e.local_path)
                          for e in record.artifact.manifest.contents}})
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
    assert (first["resume"], second["resume"]) == (False, True)  # the second part resumes
    assert first["summary"]["tracer/outcome"] == second["summary"]["tracer/outcome"] == \
        "completed"
    saved_files = {p.relative_to(files[1].parent / "files").as_posix()
                   for p in (files[1].parent / "files").rglob("*") if p.is_file()}
    assert {"summary.json", "recipe.lock.toml", "eval/final_student.json",
            "eval/curves.png"} <= saved_files
    assert json.loads((files[1].parent / "files" / "eval" / "final_student.json").read_text()) \
        == _eval_json(run_dir, "final_student")
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
    assert not [k for r in rows for k in r if k.endswith(("/n", "_se"))]
    assert [r["_step"] for r in rows if "eval/teacher/synth-photo/accuracy" in r] == [1, 2]
    final = _eval_json(run_dir, "final_teacher")
    [*_, last] = [r for r in rows if "eval/final_teacher/synth-noisy/ece" in r]
    assert last["_step"] == 3
    assert last["eval/final_teacher/synth-noisy/ece"] == pytest.approx(final["synth-noisy"]["ece"])


def _mlflow_read(saved: dict[str, Any], code: str) -> Any:
    """``code`` run by MLflow's own client in a fresh process, with only the environment a user
    reading the store has: no MLFLOW_ALLOW_FILE_STORE unless ``mlflow_run.json`` says to set it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(saved.get("read_with_env", {}))
    script = ("import json, sys\nfrom mlflow.tracking import MlflowClient\n"
              "client = MlflowClient(tracking_uri=sys.argv[1])\nrun_id = sys.argv[2]\n"
              f"{code}")
    out = subprocess.run([sys.executable, "-c", script, saved["tracking_uri"], saved["run_id"]],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_mlflow_default_store_reads_with_mlflows_own_client(logged):
    run_dir = logged["run_dir"]
    saved = json.loads((run_dir / "mlflow_run.json").read_text())
    sqlite = (run_dir.parent / "mlflow.db").resolve()
    try:
        import alembic, sqlalchemy  # noqa: F401, E401 - what MLflow's SQLite store needs
        assert saved["tracking_uri"] == f"sqlite:///{sqlite.as_posix()}"
        assert "read_with_env" not in saved  # nothing to set: every MLflow tool reads it
        assert (run_dir.parent / "mlartifacts").is_dir()  # beside the store, not in the cwd
        assert not (run_dir.parent.parent / "mlruns").exists()
    except ImportError:
        assert saved["tracking_uri"] == (run_dir.parent / "mlruns").resolve().as_uri()
        assert saved["read_with_env"] == {"MLFLOW_ALLOW_FILE_STORE": "true"}
    got = _mlflow_read(saved, """
run = client.get_run(run_id)
hist = lambda key: sorted([m.step, m.value] for m in client.get_metric_history(run_id, key))
print(json.dumps({
    "status": run.info.status, "name": run.info.run_name, "params": run.data.params,
    "metrics": sorted(run.data.metrics), "loss": hist("train/loss"),
    "sketch": hist("eval/final_student/synth-sketch/accuracy"),
    "during": hist("eval/student/synth-photo/accuracy"),
    "artifacts": sorted(a.path for a in client.list_artifacts(run_id))
                 + sorted(a.path for a in client.list_artifacts(run_id, "eval"))}))
""")
    assert got["status"] == "FINISHED" and got["name"] == "tiny"
    assert got["params"]["train.lr"] == "0.0001"
    assert got["params"]["run.loggers"] == json.dumps(LOGGERS)
    numbers = _train_numbers(run_dir)
    assert got["loss"] == [[s, pytest.approx(numbers[s]["loss"], rel=1e-12)]
                           for s in sorted(numbers)]
    final = _eval_json(run_dir, "final_student")
    assert got["sketch"][-1] == [3, pytest.approx(final["synth-sketch"]["accuracy"])]
    assert [step for step, _ in got["during"]] == [1, 2]
    assert not [k for k in got["metrics"] if k.endswith(("/n", "_se"))]
    assert {"recipe.json", "recipe.lock.toml", "summary.json", "eval/final_student.json",
            "eval/final_teacher.json", "eval/zeroshot.json", "eval/curves.png"} <= \
        set(got["artifacts"])


# --------------------------------------------------------------------------- export's model card

CARD = ("MODEL_CARD.md", "README.md", "model_card.json")


def _copied_run(logged, tmp_path: Path) -> Path:
    """A copy of the logged run: its W&B folder moves with it (``wandb_run.json`` keeps no
    absolute ``dir`` by default), its MLflow run stays in the store ``mlflow_run.json`` names."""
    run = tmp_path / "copy" / "tiny"
    shutil.copytree(logged["run_dir"], run, symlinks=True)
    return run


def _wandb_attempts(run: Path) -> set[Path]:
    return set((run / "wandb").glob("offline-run-*/run-*.wandb"))


def _export_card(runner, run: Path, out: Path, *args: str):
    result = runner.invoke(app, ["export", str(run), "--format", "safetensors", "--output",
                                 str(out), "--json", *args])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*CARD, "model.safetensors"])
    return json.loads(result.stdout), result.stderr


def _unwrapped(text: str) -> str:
    """``text`` with the console's line wrapping undone (words joined by single spaces)."""
    return " ".join(text.split())


def test_export_attaches_the_model_card_to_the_tracked_runs(logged, runner, tmp_path,
                                                            monkeypatch):
    _offline(monkeypatch, tmp_path / "home")
    run = _copied_run(logged, tmp_path)
    before = _wandb_attempts(run)
    out = tmp_path / "export"
    doc, stderr = _export_card(runner, run, out)
    assert sorted(doc["tracked"]) == ["mlflow", "wandb"]
    assert "attached the model card to the run's mlflow run: MLflow run" in stderr
    assert "attached the model card to the run's wandb run: W&B run" in stderr
    assert "warning" not in stderr

    saved = json.loads((run / "mlflow_run.json").read_text())
    got = _mlflow_read(saved, """
import tempfile
local = client.download_artifacts(run_id, "model_card/model_card.json", tempfile.mkdtemp())
print(json.dumps({"status": client.get_run(run_id).info.status,
                  "paths": sorted(a.path for a in client.list_artifacts(run_id, "model_card")),
                  "card": json.load(open(local))}))
""")
    assert got["paths"] == [f"model_card/{name}" for name in CARD]
    assert got["card"] == json.loads((out / "model_card.json").read_text())
    assert got["status"] == "FINISHED"  # attaching left the run as it ended

    wb = json.loads((run / "wandb_run.json").read_text())
    assert (wb["mode"], wb["dir"], wb["outcome"]) == ("offline", None, "completed")
    [attempt] = _wandb_attempts(run) - before  # one more attempt of the same run, in the copy
    attached = _closed_wandb_run(attempt)
    assert attached["id"] == wb["id"] and attached["resume"] and attached["exit"] == 0
    assert "tracer/outcome" not in attached["summary"] and not attached["history"]
    [artifact] = attached["artifacts"]
    assert (artifact["type"], artifact["name"]) == ("model-card", f"model-card-{wb['id']}")
    assert sorted(artifact["files"]) == sorted(CARD)
    for name, (digest, staged) in artifact["files"].items():
        data = (out / name).read_bytes()
        assert digest == base64.b64encode(hashlib.md5(data).digest()).decode()
        assert Path(staged).read_bytes() == data  # what wandb sync uploads
    assert f"wandb sync {attempt.parent}" in doc["tracked"]["wandb"]


def test_a_wandb_run_json_of_an_earlier_tracer_attaches_in_the_mode_its_files_show(
        logged, tmp_path, monkeypatch):
    from tracer_plugins.loggers.wandb import attach_files

    _offline(monkeypatch, tmp_path / "home")
    monkeypatch.delenv("WANDB_MODE")  # the mode comes from the run's offline folders
    run = _copied_run(logged, tmp_path)
    wb = json.loads((run / "wandb_run.json").read_text())
    (run / "wandb_run.json").write_text(json.dumps({k: wb[k] for k in ("id", "project",
                                                                         "entity")}))
    card = tmp_path / "README.md"
    card.write_text("# card\n")
    before = _wandb_attempts(run)
    where = attach_files(run, [card], "model_card")
    assert where.startswith(f"W&B run {wb['id']} (offline), artifact model-card-{wb['id']}")
    [attempt] = _wandb_attempts(run) - before
    [artifact] = _closed_wandb_run(attempt)["artifacts"]
    assert sorted(artifact["files"]) == ["README.md"]
    assert attach_files(tmp_path, [card], "model_card") is None  # no W&B run kept there


def test_export_warns_once_per_tracker_that_cannot_take_the_card(logged, runner, tmp_path,
                                                                 monkeypatch):
    _offline(monkeypatch, tmp_path / "home")
    run = _copied_run(logged, tmp_path)
    gone = tmp_path / "moved" / "mlflow.db"
    saved = json.loads((run / "mlflow_run.json").read_text())
    (run / "mlflow_run.json").write_text(json.dumps({
        **saved, "tracking_uri": f"sqlite:///{gone.as_posix()}"}))
    monkeypatch.setitem(sys.modules, "wandb", None)  # import raises ImportError, as when absent
    before = _wandb_attempts(run)
    doc, stderr = _export_card(runner, run, tmp_path / "export")
    assert doc["tracked"] == {}
    assert stderr.count("warning") == 2, stderr
    stderr = _unwrapped(stderr)
    assert "model_card not attached to the run's 'mlflow' tracked run (FileNotFoundError: " \
        f"MLflow store sqlite:///{gone.as_posix()} not found" in stderr
    assert "model_card not attached to the run's 'wandb' tracked run (MissingResourceError: " \
        "attaching files to W&B run" in stderr and "pip install 'tracer-clip[wandb]'" in stderr
    assert not gone.parent.exists()  # no empty store made where the run's used to be
    assert _wandb_attempts(run) == before


def test_no_track_and_a_run_being_written_leave_the_trackers_alone(logged, runner, tmp_path,
                                                                   monkeypatch):
    from tracer_cli.rundir.lock import RunLock

    _offline(monkeypatch, tmp_path / "home")
    run = _copied_run(logged, tmp_path)
    before = _wandb_attempts(run)
    doc, stderr = _export_card(runner, run, tmp_path / "untracked", "--no-track")
    assert doc["tracked"] == {} and "attached" not in stderr and "warning" not in stderr
    with RunLock(run):  # as while `tracer finetune` trains it
        doc, stderr = _export_card(runner, run, tmp_path / "live")
    assert doc["tracked"] == {} and stderr.count("warning") == 1
    stderr = _unwrapped(stderr)
    assert "warning: model_card not attached to the tracked runs of" in stderr
    assert "(wandb, mlflow): the run is being written by another tracer process (PID " in stderr
    assert _wandb_attempts(run) == before


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
    wb.finish("interrupted")  # not a failure: the attempt saved a checkpoint
    wb = make_wandb({"project": "outcomes", "tags": ["a"]})
    wb.start(run_dir, recipe, 1)
    wb.finish("failed")
    interrupted, failed = (_closed_wandb_run(p) for p in
                           sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")))
    assert interrupted["exit"] == 0 and interrupted["project"] == "outcomes"
    assert interrupted["summary"]["tracer/outcome"] == "interrupted"
    assert [r["train/loss"] for r in interrupted["history"]] == [2.5]
    assert failed["exit"] == 1 and failed["summary"]["tracer/outcome"] == "failed"
    assert failed["resume"] and failed["id"] == interrupted["id"]


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
