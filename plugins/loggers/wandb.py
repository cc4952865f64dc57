"""The ``wandb`` logger: Weights & Biases, online or offline.

Needs the ``wandb`` package (``pip install 'tracer-clip[wandb]'``). The resolved recipe is the W&B
run's config; train numbers are logged as ``train/<key>`` and evaluation metrics as
``eval/<model>/<dataset>/<metric>``, at the run's step. ``WANDB_MODE=offline`` (or ``mode =
"offline"``) writes the run under the run directory's ``wandb/`` for a later ``wandb sync``. The
W&B run id is kept in the run directory (``wandb_run.json``), so ``tracer finetune --resume``
continues the same W&B run, asking W&B to resume it (``resume="allow"``; online, W&B marks the
run resumed; offline, each attempt is its own ``offline-run-*`` folder, which ``wandb sync``
joins). W&B ignores steps below the last one it has, so steps logged after the checkpoint keep
their first values there. An attempt stopped by a signal ends with exit code 0 and summary
``tracer/outcome = "interrupted"`` (it has a checkpoint and goes on); a failed run with exit
code 1. Evaluation counts and standard errors are not logged as metrics; a completed run's
``eval/*.json``, ``summary.json``, ``recipe.lock.toml`` and plots are saved as run files
(``wandb.save``, kept offline too). ``wandb_run.json`` also records the mode the run was logged in,
W&B's folder (``dir``, null for the run directory) and, once it ended, tracer's outcome.

``tracer export`` attaches the model card it writes to the run (the factory's ``attach_files``
capability): it resumes the W&B run by id in the mode it was logged in (``resume="must"``), logs
the card as an artifact of type ``model-card`` named ``model-card-<run id>`` (each export adds a
version) and finishes the run with the exit code it ended with (1 only for a failed run).
Offline, that is one more ``offline-run-*`` folder for ``wandb sync``.

Options in ``[loggers.wandb]``: ``project`` ("tracer"), ``entity`` (your default entity),
``name`` (``run.name``), ``group``, ``tags`` ([]), ``notes``, ``mode`` ("online" | "offline" |
"disabled"; default: ``WANDB_MODE``, else online), ``dir`` (where W&B keeps its files; default:
the run directory) and ``console`` ("off": tracer's progress output is not captured; "auto",
"wrap" or "redirect" capture it as W&B does).
"""

from __future__ import annotations

import json
import secrets
import string
from pathlib import Path
from typing import Any, Mapping

from tracer_cli.sdk import (
    Options, atomic_write_json, eval_scalars, flat_scalars, hookimpl, logger_folder,
    require_module, tracker_record_path)

INSTALL = "'tracer-clip[wandb]' (or: pip install wandb)"
MODES = ("online", "offline", "disabled")
CONSOLES = ("off", "auto", "wrap", "redirect")


class WandbLogger:
    """One W&B run per tracer run, continued on resume."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = settings
        self.run = None
        self.run_dir: Path | None = None
        self.record: dict[str, Any] = {}  # what wandb_run.json holds

    def start(self, run_dir: Path, recipe: dict[str, Any], resume_step: int | None) -> None:
        import wandb

        run_dir = Path(run_dir)
        s = self.settings
        saved = _saved_id(run_dir) if resume_step is not None else None
        run_id = saved or _new_id()
        # Kept before the run starts: a run that dies in its first steps still resumes into it.
        self.run_dir = run_dir
        self.record = {"id": run_id, "project": s["project"], "entity": s["entity"],
                       "dir": None if s["dir"] is None else str(Path(s["dir"]).resolve())}
        atomic_write_json(tracker_record_path(run_dir, "wandb"), self.record)
        self.run = wandb.init(
            id=run_id, resume="allow" if saved else None, project=s["project"],
            entity=s["entity"],
            name=s["name"] or recipe["run"]["name"], group=s["group"], tags=s["tags"],
            notes=s["notes"], mode=s["mode"], dir=str(s["dir"] or run_dir), config=recipe,
            settings=wandb.Settings(console=s["console"]))
        self.record["mode"] = _mode_of(self.run, s["mode"])
        atomic_write_json(tracker_record_path(run_dir, "wandb"), self.record)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(flat_scalars(scalars, "train/"), step=step)

    def log_eval(self, model: str, step: int, metrics: Mapping[str, Mapping[str, Any]],
                 primary: str) -> None:
        self.run.log(eval_scalars(metrics, f"eval/{model}/"), step=step)

    def log_files(self, run_dir: Path, paths: list[Path]) -> None:
        """The run's result files as W&B run files, in folders as in the run directory (offline
        they are copied into the attempt's ``files/`` at once, for ``wandb sync``)."""
        for path in paths:
            self.run.save(str(path), base_path=str(run_dir), policy="now")

    def finish(self, outcome: str) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.summary["tracer/outcome"] = outcome
            # Only a failure is one: an interrupted attempt saved a checkpoint and goes on.
            run.finish(exit_code=_exit_code(outcome))
            # Kept so that a later attach (tracer export) ends the run as this attempt did.
            atomic_write_json(tracker_record_path(self.run_dir, "wandb"),
                              {**self.record, "outcome": outcome})


