"""``tracer export`` as a library: a run's model in formats other tools load as they are.

Formats (each a folder, plus the model card: ``README.md``, the card with Hugging Face's YAML
front matter, which the Hub reads; ``MODEL_CARD.md``, the same card without it, as earlier
versions wrote; and ``model_card.json``):

- a backbone's own formats, declared by its plugin's factory in ``export_formats``
  (:class:`tracer_cli.sdk.contracts.ExportFormat`): the ``openclip`` backbone's ``open_clip``, a
  ``local-dir:`` folder open_clip loads. A run whose backbone does not declare the format asked
  for is refused (exit 2) before any weights are read.
- ``safetensors``: the state dict alone (``model.safetensors``), for any backbone.
- ``onnx``: ``image_encoder.onnx`` and ``text_encoder.onnx``, the normalized ``encode_image`` /
  ``encode_text`` with a dynamic batch axis (torch's default, ``torch.export``-based exporter).
- ``torchscript``: the same two encoders, traced and frozen (``image_encoder.pt``,
  ``text_encoder.pt``; each holds only its own tower's weights).

The weights are the run's student, its teacher (``which="teacher"``), or their WiSE-FT mix with
the pretrained weights. Everything that needs no weights is checked first; the folder is built
under a temporary name and renamed into place only when complete, so a failed export leaves
nothing behind. ONNX and TorchScript graphs are checked against PyTorch at a batch size other than
the one they were traced with before the folder is published.

Once the folder is published, its card files are attached to the run's tracked runs (the
``run.loggers`` whose plugins declare ``attach_files``: artifacts under ``model_card``), unless
``track`` is off; a tracker that cannot take them is a warning, never a failed export.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import inspect
import json
import logging
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import tracer_cli
from tracer_cli import rundir
from tracer_cli.rundir.checksums import file_sha256
from tracer_cli.errors import DiskFullError, MissingResourceError, RunError, UsageError, no_space
from tracer_cli.events import Reporter, current_reporter
from tracer_cli.io import atomic_dir, folder_blocker, folder_problem, remove_stale_temps
from tracer_cli.sdk.host import get_host
from tracer_cli.recipe import VIEW_NAMES, Recipe
from tracer_cli.commands.finished_run import WHICH, RunDir
from tracer_cli.sdk.contracts import Backbone, ExportedModel, ExportFormat
from tracer_cli.teacher.spec import AVERAGING_KINDS, METHOD_LABELS, TeacherSpec

# Formats every backbone can be exported in; backbones declare their own besides (formats()).
CORE_FORMATS = ("safetensors", "onnx", "torchscript")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CARD_FILES = ("README.md", "MODEL_CARD.md", "model_card.json")
# Where trackers keep the card of a run's export (an artifact folder or kind).
TRACKED_CARD_FOLDER = "model_card"
# What the Hugging Face Hub shows the model as: a CLIP scores images against class prompts.
HUB_PIPELINE = "zero-shot-image-classification"
SAFETENSORS_WEIGHTS = "model.safetensors"
ONNX_OPSET = 18
# Graphs whose weights exceed this go to a side file (protobuf stops at 2 GiB).
ONNX_EXTERNAL_DATA_BYTES = 1 << 30
CARD_SCHEMA = 1
_PROBE_BATCH = 3  # differs from the traced batch (2), so a baked-in batch size is caught
_EXAMPLE_TEXTS = ("a photo of a cat.", "a sketch of a large red bus.")
_PROBE_TEXTS = ("a dog.", "a photo of a small bird on a branch.", "a cartoon of a house.")


@dataclass
class ExportRequest:
    """What ``tracer export`` was asked for (``which`` None means the student)."""

    run_dir: Path
    format: str
    output: Path
    which: str | None = None
    wise_alpha: float | None = None
    precision: str = "fp32"
    checkpoint: Path | None = None
    overwrite: bool = False
    track: bool = True  # attach the card to the run's tracked runs (MLflow, W&B, ...)


@dataclass
class ExportResult:
    output: Path
    card: dict[str, Any]
    # logger name -> where the card was attached (its tracked run)
    tracked: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclass
class _Subject:
    """The model being exported and what the writers need to know about it."""

    backbone: Backbone
    module: nn.Module
    dtype: torch.dtype
    image_size: tuple[int, int] | None
    preprocess: dict[str, Any] | None
    model_cfg: dict[str, Any] | None
    example_tokens: torch.Tensor
    own_format: ExportFormat | None = None  # the backbone's format, when that is the one asked

    def exported(self) -> ExportedModel:
        """The model as the backbone's own :class:`ExportFormat` receives it."""
        def save_weights(path: Path) -> dict[str, torch.Tensor]:
            state = _state(self.module, self.dtype)
            _save_safetensors(state, path, self)
            return state

        return ExportedModel(self.backbone, self.module, self.model_cfg, self.preprocess,
                             save_weights)


