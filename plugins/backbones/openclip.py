"""Backbone ``openclip``: any open_clip architecture, plus the embedded tiny CLIPs.

``[model]`` keys: ``arch`` (an open_clip model name, ``tracer-tiny-rn`` / ``tracer-tiny-vit``, or
``local-dir:PATH`` / ``hf-hub:ORG/REPO``), ``pretrained`` (an open_clip tag such as ``openai``, a
local weights file, ``"embedded"`` for the tiny CLIP tracer pretrains itself, or ``"none"`` for
random init), ``cache_dir`` (where open_clip looks for downloaded weights), ``image_size``
(force a different input size), ``quick_gelu`` (the activation, for weights that cannot tell it)
and ``train_augment`` (``"crop"``, open_clip's training transform, or ``"crop-flip"``, the same
with a horizontal flip). Preprocessing always comes from the checkpoint's own config.

Weights decide the architecture: for an open_clip tag the model is built as open_clip's pretrained
config for that tag says it was trained (:func:`quick_gelu_for`; OpenAI's weights need QuickGELU,
which the configs of the plain arch names do not use), and a recipe that asks for another
activation is refused instead of loading the weights into the wrong network.

Capabilities the factory declares: ``cache_dir`` is resume-free (where weights are cached does not
change the run), and ``tracer export --format open_clip`` writes the backbone's own folder format
(:mod:`tracer_plugins.backbones.openclip_export`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import urlparse

import numpy as np
import open_clip
import torch
from open_clip.transform import MaybeToTensor, PreprocessCfg, image_transform_v2
from PIL import Image
from torch import nn
from torchvision import transforms
from torchvision.transforms import functional as TF

from tracer_cli.sdk import (
    MAX_SEED, MissingResourceError, Options, RecipeError, UsageError, WeightsBuild, hookimpl,
    quiet_pickle_warnings, unreadable_reason)
from tracer_plugins.backbones import embedded
from tracer_plugins.backbones.openclip_export import OpenClipFormat

CONFIG_DIR = embedded.CONFIG_DIR
TINY_ARCHS = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
# model.image_size: 4096 px is far above any CLIP (224 to 448); a typo must not build a model
# whose position embedding alone fills the memory.
MAX_IMAGE_SIZE = 4096
_registered_configs = False
# model.train_augment: open_clip's training transform, or the same with a horizontal flip
TRAIN_AUGMENTS = ("crop", "crop-flip")


def register_tiny_configs() -> None:
    """Make open_clip know the tiny configs by name (idempotent)."""
    global _registered_configs
    if not _registered_configs:
        open_clip.add_model_config(CONFIG_DIR)
        _registered_configs = True


def _weights_help(arch: str, pretrained: str) -> str:
    return (f"pretrained weights '{pretrained}' for '{arch}' are not available offline. Provide them "
            f"one of these ways: (1) model.pretrained = \"/path/to/weights.pt\" (an open_clip or "
            f"OpenAI checkpoint file); (2) model.arch = \"local-dir:/path/to/folder\" holding "
            f"open_clip_config.json and the weights; (3) download once where there is network "
            f"(python -c \"import open_clip; open_clip.create_model('{arch}', pretrained="
            f"'{pretrained}')\"), then run with HF_HUB_OFFLINE=1 and the same Hugging Face cache "
            f"(HF_HOME or model.cache_dir)")


def _weights_cached(cfg: dict[str, Any], cache_dir: str | None) -> bool:
    """Whether the weights of an open_clip pretrained config are already on this machine."""
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(cfg["hf_hub"])
        found = try_to_load_from_cache(repo, filename or "open_clip_pytorch_model.bin",
                                       cache_dir=cache_dir)
        return isinstance(found, str)
    if cfg.get("url"):
        root = cache_dir or os.path.expanduser("~/.cache/clip")
        return os.path.isfile(os.path.join(root, os.path.basename(urlparse(cfg["url"]).path)))
    return bool(cfg.get("file")) and os.path.isfile(cfg["file"])


def _source_reachable(cfg: dict[str, Any], timeout: float = 3.0) -> bool:
    """A quick TCP probe of the download host, so that no network fails in seconds, not after
    a minute of retries; offline mode (HF_HUB_OFFLINE=1) counts as unreachable."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    if cfg.get("hf_hub"):
        host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    else:
        host = urlparse(cfg.get("url", "")).hostname
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# Archs whose name is a location holding their config and weights.
_LOCATION_SCHEMAS = ("local-dir", "hf-hub")