def attach_files(run_dir: Path, paths: list[Path], folder: str) -> str | None:
    """Log ``paths`` as an artifact of type ``folder`` (``model_card``: ``model-card``) to the
    W&B run recorded in ``run_dir`` (``wandb_run.json``): the run is resumed by id in the mode it
    was logged in and finished again with the exit code it ended with. None when the run
    directory has no W&B run, or its run was logged with ``mode = "disabled"``."""
    run_dir = Path(run_dir)
    path = tracker_record_path(run_dir, "wandb")
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        run_id = saved["id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read {path} ({exc})") from None
    files_dir = Path(saved.get("dir") or run_dir)
    mode = saved.get("mode") or _mode_from_files(files_dir, run_id)
    if mode == "disabled":
        return None
    require_module("wandb", f"attaching files to W&B run {run_id}", INSTALL)
    import wandb

    kind = folder.replace("_", "-")
    name = f"{kind}-{run_id}"
    # "must": online, a run that is gone from W&B is an error rather than a new run.
    run = wandb.init(id=run_id, resume="must", project=saved.get("project"),
                     entity=saved.get("entity"), mode=mode, dir=str(files_dir),
                     settings=wandb.Settings(console="off"))
    try:
        artifact = wandb.Artifact(name, type=kind)
        for file in paths:
            artifact.add_file(str(file), name=Path(file).name)
        run.log_artifact(artifact)
        where = f"W&B run {run_id} ({mode}), artifact {name}"
        if mode == "offline":
            where += f"; upload it with: wandb sync {Path(run.dir).parent}"
    finally:
        run.finish(exit_code=_exit_code(saved.get("outcome")))
    return where


def _exit_code(outcome: str | None) -> int:
    return 1 if outcome == "failed" else 0


def _mode_of(run: Any, asked: str | None) -> str:
    """The mode W&B runs ``run`` in ("online", "offline" or "disabled")."""
    mode = getattr(getattr(run, "settings", None), "mode", None) or asked or "online"
    return {"dryrun": "offline", "run": "online"}.get(mode, mode)


def _mode_from_files(files_dir: Path, run_id: str) -> str:
    """For a ``wandb_run.json`` written before the mode was recorded: offline when W&B keeps an
    offline attempt of the run in ``files_dir``, else online."""
    offline = logger_folder(files_dir, "wandb").glob(f"offline-run-*-{run_id}")
    return "offline" if any(offline) else "online"


def _new_id() -> str:
    """A W&B run id (8 lowercase letters and digits, as W&B makes them)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _saved_id(run_dir: Path) -> str | None:
    try:
        record = tracker_record_path(run_dir, "wandb").read_text(encoding="utf-8")
        return json.loads(record)["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no W&B run yet (the run started without this logger): a new one


def make_wandb(options: dict[str, Any]) -> WandbLogger:
    opts = Options(options, path="loggers.wandb")
    settings = {
        "project": opts.str("project", default="tracer"),
        "entity": opts.str("entity", default=None),
        "name": opts.str("name", default=None),
        "group": opts.str("group", default=None),
        "tags": opts.str_list("tags", default=[]),
        "notes": opts.str("notes", default=None),
        "mode": opts.str("mode", default=None, choices=MODES),
        "dir": opts.path("dir", default=None),
        "console": opts.str("console", default="off", choices=CONSOLES),
    }
    opts.done()
    require_module("wandb", "logger 'wandb' (run.loggers)", INSTALL)
    return WandbLogger(settings)


# A capability tracer reads without calling the factory (tracer_cli.sdk.contracts): `tracer export`
# attaches the model card to the run's W&B run with it.
make_wandb.attach_files = attach_files


@hookimpl
def tracer_register_loggers(registry) -> None:
    registry.add("wandb", make_wandb)