# --------------------------------------------------------------------------- checks before work


def check_request(req: ExportRequest) -> ExportRequest:
    """Every check that needs no weights; returns the request with defaults filled in."""
    req = dataclasses.replace(req, run_dir=Path(req.run_dir), output=Path(req.output),
                              which=req.which or "student")
    known = formats()
    if req.format not in known:
        raise UsageError(f"--format '{req.format}': allowed: {', '.join(known)}"
                         + _did_you_mean(req.format, known))
    if req.precision not in PRECISIONS:
        raise UsageError(f"--precision '{req.precision}': allowed: {', '.join(PRECISIONS)}"
                         + _did_you_mean(req.precision, PRECISIONS))
    if req.which not in WHICH:
        raise UsageError(f"--which '{req.which}': allowed: {', '.join(WHICH)}")
    if req.wise_alpha is not None and not 0.0 <= req.wise_alpha <= 1.0:
        raise UsageError(f"--wise-alpha {req.wise_alpha:g} is outside [0, 1] (0 is the pretrained "
                         "model, 1 the finetuned one)")
    if req.format == "onnx" and req.precision != "fp32":
        raise UsageError("--format onnx writes fp32 graphs only (fp16 graphs are not reliable on "
                         "CPU onnxruntime); drop --precision, or convert the fp32 graphs with "
                         "onnxconverter-common")
    if req.format == "onnx":
        _require_onnx()
    _check_output(req)
    return req


def formats() -> tuple[str, ...]:
    """Every ``--format``: those the registered backbones declare (``export_formats``), then the
    ones for every backbone (a backbone cannot redefine those)."""
    own: list[str] = []
    for entry in get_host().backbones.entries():
        own += [f for f in _declared_formats(entry.factory) if f not in own]
    return (*own, *CORE_FORMATS)


def _declared_formats(factory: Any) -> dict[str, ExportFormat]:
    """The formats a backbone factory declares, less the core's (which it cannot redefine)."""
    declared_formats = getattr(factory, "export_formats", None) or {}
    return {name: fmt for name, fmt in declared_formats.items() if name not in CORE_FORMATS}