def _is_tag(arch: str, pretrained: str) -> bool:
    """Whether ``pretrained`` names open_clip weights of ``arch`` (a local file of the same name
    wins, as in :func:`_create`)."""
    return (pretrained not in ("none", "embedded") and not os.path.isfile(pretrained)
            and open_clip.is_pretrained_cfg(arch, pretrained))


def quick_gelu_for(arch: str, pretrained: str, requested: bool | None) -> bool | None:
    """Whether the model for these weights is built with QuickGELU: what the weights were trained
    with where that is known, else ``requested`` (``model.quick_gelu``), else the arch config's.

    Known: an open_clip tag (its pretrained config's ``quick_gelu``, or a QuickGELU arch config:
    open_clip's ``-quickgelu`` names) and the embedded weights (their tiny config). A request that
    contradicts them is a recipe error. None for ``local-dir:`` / ``hf-hub:`` archs, whose own
    ``open_clip_config.json`` decides. Nothing is built or downloaded.
    """
    if arch.split(":", 1)[0] in _LOCATION_SCHEMAS:
        if requested is not None:
            raise RecipeError("model.quick_gelu", f"does not apply to '{arch}': its "
                              "open_clip_config.json says how the weights were trained "
                              "(quick_gelu there); remove model.quick_gelu")
        return None
    arch_quick = bool((open_clip.get_model_config(arch) or {}).get("quick_gelu", False))
    fix = "remove model.quick_gelu (tracer builds what the weights need)"
    if _is_tag(arch, pretrained):
        trained = bool(open_clip.get_pretrained_cfg(arch, pretrained).get("quick_gelu")) \
            or arch_quick
        fact = (f"the weights: open_clip's pretrained config says the '{pretrained}' weights of "
                f"'{arch}' were trained with {_activation_name(trained)}")
    elif pretrained == "embedded":
        trained = arch_quick
        fact = (f"the weights: the embedded weights of '{arch}' were trained with "
                f"{_activation_name(trained)}")
    elif arch_quick:  # random init or a local file, which cannot tell: the arch name chose
        trained = True
        fact = f"the arch: '{arch}' is a QuickGELU config"
        plain = arch.removesuffix("-quickgelu")
        fix = "remove model.quick_gelu" + (f", or use arch '{plain}' for GELU"
                                           if plain != arch else "")
    else:
        return requested if requested is not None else False
    if requested is not None and requested != trained:
        raise RecipeError("model.quick_gelu",
                          f"{str(requested).lower()} contradicts {fact}; {fix}")
    return trained


