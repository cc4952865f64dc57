"""The ``mlflow`` logger: an MLflow run, in a local store beside the run directories by default.

Needs MLflow's client (``pip install 'tracer-clip[mlflow]'``, which installs ``mlflow-skinny``, the
official client-only package; the full ``mlflow`` works too). Train numbers are logged as
``train/<key>`` metrics and evaluation metrics as ``eval/<model>/<dataset>/<metric>``, at the run's
step; the resolved recipe becomes the run's parameters (``train.lr``, ...) and a ``recipe.json``
artifact. The MLflow run id is kept in the run directory (``mlflow_run.json``), so ``tracer
finetune --resume`` continues the same MLflow run; its status ends FINISHED, FAILED or KILLED
(interrupted).

Options in ``[loggers.mlflow]``: ``tracking_uri`` (default: ``MLFLOW_TRACKING_URI``, else a store
next to the run directory, shared by the runs of one output folder: ``sqlite:///<output
folder>/mlflow.db`` when SQLAlchemy and Alembic are installed, as the ``mlflow`` extra installs
them, which every MLflow tool reads as it is (``mlflow ui --backend-store-uri
sqlite:///runs/mlflow.db``); without them a file store ``mlruns/``, which MLflow 3 reads only with
``MLFLOW_ALLOW_FILE_STORE=true`` set, as ``mlflow_run.json`` then says; the artifacts of a
SQLite store's new experiments go to ``mlartifacts/`` beside its file), ``experiment``
("tracer") and ``run_name`` (``run.name``). Evaluation counts and standard errors are not
metrics; a completed run's ``eval/*.json``, ``summary.json``, ``recipe.lock.toml`` and plots are
artifacts.

``tracer export`` attaches the model card it writes to the run's MLflow run (the factory's
``attach_files`` capability): artifacts under ``model_card/``, logged to the store that
``mlflow_run.json`` names, without changing the run's status.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import unquote, urlparse

from tracer_cli.sdk import (
    Options, atomic_write_json, eval_scalars, flat_params, flat_scalars, hookimpl, require_module,
    tracker_record_path)

DEFAULT_STORE = "mlruns"
DEFAULT_DB = "mlflow.db"
ARTIFACTS = "mlartifacts"
INSTALL = "'tracer-clip[mlflow]' (or: pip install mlflow-skinny)"
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# Characters MLflow accepts in metric and parameter names; others (from a dataset label) become _.
_NOT_ALLOWED = re.compile(r"[^\w./\- :]")
_MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit


class MlflowLogger:
    """One MLflow run per tracer run, through ``MlflowClient`` (no global MLflow state)."""

    def __init__(self, tracking_uri: str | None, experiment: str, run_name: str | None):
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.client = None
        self.run_id: str | None = None

    def start(self, run_dir: Path, recipe: dict[str, Any], resume_step: int | None) -> None:
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir)
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
            _default_uri(run_dir)
        reading = {}
        if _is_file_store(uri):
            # MLflow 3 keeps its file store in maintenance mode and wants this opt-in to use it;
            # a tracer recipe that names (or defaults to) a local folder has opted in.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            reading = {"read_with_env": {"MLFLOW_ALLOW_FILE_STORE": "true"}}
        self.client = MlflowClient(tracking_uri=uri)
        saved = _saved_id(run_dir) if resume_step is not None else None
        if saved is not None:
            self.run_id = saved
            self.client.update_run(saved, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found is not None else \
            self.client.create_experiment(self.experiment, artifact_location=_artifact_root(uri))
        run = self.client.create_run(experiment_id,
                                     run_name=self.run_name or recipe["run"]["name"])
        self.run_id = run.info.run_id
        atomic_write_json(tracker_record_path(run_dir, "mlflow"),
                          {"run_id": self.run_id, "tracking_uri": uri,
                           "experiment_id": experiment_id, **reading})
        self._log_recipe(recipe)

    def _log_recipe(self, recipe: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(_name(k), json.dumps(v) if not isinstance(v, str) else v)
                  for k, v in flat_params(recipe).items()]
        for i in range(0, len(params), _MAX_PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=params[i:i + _MAX_PARAMS_PER_CALL])
        self.client.log_dict(self.run_id, recipe, "recipe.json")

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._metrics(flat_scalars(scalars, "train/"), step)

    def log_eval(self, model: str, step: int, metrics: Mapping[str, Mapping[str, Any]],
                 primary: str) -> None:
        self._metrics(eval_scalars(metrics, f"eval/{model}/"), step)

    def log_files(self, run_dir: Path, paths: list[Path]) -> None:
        """The run's result files as artifacts, in folders as in the run directory."""
        for path in paths:
            folder = Path(path).relative_to(run_dir).parent.as_posix()
            self.client.log_artifact(self.run_id, str(path),
                                     artifact_path=None if folder == "." else folder)

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_name(k), v, now, step)
                                                    for k, v in values.items()])

    def finish(self, outcome: str) -> None:
        if self.run_id is not None:
            run_id, self.run_id = self.run_id, None
            self.client.set_terminated(run_id, status=STATUS[outcome])


