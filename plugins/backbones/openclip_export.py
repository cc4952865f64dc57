"""``tracer export --format open_clip``: the openclip backbone's own export format.

A folder open_clip's ``local-dir:`` loader (and so CLIP_benchmark) reads as it is:
``open_clip_config.json`` (the model config the run's backbone was built from, its activation
``quick_gelu`` spelled out, and its preprocessing, so nothing is silently defaulted) and
``open_clip_model.safetensors``, the first weights name that loader looks for. For archs open_clip knows by name the weights file also works as
``create_model_and_transforms(ARCH, pretrained=FILE)``. The openclip backbone factory declares
this format in its ``export_formats`` (:class:`tracer_cli.sdk.ExportFormat`); tracer's
export builds the folder atomically and adds the model card.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg

from tracer_cli.sdk import RunError, UsageError

if TYPE_CHECKING:  # annotations only
    from tracer_cli.sdk import ExportedModel

CONFIG_FILE = "open_clip_config.json"
# open_clip's local-dir loader takes the first of its preferred names that exists; this one is
# first, and a .safetensors file also works as `pretrained=` (no pickle involved).
WEIGHTS_FILE = "open_clip_model.safetensors"
# Preprocessing keys that open_clip's create_model_and_transforms takes as keyword arguments.
_PREPROCESS_KWARGS = (("mean", "image_mean"), ("std", "image_std"),
                      ("interpolation", "image_interpolation"),
                      ("resize_mode", "image_resize_mode"))


class OpenClipFormat:
    """The ``open_clip`` export format (satisfies :class:`tracer_cli.sdk.ExportFormat`)."""

    # The Hugging Face Hub's name for the library that loads the folder (README.md front matter).
    library_name = "open_clip"

    def license(self, model: ExportedModel) -> str | None:
        """The weights' license where tracer knows it: the embedded tiny CLIPs are tracer's own
        (MIT, as tracer); a tag's or a file's weights carry their publisher's terms, unstated
        here."""
        return "mit" if model.backbone.describe().get("pretrained") == "embedded" else None

    def write(self, folder: Path, model: ExportedModel) -> dict[str, Any]:
        if model.model_cfg is None:
            raise UsageError("--format open_clip needs the backbone's open_clip model config, "
                             "which it cannot tell; use --format safetensors")
        config = {"model_cfg": model.model_cfg, "preprocess_cfg": model.preprocess_cfg}
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        state = model.save_weights(folder / WEIGHTS_FILE)
        verify_config(folder, state)
        return {"weights": WEIGHTS_FILE, "config": CONFIG_FILE}

    def by_name(self, model: ExportedModel) -> dict[str, Any] | None:
        return by_name(model)

    def load_snippets(self, folder: str, model: ExportedModel) -> dict[str, str]:
        out = {"local_dir": (
            "import open_clip\n"
            f"model, _, preprocess = open_clip.create_model_and_transforms('local-dir:{folder}')\n"
            f"tokenizer = open_clip.get_tokenizer('local-dir:{folder}')")}
        named = by_name(model)
        if named is not None:
            extra = "".join(f", {k}={v!r}" for k, v in named["kwargs"].items())
            prefix = "" if named["known_to_open_clip"] else (
                "from tracer_plugins.backbones.openclip import register_tiny_configs\n"
                "register_tiny_configs()  # this arch is known to open_clip through tracer\n")
            out["by_name"] = (
                f"import open_clip\n{prefix}model, _, preprocess = "
                f"open_clip.create_model_and_transforms('{named['arch']}', "
                f"pretrained='{folder}/{WEIGHTS_FILE}'{extra})")
        return out


def verify_config(folder: Path, state: dict[str, torch.Tensor]) -> None:
    """Build the model open_clip would build from the folder (on the meta device: no memory, no
    weights) and check that every tensor of the export has a place of the same shape in it."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip logs what it builds; the export says what it wrote
    try:
        with torch.device("meta"):
            built = open_clip.create_model(f"local-dir:{folder}", device="meta",
                                           load_weights=False, pretrained_text=False)
    finally:
        root.setLevel(level)
    expected = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        diff = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
        raise RunError(f"the written open_clip config does not describe the exported weights "
                       f"({len(diff)} tensors differ, e.g. {', '.join(diff[:3])})")


def by_name(model: ExportedModel) -> dict[str, Any] | None:
    """How to load the weights by arch name with ``pretrained=FILE``: the arch and the keyword
    arguments that make open_clip build this exact model and preprocessing, or None when the
    config differs from the named one in more than the image size and QuickGELU (local-dir /
    hf-hub archs)."""
    arch = model.backbone.describe().get("arch")
    cfg, pre = model.model_cfg, model.preprocess_cfg
    if cfg is None or not pre or not isinstance(arch, str) or ":" in arch:
        return None
    named = copy.deepcopy(open_clip.get_model_config(arch))
    kwargs: dict[str, Any] = {}
    size = cfg["vision_cfg"].get("image_size")
    if named["vision_cfg"].get("image_size") != size:
        kwargs["force_image_size"] = size
        named["vision_cfg"]["image_size"] = size
    if cfg.get("quick_gelu") and not named.get("quick_gelu"):
        kwargs["force_quick_gelu"] = True  # e.g. OpenAI's weights under a plain arch name
        named["quick_gelu"] = True
    if _with_activation(named) != _with_activation(cfg):
        return None
    default = _jsonable({**dataclasses.asdict(PreprocessCfg()), "size": pre["size"]})
    for key, kw in _PREPROCESS_KWARGS:
        if pre.get(key) != default[key]:
            kwargs[kw] = pre[key]
    if any(pre.get(k) != default[k] for k in ("size", "mode", "fill_color")):
        return None
    builtin = (Path(open_clip.__file__).parent / "model_configs" / f"{arch}.json").is_file()
    return {"arch": arch, "weights": WEIGHTS_FILE, "kwargs": kwargs,
            "known_to_open_clip": builtin}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _with_activation(cfg: dict[str, Any]) -> Any:
    """``cfg`` as JSON values with ``quick_gelu`` spelled out (open_clip's default: false)."""
    return _jsonable({"quick_gelu": False, **cfg})