def _activation_name(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "GELU"


def _create(arch: str, pretrained: str, kwargs: dict[str, Any],
            embedded_seed: int = 0) -> nn.Module:
    """The open_clip model, weights loaded; ``kwargs`` go to ``open_clip.create_model``."""
    cache_dir = kwargs.get("cache_dir")
    schema = arch.split(":", 1)[0] if ":" in arch else None
    if schema == "local-dir":
        folder = Path(arch.split(":", 1)[1]).expanduser()
        if not folder.is_dir():
            raise MissingResourceError(f"model.arch: folder '{folder}' does not exist; "
                                       "local-dir: names a folder holding open_clip_config.json "
                                       "and the weights")
        return _read_weights(lambda: open_clip.create_model(arch, **kwargs),
                             sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES),
                             "model.arch")
    if schema == "hf-hub":
        return open_clip.create_model(arch, **kwargs)
    if pretrained == "none":
        with _quiet_root_logger():  # open_clip warns "initialized randomly": that is the request
            return open_clip.create_model(arch, pretrained=None, **kwargs)
    if pretrained == "embedded":
        weights = embedded.embedded_path(arch, embedded_seed)
        if not weights.is_file():  # the engine builds it first (weights_build); called directly:
            raise MissingResourceError(
                f"the embedded tiny CLIP '{arch}' is not built yet ({weights}); build it with "
                f"`tracer finetune recipes/{embedded.PRETRAIN_RECIPE}` or any recipe that uses it")
        return _read_weights(lambda: open_clip.create_model(arch, pretrained=str(weights),
                                                            **kwargs),
                             [weights], "model.pretrained",
                             "; it is tracer's cache of the embedded weights: delete it, and the "
                             "next command that uses them builds (or unpacks) them again")
    if os.path.isfile(pretrained):
        return _read_weights(lambda: open_clip.create_model(arch, pretrained=pretrained, **kwargs),
                             [Path(pretrained)], "model.pretrained")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if pretrained not in tags:
        looks_like_path = "/" in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES)
        what = f"weights file '{pretrained}' does not exist" if looks_like_path else \
            f"'{pretrained}' is not a known tag for '{arch}' (tags: {', '.join(tags) or 'none'})"
        if os.path.exists(pretrained):
            what = f"'{pretrained}' is not a file (for an open_clip folder use model.arch = " \
                   "\"local-dir:PATH\")"
        raise MissingResourceError(f"model.pretrained: {what}; use a tag, a local file, "
                                   "\"embedded\" (tiny archs) or \"none\"")
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not _weights_cached(cfg, cache_dir) and not _source_reachable(cfg):
        raise MissingResourceError(_weights_help(arch, pretrained))
    try:
        return open_clip.create_model(arch, pretrained=pretrained, **kwargs)
    except Exception as exc:  # network or cache failures all mean: weights are not here
        raise MissingResourceError(_weights_help(arch, pretrained) + f" [{type(exc).__name__}]") \
            from exc


_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".npy")


def _read_weights(create: Callable[[], nn.Module], files: list[Path], key: str,
                  fix: str = "") -> nn.Module:
    """``create()``, which loads local weights ``files``; when it fails, one line naming the file
    (and ``fix``, what to do about it, when given).

    open_clip reads ``.pt``/``.bin`` files with ``torch.load(weights_only=True)``, so a pickle
    holding anything but tensors is refused; the files are then read again (weights-only) only
    to tell an unreadable or unsafe file from one that does not fit the architecture.
    """
    try:
        with quiet_pickle_warnings():
            return create()
    except Exception as exc:
        for path in files:
            problem = _unreadable(path)
            if problem:
                raise RecipeError(key, f"not a safe/readable weights file: {path} ({problem})"
                                  + fix) from None
        if not isinstance(exc, (RuntimeError, KeyError, ValueError)):
            raise
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 240 else detail[:240] + "..."
        raise RecipeError(key, f"the weights in {', '.join(map(str, files)) or 'the folder'} do "
                          f"not fit this architecture ({type(exc).__name__}: {detail})" + fix) \
            from None


def _unreadable(path: Path) -> str | None:
    """Why ``path`` is no weights file open_clip can read safely, or None when it reads."""
    if path.suffix in (".npz", ".npy"):
        return ("a NumPy archive: open_clip reads .npz/.npy files only as big_vision weights of "
                "timm-tower (SigLIP) models")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            load_file(str(path))
        else:
            with quiet_pickle_warnings():
                torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure means the same to the user
        return unreadable_reason(exc)
    return None


_TOKEN_CACHE_SIZE = 200_000


def _rows_independent(tokenizer: Any) -> bool:
    """Whether each output row of ``tokenizer`` depends on its own text only (open_clip's BPE
    tokenizer without a batch-level reduction), so rows may be cached per text."""
    return (isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer)
            and getattr(tokenizer, "reduction_fn", None) is None)