def _default_uri(run_dir: Path) -> str:
    """SQLite beside the run directory when MLflow can use it (SQLAlchemy and Alembic), else the
    file store."""
    if all(importlib.util.find_spec(m) is not None for m in ("sqlalchemy", "alembic")):
        return f"sqlite:///{(run_dir.parent / DEFAULT_DB).resolve().as_posix()}"
    return (run_dir.parent / DEFAULT_STORE).resolve().as_uri()


def _artifact_root(uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite store's file (MLflow would put a new experiment's
    artifacts in ``./mlruns`` of whatever folder tracer runs in); None lets the store decide."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.parent / ARTIFACTS).resolve().as_uri()


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri


def _name(key: str) -> str:
    return _NOT_ALLOWED.sub("_", key)


def _saved_id(run_dir: Path) -> str | None:
    try:
        record = tracker_record_path(run_dir, "mlflow").read_text(encoding="utf-8")
        return json.loads(record)["run_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no MLflow run yet (the run started without this logger): a new one


def attach_files(run_dir: Path, paths: list[Path], folder: str) -> str | None:
    """Log ``paths`` as artifacts under ``folder`` to the MLflow run recorded in ``run_dir``
    (``mlflow_run.json``), in the store it names; the run's status is left as it is. None when
    the run directory has no MLflow run."""
    path = tracker_record_path(run_dir, "mlflow")
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        run_id, uri = saved["run_id"], saved["tracking_uri"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read {path} ({exc})") from None
    require_module("mlflow", f"attaching files to MLflow run {run_id}", INSTALL)
    from mlflow.tracking import MlflowClient

    missing = _missing_store(uri)
    if missing is not None:
        # MLflow would make a new, empty store there; the run is not in it.
        raise FileNotFoundError(f"MLflow store {uri} not found ({missing} does not exist)")
    with _environment(saved.get("read_with_env") or {}):
        client = MlflowClient(tracking_uri=uri)
        client.get_run(run_id)  # a run deleted from the store fails here, naming it
        for file in paths:
            client.log_artifact(run_id, str(file), artifact_path=folder)
    return f"MLflow run {run_id} in {uri}, artifacts {folder}/"


def _missing_store(uri: str) -> Path | None:
    """The local file or folder of a SQLite or file store that does not exist (None: it exists,
    or the store is a server)."""
    if uri.startswith("sqlite:///"):  # sqlite:////abs/path, or a path relative to the cwd
        place = Path(uri.removeprefix("sqlite:///").split("?")[0])
    elif _is_file_store(uri):
        place = Path(unquote(urlparse(uri).path)) if uri.startswith("file:") else Path(uri)
    else:
        return None
    return None if place.exists() else place


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` for the block (what ``mlflow_run.json`` says reading the
    store needs), then put back as they were."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update({key: str(value) for key, value in values.items()})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_mlflow(options: dict[str, Any]) -> MlflowLogger:
    opts = Options(options, path="loggers.mlflow")
    tracking_uri = opts.str("tracking_uri", default=None)
    experiment = opts.str("experiment", default="tracer")
    run_name = opts.str("run_name", default=None)
    opts.done()
    require_module("mlflow", "logger 'mlflow' (run.loggers)", INSTALL)
    return MlflowLogger(tracking_uri, experiment, run_name)


# A capability tracer reads without calling the factory (tracer_cli.sdk.contracts): `tracer export`
# attaches the model card to the run's MLflow run with it.
make_mlflow.attach_files = attach_files


@hookimpl
def tracer_register_loggers(registry) -> None:
    registry.add("mlflow", make_mlflow)
