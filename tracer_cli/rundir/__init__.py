"""The run directory, the contract between commands: its layout, readers and writers. Every
command goes through this package; nothing else spells a file name of a run, the built-in
loggers' included. No torch import: readers stay cheap.

This module holds the layout (names and paths), the readers and writers of the run's files, the
checkpoints' retention and ``--overwrite``'s rules. Two modules beside it hold the rest:
:mod:`tracer_cli.rundir.checksums` (the SHA-256 of a file, its ``.sha256`` sidecar, whether a
checkpoint can be trusted, ``last.pt``'s publication) and :mod:`tracer_cli.rundir.lock` (the
single-writer lock). Both import this module, never the reverse, and it re-exports neither.

Layout owned here::

    runs/<name>/recipe.lock.toml             resolved recipe + a [lock] table (versions, git hash)
    runs/<name>/metrics.jsonl                one JSON object per log step, evaluation and event
    runs/<name>/eval/<tag>.json              metrics of one evaluated model (zeroshot, final_student)
    runs/<name>/eval/<tag>.correct.npz       its per-example correctness, one bit per example
    runs/<name>/summary.json                 the headline numbers, written last
    runs/<name>/.lock                        the writer lock (PID, host, start time of the holder)
    runs/<name>/last.pt                      the newest full checkpoint (a hard link to it)
    runs/<name>/last.pt.sha256               its SHA-256 (``sha256sum -c`` format)
    runs/<name>/checkpoints/step_N.pt        full training checkpoints, the newest
                                             ``train.keep_checkpoints`` of them
    runs/<name>/checkpoints/step_N.pt.sha256 their SHA-256, written just before the file appears
    runs/<name>/checkpoints/step_N.weights.pt  weights-only milestones (``train.keep_every``)
    runs/<name>/corrupt/                     checkpoints that failed verification, moved aside
    runs/<name>/.write-test                  the probe that proves the folder writable (removed)
    runs/<name>/tensorboard/, wandb/         what TensorBoard and W&B keep (:data:`LOGGER_FOLDERS`,
                                             :func:`logger_folder`)
    runs/<name>/<tracker>_run.json           a tracker's run id: wandb_run.json, mlflow_run.json
                                             (:func:`tracker_record_path`)

``tracer eval --output-dir RUN/eval/<folder>`` writes under ``eval/``.

A tracer run directory is a folder holding ``recipe.lock.toml``. ``--overwrite`` empties one, but
removes only the entries above (and the temporary files of atomic writes): anything else in it,
or any folder that is not a run, is refused with its contents named, and nothing is deleted
(:func:`clear_run`).

Debris. A process killed outright cannot remove the temporaries of its atomic writes
(``.NAME.RANDOM.tmp``); :func:`clean_debris` removes those of the run's own files, and
``finetune`` calls it when it takes the lock and when the run finishes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from tracer_cli.errors import UsageError
from tracer_cli.io import remove_stale_temps

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RECIPE_LOCK = "recipe.lock.toml"
METRICS = "metrics.jsonl"
EVAL = "eval"
SUMMARY = "summary.json"
CURVES = "curves.png"
LOCK = ".lock"
LAST = "last.pt"
CHECKPOINTS = "checkpoints"
CORRUPT = "corrupt"
SHA_SUFFIX = ".sha256"
WRITE_TEST = ".write-test"
CORRECT_SUFFIX = ".correct.npz"
# A full step checkpoint's file name (weights-only milestones excluded); group 1 is the step.
STEP_CHECKPOINT = re.compile(r"^step_(\d+)\.pt$")
# What tracer and its built-in loggers write at the top of a run directory (see the layout above).
_OWN_FILES = (RECIPE_LOCK, METRICS, SUMMARY, LAST, LAST + SHA_SUFFIX, WRITE_TEST)
# What the built-in loggers keep in a run directory: the folders TensorBoard and W&B write, and
# a tracker's run id in ``<tracker>_run.json`` (wandb_run.json, mlflow_run.json).
LOGGER_FOLDERS = ("tensorboard", "wandb")
TRACKER_RECORD_SUFFIX = "_run.json"
_OWN_FOLDERS = (CHECKPOINTS, EVAL, CORRUPT, *LOGGER_FOLDERS)
# A tracker's run id and atomic_path's temporary files.
_OWN_PATTERN = re.compile(rf"^(?:[a-z0-9-]+{re.escape(TRACKER_RECORD_SUFFIX)}|\..+\.tmp)$")
_CHECKPOINT_NAME = r"step_\d+(?:\.weights)?\.pt(?:\.sha256)?"
_CHECKPOINT = re.compile(rf"^{_CHECKPOINT_NAME}$")
_CHECKPOINT_FILE = re.compile(rf"^(?:{_CHECKPOINT_NAME}|\..+\.tmp)$")
_LISTED = 5  # entries named in a refusal



# --------------------------------------------------------------------------- paths

def recipe_lock_path(run_dir: Path) -> Path:
    return Path(run_dir) / RECIPE_LOCK


def metrics_path(run_dir: Path) -> Path:
    return Path(run_dir) / METRICS


def eval_path(run_dir: Path, tag: str) -> Path:
    return Path(run_dir) / EVAL / f"{tag}.json"


def curves_path(run_dir: Path) -> Path:
    """The plot of the evaluations during training (``run.eval_every``)."""
    return Path(run_dir) / EVAL / CURVES


def summary_path(run_dir: Path) -> Path:
    return Path(run_dir) / SUMMARY


def logger_folder(run_dir: Path, logger: str) -> Path:
    """The folder a built-in logger keeps in the run directory: ``tensorboard/`` (TensorBoard's
    event files, unless ``[loggers.tensorboard] log_dir`` moves them) or ``wandb/`` (W&B's own,
    made under the folder it is given). ``--overwrite`` counts these as tracer's."""
    if logger not in LOGGER_FOLDERS:
        raise ValueError(f"no run-directory folder is declared for logger {logger!r}; declared: "
                         f"{', '.join(LOGGER_FOLDERS)}")
    return Path(run_dir) / logger