class ToNormalizedTensor:
    """open_clip's ``MaybeToTensor`` followed by ``Normalize``, in one step.

    The same arithmetic in the same order (uint8 / 255 in float32, then (x - mean) / std per
    channel), without torchvision's per-call checks and copies, which cost more than the
    arithmetic itself on a 32 px image (the embedded build reads ~280k of them).
    Anything but an 8-bit RGB PIL image takes torchvision's own path.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, pic: Any) -> torch.Tensor:
        if isinstance(pic, Image.Image) and pic.mode == "RGB":
            pixels = torch.from_numpy(np.array(pic, dtype=np.uint8))
            chw = pixels.permute(2, 0, 1).contiguous()  # as torchvision's to_tensor lays it out
            return chw.float().div_(255).sub_(self._mean).div_(self._std)
        tensor = pic if isinstance(pic, torch.Tensor) else TF.to_tensor(pic)
        return TF.normalize(tensor, list(self.mean), list(self.std))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def fuse_to_tensor(compose: transforms.Compose) -> transforms.Compose:
    """``compose`` with each ``MaybeToTensor``, ``Normalize`` pair replaced by
    :class:`ToNormalizedTensor` (the rest of the pipeline unchanged)."""
    steps = list(compose.transforms)
    out = []
    while steps:
        step = steps.pop(0)
        if (type(step) is MaybeToTensor and steps and type(steps[0]) is transforms.Normalize
                and not steps[0].inplace):
            norm = steps.pop(0)
            step = ToNormalizedTensor(norm.mean, norm.std)
        out.append(step)
    return transforms.Compose(out)


class OpenClipBackbone:
    """An open_clip CLIP with the tokenizer and transforms of its own config."""

    def __init__(self, arch: str, pretrained: str, cache_dir: str | None = None,
                 image_size: int | None = None, embedded_seed: int = 0,
                 quick_gelu: bool | None = None, train_augment: str = "crop"):
        register_tiny_configs()
        if arch.split(":", 1)[0] not in _LOCATION_SCHEMAS and arch not in open_clip.list_models():
            import difflib

            close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
            raise RecipeError("model.arch", f"unknown open_clip architecture '{arch}'"
                              + (f"; did you mean {', '.join(close)}?" if close else ""))
        self.arch, self.pretrained, self.embedded_seed = arch, pretrained, embedded_seed
        self.image_size, self.train_augment = image_size, train_augment
        # Decided before anything is built or downloaded, so a contradiction costs nothing.
        self.quick_gelu = quick_gelu_for(arch, pretrained, quick_gelu)
        kwargs: dict[str, Any] = {"cache_dir": cache_dir}
        if image_size:
            kwargs["force_image_size"] = image_size
        if self.quick_gelu:
            kwargs["force_quick_gelu"] = True  # a no-op where the arch config has it already
        self.model = _create(arch, pretrained, kwargs, embedded_seed)
        self._tokenizer = open_clip.get_tokenizer(arch, cache_dir=cache_dir)
        self._token_rows: dict[str, torch.Tensor] = {}
        cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(self.model))
        self.preprocess_cfg = cfg
        self.preprocess_train = fuse_to_tensor(_train_transform(cfg, train_augment))
        self.preprocess_eval = fuse_to_tensor(image_transform_v2(cfg, is_train=False))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not _rows_independent(self._tokenizer):
            return self._tokenizer(texts)
        # Training re-tokenizes the same captions and prompts every step; BPE in Python costs
        # ~0.1 ms per text, so the rows are kept per text (each row depends on its text only).
        cache = self._token_rows
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        if missing:
            if len(cache) + len(missing) > _TOKEN_CACHE_SIZE:
                cache.clear()
            cache.update(zip(missing, self._tokenizer(missing)))
        return torch.stack([cache[t] for t in texts]) if texts else self._tokenizer(texts)

    def encode_image(self, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return module.encode_image(images, normalize=True)

    def encode_text(self, module: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return module.encode_text(tokens, normalize=True)

    def logit_scale(self, module: nn.Module) -> torch.Tensor:
        return module.logit_scale.exp()

    def projections(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
        return visual_text_projections(module)

    def model_config(self) -> dict[str, Any]:
        """The open_clip model config this backbone was built from, with ``model.image_size``
        and the activation applied exactly as ``force_image_size`` / ``force_quick_gelu``
        applied them."""
        try:
            cfg = open_clip.get_model_config(self.arch)
        except Exception as exc:  # an hf-hub config that is not cached, a broken local-dir config
            raise MissingResourceError(f"cannot read the open_clip config of '{self.arch}' "
                                       f"({exc})") from None
        if cfg is None:
            raise UsageError(f"open_clip has no config for '{self.arch}'; use --format "
                             "safetensors")
        cfg = copy.deepcopy(cfg)
        if self.image_size:
            cfg["vision_cfg"]["image_size"] = self.image_size
        if self.quick_gelu is not None:
            # Always written, so that a local-dir: folder rebuilds this activation whatever
            # the arch name's config says.
            cfg["quick_gelu"] = self.quick_gelu
        return cfg

    def set_grad_checkpointing(self, module: nn.Module) -> list[str]:
        """Turn on open_clip's activation checkpointing for ``module`` and return the towers it
        covers (``"image"``, ``"text"``). open_clip checkpoints transformer blocks only: a
        ModifiedResNet image tower (RN50, tracer-tiny-rn) keeps all its activations."""
        module.set_grad_checkpointing(True)
        towers = []
        if getattr(getattr(module.visual, "transformer", None), "grad_checkpointing", False):
            towers.append("image")
        if getattr(getattr(module, "transformer", None), "grad_checkpointing", False):
            towers.append("text")
        return towers

    def lock_image_tower(self, module: nn.Module, unlocked_groups: int) -> None:
        """open_clip's ``lock_image_tower``: the image tower's parameters stop requiring
        gradients, except its last ``unlocked_groups`` layer groups. BatchNorm statistics are
        the engine's (``train.lock_image_freeze_bn_stats``): open_clip's FrozenBatchNorm2d would
        drop keys from the checkpoint that plain open_clip then misses."""
        try:
            module.lock_image_tower(unlocked_groups=unlocked_groups, freeze_bn_stats=False)
        except AssertionError as exc:  # open_clip's ModifiedResNet locks only as a whole
            raise RecipeError("train.lock_image_unlocked_groups",
                              f"got {unlocked_groups}, but {self.arch}'s image tower cannot be "
                              f"partly locked ({exc}); use 0") from None

    def lock_text_tower(self, module: nn.Module, unlocked_layers: int,
                        freeze_layer_norm: bool) -> None:
        """open_clip's ``lock_text_tower``: the text tower's parameters stop requiring gradients,
        except its last ``unlocked_layers`` groups (embeddings, blocks, projection)."""
        try:
            module.lock_text_tower(unlocked_layers=unlocked_layers,
                                   freeze_layer_norm=freeze_layer_norm)
        except AssertionError as exc:  # open_clip's own text towers lock LayerNorm with the rest
            raise RecipeError("train.lock_text_freeze_layer_norm",
                              f"got false, but {self.arch}'s text tower locks its LayerNorm "
                              f"weights with the others ({exc}); remove the key") from None

    def shard_units(self, module: nn.Module) -> list[nn.Module]:
        """The blocks FSDP shards one at a time (``train.strategy = "fsdp"``): every transformer
        block of both towers, and the four stages of a ModifiedResNet image tower."""
        units = [block for m in module.modules() if isinstance(m, open_clip.transformer.Transformer)
                 for block in m.resblocks]
        visual = getattr(module, "visual", None)
        units += [getattr(visual, f"layer{i}") for i in range(1, 5)
                  if isinstance(getattr(visual, f"layer{i}", None), nn.Module)]
        return units

    def describe(self) -> dict[str, Any]:
        extra = {"embedded_seed": self.embedded_seed} if self.pretrained == "embedded" else {}
        return {"backbone": "openclip", "arch": self.arch, "pretrained": self.pretrained,
                **extra, "activation": built_activation(self.model),
                "train_augment": self.train_augment, "open_clip": open_clip.__version__,
                "preprocess": {k: v for k, v in vars(self.preprocess_cfg).items()}}


def built_activation(module: nn.Module) -> str | None:
    """The activation of the transformer MLPs ``module`` was built with, read from its modules:
    ``"QuickGELU"``, ``"GELU"``, or None when it has neither (towers open_clip takes from timm
    or Hugging Face name theirs differently)."""
    kinds = {type(m) for m in module.modules()}
    if open_clip.transformer.QuickGELU in kinds:
        return "QuickGELU"
    return "GELU" if nn.GELU in kinds else None


def _train_transform(cfg: PreprocessCfg, augment: str) -> transforms.Compose:
    """open_clip's training transform (a random resized crop at scale 0.9-1.0, bicubic), with a
    horizontal flip right after the crop for ``"crop-flip"``, as the reference implementation's
    transform for the OpenAI weights (its ``clip/clip.py``) flips."""
    compose = image_transform_v2(cfg, is_train=True)
    if augment == "crop":
        return compose
    steps = list(compose.transforms)
    crop = next(i for i, t in enumerate(steps) if isinstance(t, transforms.RandomResizedCrop))
    steps.insert(crop + 1, transforms.RandomHorizontalFlip())
    return transforms.Compose(steps)


def visual_text_projections(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(V, T) with V: in_v×D (ViT ``visual.proj``; ResNet ``attnpool.c_proj.weight``ᵀ) and
    T: in_t×D (``text_projection``), or None when the towers have no such matrices."""
    visual = getattr(module, "visual", None)
    text_proj = getattr(module, "text_projection", None)
    if isinstance(text_proj, nn.Linear):
        text_proj = text_proj.weight.T
    if visual is None or not isinstance(text_proj, torch.Tensor):
        return None
    if isinstance(getattr(visual, "proj", None), torch.Tensor):
        return visual.proj, text_proj
    attnpool = getattr(visual, "attnpool", None)
    if attnpool is not None and hasattr(attnpool, "c_proj"):
        return attnpool.c_proj.weight.T, text_proj
    return None