def _did_you_mean(value: str, allowed: Any) -> str:
    close = difflib.get_close_matches(value, list(allowed), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _require_onnx() -> None:
    missing = []
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingResourceError(f"--format onnx needs {' and '.join(missing)}: pip install "
                                   "'tracer-clip[export]' (onnx, onnxscript, onnxruntime)")
    if "dynamic_shapes" not in inspect.signature(torch.onnx.export).parameters:
        raise MissingResourceError(f"--format onnx needs torch >= 2.5 (its torch.export-based "
                                   f"ONNX exporter); this is torch {torch.__version__}")


def _check_output(req: ExportRequest) -> None:
    problem = folder_problem(req.output)
    if problem is not None:
        raise UsageError(f"--output '{req.output}': {problem}; choose a folder with a shorter "
                         "name on a disk you can write to")
    out, run = req.output.resolve(), req.run_dir.resolve()
    if out == run or out in run.parents:
        raise UsageError(f"--output '{req.output}' would replace the run directory itself; choose "
                         "a folder outside it or below it (e.g. RUN_DIR/export/onnx)")
    if req.output.exists() and not req.output.is_dir():
        raise UsageError(f"--output '{req.output}' is a file; give a folder")
    blocker = folder_blocker(req.output)
    if blocker is not None:
        raise UsageError(f"--output '{req.output}': '{blocker}' is a file, so no folder can be "
                         "made below it; give a folder path")
    if req.output.is_dir() and any(req.output.iterdir()) and not req.overwrite:
        raise UsageError(f"--output '{req.output}' exists and is not empty; pass --overwrite to "
                         "replace it, or choose another folder")


def _own_format(req: ExportRequest, recipe: Recipe) -> ExportFormat | None:
    """The backbone's own writer of ``req.format`` (None for the formats every backbone has); a
    backbone that does not declare the format is a usage error, found before any weights."""
    if req.format in CORE_FORMATS:
        return None
    backbone = recipe.model.backbone
    registry = get_host().backbones
    own = _declared_formats(registry.get(backbone).factory) if backbone in registry else {}
    if req.format in own:
        return own[req.format]
    writers = [e.name for e in registry.entries() if req.format in _declared_formats(e.factory)]
    usable = [*own, *CORE_FORMATS]
    raise UsageError(f"--format {req.format} needs a backbone that writes it "
                     f"({', '.join(writers)}); this run uses '{backbone}' (use --format "
                     f"{', '.join(usable[:-1])} or {usable[-1]})")


# --------------------------------------------------------------------------- the export


def export(req: ExportRequest, reporter: Reporter | None = None) -> ExportResult:
    """Write the requested export folder; returns it with its model card."""
    reporter = reporter or current_reporter()
    # What a killed export left beside the output goes first: an earlier export it had moved
    # aside is put back before the checks look at the output.
    output = Path(req.output)
    remove_stale_temps(output.parent, lambda name: name == output.name)
    req = check_request(req)
    run = RunDir(req.run_dir, checkpoint=req.checkpoint)
    own_format = _own_format(req, run.recipe)
    run.weights(req.which)  # a missing or truncated checkpoint fails here, before any writing
    reporter.notice(f"loading the {req.which} of {run.path} ({run.checkpoint_path.name}"
                    + (f", WiSE-FT α={req.wise_alpha:g}" if req.wise_alpha is not None else "")
                    + ")")
    backbone, module = run.model(req.which, req.wise_alpha)
    subject = _subject(backbone, module.cpu().eval(), PRECISIONS[req.precision], req.format,
                       own_format)
    with atomic_dir(req.output) as tmp:
        try:
            card = _write_folder(tmp, req, run, subject, reporter)
        except DiskFullError as exc:  # named as the user knows it, not by the temporary folder
            inside = Path(exc.path)
            name = inside.relative_to(tmp) if inside.is_relative_to(tmp) else inside.name
            raise DiskFullError(req.output / name, "nothing was written; free some space and "
                                "export again") from None
    reporter.notice(f"wrote {req.format} export to {req.output}")
    tracked = _attach_card(req, run, reporter) if req.track else {}
    return ExportResult(req.output, card, tracked)


def _attach_card(req: ExportRequest, run: RunDir, reporter: Reporter) -> dict[str, str]:
    """The published card's files, attached to the tracked runs of the run's loggers."""
    from tracer_cli.engine.loggers import attach_to_tracked_runs

    paths = [req.output / name for name in CARD_FILES if (req.output / name).is_file()]
    tracked = attach_to_tracked_runs(run.path, list(run.recipe.run.loggers), paths,
                                     TRACKED_CARD_FOLDER, reporter.notice)
    for name, where in tracked.items():
        reporter.notice(f"attached the model card to the run's {name} run: {where}")
    return tracked


def _write_folder(folder: Path, req: ExportRequest, run: RunDir, subject: _Subject,
                  reporter: Reporter) -> dict[str, Any]:
    """Every file of the export in ``folder``; returns the model card."""
    if subject.own_format is not None:
        details = subject.own_format.write(folder, subject.exported())
    else:
        details = WRITERS[req.format](folder, subject, reporter)
    head = _write_head(folder, run, req, subject.dtype)
    if head is not None:
        details["head"] = head
    card = build_card(req, run, subject, folder, details)
    write_card(folder, card)
    _usual_permissions(folder)
    return card


HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"


def _write_head(folder: Path, run: RunDir, req: ExportRequest, dtype: torch.dtype
                ) -> dict[str, Any] | None:
    """A run that trained a task head (lp/ft/lpft, vqa) exports it beside the backbone, in every
    format: ``head.safetensors`` (its tensors; WiSE-FT mixes it from its θ₀ initialisation like
    the backbone) and ``head.json`` (what it computes from which features, and what each output
    means: class names or the answer vocabulary). None for runs without a head."""
    from tracer_cli.engine.build import build_task
    from tracer_cli.commands.finished_run import build_head, checkpoint_head, interpolate

    states = checkpoint_head(run.checkpoint)
    if states is None:
        return None
    trained, init = states
    state = trained if req.wise_alpha is None else interpolate(init, trained, req.wise_alpha)
    head = build_head(build_task(run.recipe), state, run.checkpoint_path)
    tensors = {name: (t.detach().cpu().to(dtype) if t.is_floating_point() else t.detach().cpu())
               .contiguous() for name, t in head.state_dict().items()
               if isinstance(t, torch.Tensor)}
    _save_tensors(tensors, folder / HEAD_WEIGHTS,
                  {"format": "pt", "producer": f"tracer {tracer_cli.__version__}"})
    describe = head.describe() if hasattr(head, "describe") else {"kind": type(head).__name__}
    config = {"task": run.recipe.task.name, "which": req.which, "wise_alpha": req.wise_alpha,
              **describe, "tensors": {n: list(t.shape) for n, t in tensors.items()}}
    (folder / HEAD_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return {"weights": HEAD_WEIGHTS, "config": HEAD_CONFIG, "kind": config.get("kind")}


def _usual_permissions(folder: Path) -> None:
    """The temporary folder is private (mkdtemp: 0700, some writers 0600); an export is meant to
    be shared and served, so it gets the modes the umask gives any folder the user creates."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _subject(backbone: Backbone, module: nn.Module, dtype: torch.dtype, fmt: str,
             own_format: ExportFormat | None) -> _Subject:
    preprocess = _preprocess_cfg(backbone)
    size = (preprocess or {}).get("size")
    image_size = None if size is None else \
        (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    if image_size is None and fmt in ("onnx", "torchscript"):
        raise RunError("cannot tell the backbone's input image size (it has no preprocess "
                       f"config); --format {fmt} needs it to trace the image encoder")
    model_cfg = None
    if hasattr(backbone, "model_config"):
        try:
            model_cfg = backbone.model_config()
        except UsageError:
            if own_format is not None:
                raise  # the backbone's own format is built from that config
            # Other formats only mention the config in the card; its absence is not an error.
    tokens = backbone.tokenize(list(_EXAMPLE_TEXTS))
    return _Subject(backbone, module, dtype, image_size, preprocess, model_cfg, tokens,
                    own_format)


def _preprocess_cfg(backbone: Backbone) -> dict[str, Any] | None:
    """The backbone's own preprocessing (its optional ``preprocess_cfg``), as JSON values."""
    cfg = getattr(backbone, "preprocess_cfg", None)
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    return json.loads(json.dumps(cfg)) if cfg else None  # tuples → lists, as the file holds them


# --------------------------------------------------------------------------- writers


def _state(module: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict on CPU with floating tensors cast to ``dtype``; tensors that share storage
    are copied apart (safetensors refuses shared memory)."""
    out, seen = {}, set()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu()
        t = (t.to(dtype) if t.is_floating_point() else t).contiguous()
        storage = t.untyped_storage().data_ptr()
        if storage in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _save_safetensors(state: dict[str, torch.Tensor], path: Path, subject: _Subject) -> None:
    meta = {"format": "pt", "producer": f"tracer {tracer_cli.__version__}",
            "dtype": str(subject.dtype).removeprefix("torch.")}
    _save_tensors(state, path, meta)


def _save_tensors(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save

    _write_file(path, lambda fh: fh.write(stable_header(save(state, metadata=meta))))


def stable_header(blob: bytes) -> bytes:
    """A safetensors file with its ``__metadata__`` keys in sorted order.

    safetensors writes the metadata in hash order (a Rust ``HashMap``), so the same tensors got
    another file, and another SHA-256 in the model card, at every export. The header is
    rewritten with the same entries, metadata sorted, padded with spaces to the same length
    (the format pads its header with spaces), so an export is a function of the run alone."""
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + length])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > length:  # a writer that spelled its header more tightly: keep its bytes
        return blob
    return blob[:8] + text.ljust(length, b" ") + blob[8 + length:]


def _write_file(path: Path, write: Callable[[Any], Any]) -> None:
    """``write(file object)`` into ``path``, through Python's own file object.

    torch.jit's and safetensors' writers given a path write in C++ or Rust, where a full disk
    aborts the process (TorchScript: exit 134, skipping every cleanup) or becomes an opaque
    error; through a Python file it is an OSError, raised here as :class:`DiskFullError`.
    """
    try:
        with open(path, "wb") as fh:
            write(fh)
    except OSError as exc:
        if no_space(exc):
            raise DiskFullError(path) from None
        raise


def _write_safetensors(folder: Path, subject: _Subject, reporter: Reporter) -> dict[str, Any]:
    state = _state(subject.module, subject.dtype)
    _save_safetensors(state, folder / SAFETENSORS_WEIGHTS, subject)
    return {"weights": SAFETENSORS_WEIGHTS}


class _Encoder(nn.Module):
    """One tower of the backbone as a one-input module: inputs are cast to the weights' dtype,
    embeddings (L2-normalized) come out as float32."""

    def __init__(self, backbone: Backbone, module: nn.Module, kind: str, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.kind = kind
        self.dtype = dtype
        self._encode = backbone.encode_image if kind == "image" else backbone.encode_text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "image":
            x = x.to(self.dtype)
        return self._encode(self.module, x).float()


def _encoders(subject: _Subject) -> list[tuple[str, _Encoder, torch.Tensor, torch.Tensor]]:
    """(kind, encoder, traced example, probe) for the image and the text tower."""
    module = subject.module
    if subject.dtype != torch.float32:  # cast a copy: the card still reads the fp32 model
        module = copy.deepcopy(module).to(subject.dtype).eval()
    gen = torch.Generator().manual_seed(0)
    h, w = subject.image_size
    images = torch.randn(2, 3, h, w, generator=gen)
    probe_images = torch.randn(_PROBE_BATCH, 3, h, w, generator=gen)
    probe_tokens = subject.backbone.tokenize(list(_PROBE_TEXTS))
    return [("image", _Encoder(subject.backbone, module, "image", subject.dtype).eval(), images,
             probe_images),
            ("text", _Encoder(subject.backbone, module, "text", subject.dtype).eval(),
             subject.example_tokens, probe_tokens)]


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _write_onnx(folder: Path, subject: _Subject, reporter: Reporter) -> dict[str, Any]:
    verified = {}
    for kind, encoder, example, probe in _encoders(subject):
        path = folder / f"{kind}_encoder.onnx"
        reporter.notice(f"exporting the {kind} encoder to ONNX (opset {ONNX_OPSET})")
        _onnx_export(encoder, example, path, kind)
        verified[kind] = _verify_onnx(path, encoder, probe, kind)
    return {"graphs": {k: f"{k}_encoder.onnx" for k in verified}, "opset": ONNX_OPSET,
            "verified": verified}


def _onnx_export(encoder: _Encoder, example: torch.Tensor, path: Path, kind: str) -> None:
    # torch's default exporter (torch.export + onnxscript): the TorchScript-based one is deprecated
    # and slated for removal. Its progress lines and optimizer warnings would pollute --json
    # stdout and the log, so both are kept off the terminal.
    batch = torch.export.Dim("batch", min=1)
    weight_bytes = sum(p.numel() * p.element_size() for p in encoder.parameters())
    try:
        with contextlib.redirect_stdout(sys.stderr), _quiet_logging("onnxscript", "torch.onnx"), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(encoder, (example,), str(path), input_names=[kind],
                              output_names=[f"{kind}_embeds"], opset_version=ONNX_OPSET,
                              dynamo=True,
                              dynamic_shapes=({0: batch},), verbose=False,
                              external_data=weight_bytes > ONNX_EXTERNAL_DATA_BYTES)
    except Exception as exc:
        if isinstance(exc, OSError) and no_space(exc):
            raise DiskFullError(path) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RunError(f"ONNX export of the {kind} encoder failed ({type(exc).__name__}: "
                       f"{first})") from exc


def _verify_onnx(path: Path, encoder: _Encoder, probe: torch.Tensor, kind: str
                 ) -> dict[str, Any]:
    """onnxruntime against PyTorch on a batch size the graph was not traced with."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {"checked": False, "reason": "onnxruntime is not installed"}
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # an invalid graph is a failed export, named as such
        raise RunError(f"onnxruntime cannot load the exported {kind} encoder "
                       f"({type(exc).__name__}: {exc})") from exc
    got = torch.from_numpy(session.run(None, {kind: probe.numpy()})[0])
    with torch.no_grad():
        want = encoder(probe)
    return _check_close(got, want, 1e-4, f"ONNX {kind} encoder (onnxruntime)")


def _check_close(got: torch.Tensor, want: torch.Tensor, tol: float, what: str) -> dict[str, Any]:
    diff = _max_diff(got, want) if got.shape == want.shape else float("inf")
    if not diff <= tol:
        raise RunError(f"the {what} disagrees with PyTorch at batch size {want.shape[0]} "
                       f"(max abs difference {diff:.3g} > {tol:g}, shape {tuple(got.shape)})")
    return {"checked": True, "batch": int(want.shape[0]), "max_abs_diff": diff, "tolerance": tol}


def _write_torchscript(folder: Path, subject: _Subject, reporter: Reporter) -> dict[str, Any]:
    verified = {}
    tol = 1e-5 if subject.dtype == torch.float32 else 1e-2
    for kind, encoder, example, probe in _encoders(subject):
        path = folder / f"{kind}_encoder.pt"
        reporter.notice(f"tracing the {kind} encoder (TorchScript)")
        # torch.jit is deprecated in favour of torch.export, but a traced .pt is still what
        # serving stacks (Triton's PyTorch backend, LibTorch) load; the deprecation notice and the
        # tracer's warnings about shape checks inside F.multi_head_attention_forward say nothing
        # about this trace, which is checked below at another batch size. Freezing keeps only the
        # weights the tower uses (a plain trace would carry the other tower's weights too).
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            traced = torch.jit.trace(encoder, (example,), check_trace=False)
            frozen = torch.jit.freeze(traced)
            _write_file(path, lambda fh: torch.jit.save(frozen, fh))
            loaded = torch.jit.load(str(path))
            verified[kind] = _check_close(loaded(probe), encoder(probe), tol,
                                          f"TorchScript {kind} encoder")
    return {"modules": {k: f"{k}_encoder.pt" for k in verified}, "verified": verified}


WRITERS: dict[str, Callable[[Path, _Subject, Reporter], dict[str, Any]]] = {
    "safetensors": _write_safetensors,
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
}


@contextlib.contextmanager
def _quiet_logging(*names: str):
    """Raise the given loggers to ERROR for the duration (``"root"`` is the root logger)."""
    loggers = [logging.getLogger() if n == "root" else logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# --------------------------------------------------------------------------- the model card


def file_entries(folder: Path) -> list[dict[str, Any]]:
    """Every file of the export except the model card itself, with its size and SHA-256."""
    return [{"path": p.relative_to(folder).as_posix(), "bytes": p.stat().st_size,
             "sha256": file_sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in CARD_FILES]


def method_name(recipe: Recipe) -> str:
    """What the recipe trains, in words: ``TRACER (WMA teacher β=0.5, views crd/fd/icl/xkd)``,
    ``FLYP`` (contrastive finetuning without a teacher term), ..."""
    t, d, train = recipe.teacher, recipe.distill, recipe.train
    if train.method == "zeroshot":
        return "zero-shot (pretrained weights, not trained)"
    if train.method == "lp":
        return "LP (linear probe on frozen features, head initialised from the zero-shot head)"
    if train.method == "ft":
        return "FT (cross-entropy through a head initialised from the zero-shot head)"
    if train.method == "lpft":
        return f"LP-FT ({train.resolved_lp_steps()} probing steps, then the whole model)"
    extras = [f"λ_fn={d.lambda_fn:g}"] * (d.lambda_fn > 0) + \
        [f"λ_orth={d.lambda_orth:g}"] * (d.lambda_orth > 0)
    if t.kind == "none" or d.lambda_sd == 0:
        name = "FLYP" + "".join(f" + {e}" for e in extras)
        if t.kind in AVERAGING_KINDS:
            name += f" ({t.kind.upper()} teacher tracked, not distilled)"
        return name
    views = [v for v in VIEW_NAMES if getattr(d, v) > 0]
    parts = [_teacher_words(recipe),
             f"views {'/'.join(views)}" if views else "soft-label distillation",
             f"λ_sd={d.lambda_sd:g}", *extras]
    return f"{METHOD_LABELS[t.kind]} ({', '.join(parts)})"


def _teacher_words(recipe: Recipe) -> str:
    return TeacherSpec.from_config(recipe.teacher).words


def build_card(req: ExportRequest, run: RunDir, subject: _Subject, folder: Path,
               details: dict[str, Any]) -> dict[str, Any]:
    """The ``model_card.json`` document (``MODEL_CARD.md`` renders it)."""
    recipe = run.recipe
    return {
        "tracer_export": CARD_SCHEMA,
        "format": req.format,
        "which": req.which,
        "wise_alpha": req.wise_alpha,
        "precision": req.precision,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run": {"path": str(run.path), "name": recipe.run.name,
                "checkpoint": str(run.checkpoint_path), "step": run.checkpoint.get("step"),
                "trained_with": run.trained_with},
        "method": method_name(recipe),
        "teacher": {**dataclasses.asdict(recipe.teacher),
                    "update_every": recipe.teacher.resolved_update_every()},
        "distill": dataclasses.asdict(recipe.distill),
        "recipe": run.tables,
        "model": _model_section(subject),
        "eval": run_eval(run, req),
        "details": details,
        "versions": _versions(req.format),
        "files": file_entries(folder),
        "load": load_snippets(req, subject),
        "hub": hub_metadata(req, recipe, subject),
    }


def hub_metadata(req: ExportRequest, recipe: Recipe, subject: _Subject) -> dict[str, Any]:
    """The Hugging Face front matter of ``README.md``: ``library_name`` and ``license`` where the
    backbone's own format declares them (its optional ``library_name`` attribute and
    ``license(model)`` method; open_clip: ``open_clip``), the pipeline, and tags naming what
    was trained."""
    fmt = subject.own_format
    meta: dict[str, Any] = {}
    if getattr(fmt, "library_name", None):
        meta["library_name"] = fmt.library_name
    license_id = fmt.license(subject.exported()) if hasattr(fmt, "license") else None
    if license_id:
        meta["license"] = license_id
    meta["pipeline_tag"] = HUB_PIPELINE
    meta["tags"] = list(dict.fromkeys(["tracer", "clip", recipe.train.method, recipe.task.name,
                                       req.format]))
    return meta


def _model_section(subject: _Subject) -> dict[str, Any]:
    describe = subject.backbone.describe()
    tokens = subject.example_tokens
    with torch.no_grad():
        scale = float(subject.backbone.logit_scale(subject.module))
    dim = _embed_dim(subject)
    return {
        "backbone": describe.get("backbone"), "arch": describe.get("arch"),
        "pretrained": describe.get("pretrained"), "activation": describe.get("activation"),
        "model_cfg": subject.model_cfg,
        "preprocess_cfg": subject.preprocess, "logit_scale": scale,
        "by_name": _by_name(subject),
        "inputs": {"image": {"shape": ["batch", 3, *(subject.image_size or ("H", "W"))],
                             "dtype": "float32"},
                   "text": {"shape": ["batch", int(tokens.shape[1])],
                            "dtype": str(tokens.dtype).removeprefix("torch.")}},
        "outputs": {f"{kind}_embeds": {"shape": ["batch", dim], "dtype": "float32",
                                       "normalized": True} for kind in ("image", "text")},
    }


def _by_name(subject: _Subject) -> dict[str, Any] | None:
    """The card's ``model.by_name``: how the backbone's own format loads by architecture name
    (its optional ``by_name``); None for the formats every backbone has."""
    fmt = subject.own_format
    return fmt.by_name(subject.exported()) if hasattr(fmt, "by_name") else None


def _embed_dim(subject: _Subject) -> int:
    with torch.no_grad():
        return int(subject.backbone.encode_text(subject.module, subject.example_tokens).shape[-1])


def run_eval(run: RunDir, req: ExportRequest) -> dict[str, Any] | None:
    """The run's own evaluation (``summary.json``, else ``eval/*.json``) and which of its models
    is the exported one (None for a WiSE-FT mix or another checkpoint than ``last.pt``)."""
    found = _summary_eval(run.path) or _eval_files(run)
    if found is None:
        return None
    found["metrics"] = _metrics_of(run)
    alpha = req.wise_alpha
    describes = None
    if alpha == 0.0:
        describes = "zeroshot"
    elif (alpha is None or alpha == 1.0) and req.checkpoint is None:
        describes = req.which
    found["describes"] = describes if describes in found["models"] else None
    return found


def _metrics_of(run: RunDir) -> dict[str, Any]:
    """How to read the run's numbers: its task's headline metric and the metrics it averages
    over the OOD sets (from the task's :class:`~tracer_cli.sdk.contracts.TaskMetrics`)."""
    from tracer_cli.sdk.contracts import task_metrics
    from tracer_cli.engine.build import build_task

    spec = task_metrics(build_task(run.recipe))
    shown = [spec.primary, *spec.averaged]
    return {"task": run.recipe.task.name, "primary": spec.primary,
            "averaged": list(spec.averaged),
            "headers": {m: spec.header(m) for m in dict.fromkeys(shown)},
            "percent": sorted(m for m in dict.fromkeys(shown) if m in spec.percent)}


def _summary_eval(run_path: Path) -> dict[str, Any] | None:
    summary = rundir.read_summary(run_path)
    ev = summary.get("eval") if isinstance(summary, dict) else None
    if not isinstance(ev, dict) or not ev.get("models"):
        return None
    return {"source": rundir.SUMMARY, "id": ev.get("id", []), "ood": ev.get("ood", []),
            "retain": ev.get("retain", []), "models": ev["models"]}


def _eval_files(run: RunDir) -> dict[str, Any] | None:
    models = {}
    for path in rundir.eval_files(run.path):
        data = rundir.read_json(path)
        if isinstance(data, dict) and data:
            models[path.stem.removeprefix("final_")] = data
    if not models:
        return None
    recipe = run.recipe
    return {"source": "eval/*.json",
            "id": [s.get("label") or s["name"] for s in recipe.data.id],
            "ood": [s.get("label") or s["name"] for s in recipe.data.ood],
            "retain": [s.get("label") or s["name"] for s in recipe.data.retain], "models": models}


def _versions(fmt: str) -> dict[str, Any]:
    import open_clip

    out = {"tracer": tracer_cli.__version__, "torch": torch.__version__,
           "open_clip": open_clip.__version__, "python": platform.python_version()}
    if fmt == "onnx":
        for name in ("onnx", "onnxscript", "onnxruntime"):
            try:
                out[name] = __import__(name).__version__
            except ImportError:
                out[name] = None
    return out


def load_snippets(req: ExportRequest, subject: _Subject) -> dict[str, str]:
    """Python that loads this folder, per route (``local_dir``, ``by_name``, ``python``)."""
    folder = req.output.as_posix()
    if subject.own_format is not None:
        return subject.own_format.load_snippets(folder, subject.exported())
    if req.format == "safetensors":
        return {"python": (
            "from safetensors.torch import load_file\n"
            f"state = load_file('{folder}/{SAFETENSORS_WEIGHTS}')\n"
            "model.load_state_dict(state)  # model: the run's architecture (see model.arch)")}
    if req.format == "onnx":
        return {"python": (
            "import onnxruntime as ort\n"
            f"image = ort.InferenceSession('{folder}/image_encoder.onnx')\n"
            f"text = ort.InferenceSession('{folder}/text_encoder.onnx')\n"
            "img_emb = image.run(None, {'image': images})[0]   # float32 N×3×H×W, preprocessed\n"
            "txt_emb = text.run(None, {'text': tokens})[0]     # int64 N×L open_clip token ids")}
    return {"python": (
        "import torch\n"
        f"image = torch.jit.load('{folder}/image_encoder.pt')\n"
        f"text = torch.jit.load('{folder}/text_encoder.pt')\n"
        "img_emb, txt_emb = image(images), text(tokens)")}


def write_card(folder: Path, card: dict[str, Any]) -> None:
    (folder / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n",
                                            encoding="utf-8")
    text = render_card(card)
    (folder / "MODEL_CARD.md").write_text(text, encoding="utf-8")
    (folder / "README.md").write_text(front_matter(card["hub"]) + text, encoding="utf-8")


def front_matter(meta: dict[str, Any]) -> str:
    """``meta`` as a YAML front-matter block; every string JSON-quoted (valid YAML scalars)."""
    lines = ["---"]
    for key, value in meta.items():
        if isinstance(value, list):
            lines += [f"{key}:"] + [f"- {json.dumps(v)}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value)}")
    return "\n".join(lines + ["---", ""]) + "\n"


def render_card(card: dict[str, Any]) -> str:
    """``MODEL_CARD.md``: what the model is, how it was made, how well it did, how to load it."""
    model, run = card["model"], card["run"]
    wise = card["wise_alpha"]
    weights = card["which"] + (f", WiSE-FT α={wise:g} with the pretrained weights"
                               if wise is not None else "")
    lines = [
        f"# {run['name']}: {model.get('arch')} finetuned with {card['method']}", "",
        f"- format: `{card['format']}` ({card['precision']})",
        f"- weights: {weights}; checkpoint `{run['checkpoint']}` (step {run['step']})",
        f"- method: {card['method']}",
        f"- backbone: {model.get('backbone')} `{model.get('arch')}`, initialised from "
        f"`{model.get('pretrained')}`"
        + (f", built with {model['activation']}" if model.get("activation") else ""),
        "- exported with " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()),
        "- trained with " + ", ".join(f"{k} {v}" for k, v in run["trained_with"].items()
                                       if isinstance(v, (str, int, float))),
        "", "## How to load", ""]
    for route, code in card["load"].items():
        lines += [f"{route.replace('_', ' ')}:", "", "```python", code, "```", ""]
    lines += _io_lines(model)
    lines += _eval_lines(card["eval"])
    lines += ["## Files", "", "| file | bytes | SHA-256 |", "|---|---:|---|"]
    lines += [f"| `{f['path']}` | {f['bytes']} | `{f['sha256']}` |" for f in card["files"]]
    lines += ["", "## Recipe", "", "```json", json.dumps(card["recipe"], indent=2), "```", ""]
    return "\n".join(lines)


def _io_lines(model: dict[str, Any]) -> list[str]:
    pre = model.get("preprocess_cfg") or {}
    image, text = model["inputs"]["image"], model["inputs"]["text"]
    return [
        "## Inputs and outputs", "",
        f"- image: {image['dtype']} {'×'.join(map(str, image['shape']))}, preprocessed as "
        f"`{json.dumps(pre)}`",
        f"- text: {text['dtype']} {'×'.join(map(str, text['shape']))} open_clip token ids",
        f"- output: L2-normalized embeddings; zero-shot logits = {model['logit_scale']:.4g} · "
        "image_emb · text_embᵀ", ""]


def _eval_lines(ev: dict[str, Any] | None) -> list[str]:
    if not ev:
        return ["## Evaluation", "", "The run has no evaluation; measure this model with "
                "`tracer eval RUN_DIR` (add `--which` / `--wise-alpha` as exported).", ""]
    names = list(ev["id"]) + list(ev["ood"])
    spec = ev.get("metrics") or _CLASSIFICATION_CARD
    primary, averaged = spec["primary"], list(spec["averaged"])
    headers, percent = spec["headers"], set(spec["percent"])

    def cell(metric: str, value: Any) -> str:
        return _pct(value) if metric in percent else _num(value)

    retain = list(ev.get("retain") or [])
    lines = ["## Evaluation (from the run)", "",
             f"Source: `{ev['source']}`; the exported model is "
             + (f"`{ev['describes']}`." if ev["describes"] else
                "none of these (evaluate it with `tracer eval`)."), "",
             "| model | " + " | ".join(f"{n} {headers[primary]}" for n in names)
             + "".join(f" | avg OOD {headers[m]}" for m in averaged)
             + "".join(f" | {n} (retain) acc %" for n in retain)
             + (" | retained acc % | retained change" if retain else "") + " |",
             "|---|" + "---:|" * (len(names) + len(averaged) + len(retain) + 2 * bool(retain))]
    for tag, metrics in ev["models"].items():
        cells = [cell(primary, (metrics.get(n) or {}).get(primary)) for n in names]
        cells += [cell(m, metrics.get(f"avg_ood_{m}")) for m in averaged]
        cells += [_pct((metrics.get(n) or {}).get("accuracy")) for n in retain]
        if retain:
            change = metrics.get("retain_change")
            cells += [_pct(metrics.get("retain_accuracy")),
                      "-" if change is None else f"{100 * change:+.2f}"]
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    if retain:
        lines += ["", "Retention: zero-shot accuracy on datasets of other tasks (the model's text "
                  "head with their own class names), and its change from the pretrained model "
                  "(after minus before; negative is forgetting)."]
    return lines + [""]


# How a card without a "metrics" entry (written before tasks declared metrics) reads its numbers.
_CLASSIFICATION_CARD = {"primary": "accuracy", "averaged": ["accuracy", "ece"],
                        "headers": {"accuracy": "acc %", "ece": "ECE"}, "percent": ["accuracy"]}


def _pct(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{100 * value:.2f}"


def _num(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:.4f}"