def tracker_record_path(run_dir: Path, tracker: str) -> Path:
    """Where a tracker logger records its run id in the run directory (``wandb_run.json``,
    ``mlflow_run.json``), so that ``--resume`` and ``tracer export`` find the tracked run again.
    ``tracker`` is a logger name: lower-case letters, digits and '-'."""
    if not re.fullmatch(r"[a-z0-9-]+", tracker):
        raise ValueError(f"tracker name {tracker!r}: use lower-case letters, digits and '-'")
    return Path(run_dir) / f"{tracker}{TRACKER_RECORD_SUFFIX}"


def is_run_dir(path: Path) -> bool:
    return recipe_lock_path(path).is_file()


def contents(run_dir: Path) -> list[Path]:
    """What a run directory holds besides its lock, in name order (empty when it is absent)."""
    run_dir = Path(run_dir)
    return sorted(p for p in run_dir.iterdir() if p.name != LOCK) if run_dir.is_dir() else []


def last_path(run_dir: Path) -> Path:
    return Path(run_dir) / LAST


def step_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step}.pt"


def weights_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step}.weights.pt"


def sha_path(path: Path) -> Path:
    return path.with_name(path.name + SHA_SUFFIX)


def resolve_checkpoint(run_dir: Path, given: Path) -> Path:
    """A checkpoint path as the user gave it, or relative to the run (``checkpoints/step_N.pt``)."""
    inside = Path(run_dir) / given
    return inside if not given.exists() and inside.is_file() else given


def latest_run(root: Path) -> Path | None:
    """The most recent run directly under ``root`` (``tracer eval`` without a source), or None.

    A run here is a folder holding both ``recipe.lock.toml`` and ``last.pt``; the most recent is
    the one whose ``last.pt`` was written last (its modification time: the newest checkpoint's
    write), so a finished run, a stopped one and one still training all count by their newest
    checkpoint. Equal times go to the name that sorts last.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    found = []
    for run in root.iterdir():
        last = last_path(run)
        if run.is_dir() and is_run_dir(run) and last.is_file():
            found.append((last.stat().st_mtime_ns, run.name, run))
    return max(found)[2] if found else None


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The full step checkpoints of a run, newest first (weights-only milestones excluded)."""
    folder = Path(run_dir) / CHECKPOINTS
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = STEP_CHECKPOINT.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


# --------------------------------------------------------------------------- reading and writing