def _options(options: dict[str, Any]) -> dict[str, Any]:
    """The ``[model]`` keys, checked (unknown keys, types, ranges)."""
    opts = Options(options, path="model")
    out = {"arch": opts.str("arch"), "pretrained": opts.str("pretrained", default="none"),
           "cache_dir": opts.str("cache_dir", default=None),
           "image_size": opts.int("image_size", default=None, minimum=8,
                                  maximum=MAX_IMAGE_SIZE),
           # Which pretraining run of the embedded tiny CLIP (its run.seed): robustness results
           # should hold across pretraining seeds, not just finetuning seeds.
           "embedded_seed": opts.int("embedded_seed", default=0, minimum=0, maximum=MAX_SEED),
           # None: what the weights were trained with (quick_gelu_for)
           "quick_gelu": opts.bool("quick_gelu") if opts.has("quick_gelu") else None,
           "train_augment": opts.str("train_augment", default="crop", choices=TRAIN_AUGMENTS)}
    if out["embedded_seed"] and out["pretrained"] != "embedded":
        raise RecipeError("model.embedded_seed", f"only applies to pretrained = \"embedded\" "
                          f"(got pretrained = {out['pretrained']!r})")
    if out["pretrained"] == "embedded" and out["arch"] not in TINY_ARCHS:
        raise RecipeError("model.pretrained", f"'embedded' weights exist only for the tiny "
                          f"archs ({', '.join(TINY_ARCHS)}), not '{out['arch']}'")
    opts.done()
    return out