def read_recipe_lock(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the resolved recipe's tables, the ``[lock]`` table: versions, device, backbone)."""
    path = recipe_lock_path(run_dir)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"'{run_dir}' is not a tracer run directory (no {RECIPE_LOCK})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"'{path}' is not valid TOML: {exc}") from None
    lock = doc.pop("lock", {})
    return doc, lock if isinstance(lock, dict) else {}


def strip_lock_table(tables: dict[str, Any]) -> dict[str, Any]:
    """A recipe's tables without a ``[lock]`` table (a run's lock file read as a recipe)."""
    return {k: v for k, v in tables.items() if k != "lock"}


def write_recipe_lock(run_dir: Path, text: str) -> Path:
    from tracer_cli.io import atomic_write_text

    path = recipe_lock_path(run_dir)
    atomic_write_text(path, text)
    return path


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    from tracer_cli.io import append_jsonl

    append_jsonl(metrics_path(run_dir), record)


def end_partial_metrics_line(run_dir: Path) -> None:
    """A process killed mid-write may leave a line without its newline; appending to it would
    corrupt the next record too."""
    path = metrics_path(run_dir)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as fh:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                fh.write(b"\n")


def read_metrics(run_dir: Path) -> Iterator[dict[str, Any]]:
    """Records of ``metrics.jsonl`` (a line being written right now is skipped)."""
    path = metrics_path(run_dir)
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def write_eval(run_dir: Path, tag: str, metrics: dict[str, Any]) -> Path:
    from tracer_cli.io import atomic_write_json

    path = eval_path(run_dir, tag)
    atomic_write_json(path, metrics)
    return path


def read_eval(run_dir: Path, tag: str) -> Any:
    return read_json(eval_path(run_dir, tag))


def correct_path(run_dir: Path, tag: str) -> Path:
    return Path(run_dir) / EVAL / f"{tag}{CORRECT_SUFFIX}"


def write_correct(run_dir: Path, tag: str, correct: dict[str, Any]) -> Path:
    """Per dataset, which examples the model ``tag`` got right (boolean vectors), bit-packed:
    what ``tracer compare`` resamples to give a mean over seeds on shared test images its SE."""
    import numpy as np

    from tracer_cli.io import atomic_path

    names = list(correct)
    arrays = {f"bits_{i}": np.packbits(np.asarray(correct[n], dtype=bool))
              for i, n in enumerate(names)}
    path = correct_path(run_dir, tag)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, names=np.array(names, dtype=str),
                            n=np.array([len(correct[n]) for n in names]), **arrays)
    return path


def read_correct(run_dir: Path, tag: str) -> dict[str, Any] | None:
    """What :func:`write_correct` stored (name -> boolean vector), or None when the file is
    absent or damaged (runs from before it existed, tasks without per-example predictions)."""
    import numpy as np

    try:
        with np.load(correct_path(run_dir, tag)) as z:
            return {str(name): np.unpackbits(z[f"bits_{i}"], count=int(n)).astype(bool)
                    for i, (name, n) in enumerate(zip(z["names"], z["n"]))}
    except (OSError, ValueError, KeyError):
        return None


def eval_files(run_dir: Path, nested: bool = False) -> list[Path]:
    """Every ``eval/*.json`` in name order; ``nested`` adds the documents ``tracer eval
    --output-dir RUN/eval/<folder>`` writes (``eval/<folder>/eval.json``)."""
    folder = Path(run_dir) / EVAL
    found = [*folder.glob("*.json"), *(folder.glob("*/eval.json") if nested else [])]
    return sorted(found)


def result_files(run_dir: Path) -> list[Path]:
    """What a finished run has to show, for trackers' artifacts: the recipe lock, the summary,
    every evaluation document and plot under ``eval/`` (``tracer eval --output-dir RUN/eval/..``
    included)."""
    run_dir = Path(run_dir)
    folder = run_dir / EVAL
    found = [recipe_lock_path(run_dir), summary_path(run_dir),
             *sorted(p for p in folder.rglob("*") if p.suffix in (".json", ".png"))]
    return [p for p in found if p.is_file()]


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    from tracer_cli.io import atomic_write_json

    path = summary_path(run_dir)
    atomic_write_json(path, summary)
    return path


def read_summary(run_dir: Path) -> Any:
    """The run's ``summary.json``, or None while it is being written or when it is absent."""
    return read_json(summary_path(run_dir))


def read_json(path: Path) -> Any:
    """A JSON file of a run, or None when it is absent, being written or damaged."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the built network

# Entries of a backbone's ``describe()`` that decide which network its weights belong to: a run
# rebuilt later (eval, export, --resume) must come out as the lock file says it was trained. Each
# maps to the one value an older tracer, which did not record the entry, may have built otherwise
# (before QuickGELU conformance, OpenAI-tag weights went into a GELU network).
BUILT_AS = {"activation": "QuickGELU"}


def check_built_as_locked(run_dir: Path, locked: dict[str, Any], built: dict[str, Any]
                          ) -> str | None:
    """Compare the backbone rebuilt for a run (``built``: its ``describe()``) with the one its
    lock file recorded (``locked``: ``[lock.backbone]``).

    A recorded entry of :data:`BUILT_AS` that differs is a :class:`UsageError` (the weights would
    be read into another network). An entry the lock file does not record (an older tracer wrote
    it) cannot be checked: when the rebuilt value is the one such a tracer may not have built, the
    returned notice says so, so that such a run is not silently read into another network.
    """
    unrecorded = []
    for key, changed in BUILT_AS.items():
        if built.get(key) is None:
            continue
        if locked.get(key) is None:
            if built[key] == changed:
                unrecorded.append(f"{key} {built[key]}")
        elif locked[key] != built[key]:
            raise UsageError(f"run '{run_dir}' was trained with {key} {locked[key]} (its "
                             f"{RECIPE_LOCK}), but its recipe now builds {built[key]}; use the "
                             "tracer version that trained it, or finetune it again")
    if not unrecorded:
        return None
    return (f"run '{run_dir}': its {RECIPE_LOCK} does not record the network it was trained in "
            f"(an older tracer wrote it); rebuilt with {', '.join(unrecorded)}, as its pretrained "
            "weights require. Runs with OpenAI weights made before tracer built them with "
            "QuickGELU trained a GELU network: finetune those again for comparable numbers")


# --------------------------------------------------------------------------- checkpoints

def move_aside(run_dir: Path, path: Path) -> Path:
    """Move a checkpoint that failed verification (and its checksum) to ``corrupt/``; never
    delete it: it is the user's data, and may still be worth a look."""
    folder = Path(run_dir) / CORRUPT
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = "" if path.parent == Path(run_dir) else f"{path.parent.name}-"
    target = folder / f"{prefix}{path.name}.{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = folder / f"{prefix}{path.name}.{stamp}-{n}"
    os.replace(path, target)
    sha = sha_path(path)
    if sha.exists():
        os.replace(sha, target.with_name(target.name + SHA_SUFFIX))
    return target


# --------------------------------------------------------------------------- retention

def prune(run_dir: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` full step checkpoints (0 keeps every one). Call it only
    after the newest one is completely written and verified to be on disk."""
    if keep <= 0:
        return []
    removed = []
    for _, path in step_checkpoints(run_dir)[keep:]:
        path.unlink(missing_ok=True)
        sha_path(path).unlink(missing_ok=True)
        removed.append(path)
    return removed


def clear_run(run_dir: Path) -> None:
    """Empty a run directory for ``--overwrite``, keeping the folder (a symbolic link stays a link
    to the same folder) and its lock. Only a tracer run directory is emptied, and only when
    everything in it is what tracer writes: otherwise a :class:`UsageError` names the folder and
    what is in it, and nothing is deleted."""
    run_dir = Path(run_dir)
    entries = contents(run_dir)
    where = f"'{run_dir}'" + (f" (a link to '{os.path.realpath(run_dir)}')"
                              if run_dir.is_symlink() else "")
    if not is_run_dir(run_dir):
        raise UsageError(f"--overwrite: {where} is not a tracer run directory (it has no "
                         f"{RECIPE_LOCK}) and holds {_listing(run_dir, entries)}; tracer replaces "
                         "only its own runs: move these away or choose another --output-dir or "
                         "run.name")
    foreign = [p for p in entries if not _written_by_tracer(p)]
    checkpoints = run_dir / CHECKPOINTS
    if checkpoints in entries and checkpoints not in foreign:
        foreign += sorted(p for p in checkpoints.iterdir()
                          if not (_CHECKPOINT_FILE.match(p.name) and _plain_file(p)))
    if foreign:
        raise UsageError(f"--overwrite: run directory {where} holds what tracer did not write: "
                         f"{_listing(run_dir, foreign)}; move it away first (nothing was "
                         "deleted), or choose another --output-dir or run.name")
    for path in entries:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def _plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _written_by_tracer(path: Path) -> bool:
    if path.name in _OWN_FOLDERS:
        return path.is_dir() and not path.is_symlink()
    return (path.name in _OWN_FILES or bool(_OWN_PATTERN.match(path.name))) and _plain_file(path)


def _listing(run_dir: Path, paths: list[Path]) -> str:
    """The first few of ``paths``, relative to the run, folders with a trailing '/'."""
    names = [str(p.relative_to(run_dir)) + ("/" if p.is_dir() and not p.is_symlink() else "")
             for p in paths[:_LISTED]]
    more = f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
    return ", ".join(names) + more


def remove_checkpoints(run_dir: Path, keep_last: bool = False) -> None:
    """Delete a run's checkpoints and their checksums (every other file stays); ``keep_last``
    keeps ``last.pt``."""
    folder = Path(run_dir) / CHECKPOINTS
    paths = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    for path in paths + ([] if keep_last else [last_path(run_dir)]):
        path.unlink(missing_ok=True)
        sha_path(path).unlink(missing_ok=True)


def clean_debris(run_dir: Path) -> list[Path]:
    """Remove the temporaries of the run's own files (checkpoints, ``last.pt``, checksums,
    ``recipe.lock.toml``, summary and evaluations) that a killed process left behind; returns
    them.
    Temporaries of a live writer stay (see :func:`tracer_cli.io.remove_stale_temps`)."""
    run_dir = Path(run_dir)
    return [*remove_stale_temps(run_dir, _OWN_FILES.__contains__),
            *remove_stale_temps(run_dir / CHECKPOINTS, lambda n: bool(_CHECKPOINT.match(n))),
            *remove_stale_temps(run_dir / EVAL, lambda n: n.endswith(".json"))]