class OpenClipFactory:
    """The ``openclip`` factory and its capabilities (:mod:`tracer_cli.sdk.contracts`), which the
    core reads without building anything: ``weights_build`` (the embedded tiny CLIP's weights are
    pretrained by the engine before the backbone is built), the resume-free keys, the export
    formats it writes, and the ``tracer eval --model`` rules."""

    # Read by --resume: a cache folder does not shape the training trajectory.
    resume_free_keys = ("cache_dir",)
    export_formats = {"open_clip": OpenClipFormat()}
    # `tracer eval --model openclip:ARCH:PRETRAINED`: archs whose name is a location holding their
    # weights, and what PRETRAINED may be (without it, pretrained = "none" would silently give
    # random weights).
    location_archs = _LOCATION_SCHEMAS
    weights_required = ("an open_clip tag such as 'openai', a weights file, 'embedded' or "
                        "'none'")

    def __call__(self, options: dict[str, Any]) -> OpenClipBackbone:
        return OpenClipBackbone(**_options(options))

    def weights_build(self, options: dict[str, Any]) -> WeightsBuild | None:
        opts = _options(options)
        if opts["pretrained"] != "embedded":
            return None
        return embedded.weights_build(opts["arch"], opts["embedded_seed"])


make_backbone = OpenClipFactory()


@hookimpl
def tracer_register_backbones(registry) -> None:
    registry.add("openclip", make_backbone)
