"""A private, offline Hugging Face cache for tests: weights placed where open_clip looks for an
(arch, tag) pair, so that the real tag path runs (cache lookup, download fallback, load) without
the network.

huggingface_hub reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` once, at import; :func:`offline_hub`
sets both in the environment (for subprocesses) and in its constants (for this process).
"""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub.constants as hf_constants
import open_clip
import pytest

# Any 40 hex digits: offline, huggingface_hub resolves "main" through refs/main to this snapshot.
_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def offline_hub(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """An empty Hugging Face cache under ``root``, offline; returns the hub cache folder."""
    cache = root / "hub"
    cache.mkdir(parents=True, exist_ok=True)
    for name, value in (("HF_HOME", str(root)), ("HF_HUB_CACHE", str(cache)),
                        ("HF_HUB_OFFLINE", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(hf_constants, "HF_HOME", str(root))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def weights_path(cache: Path, arch: str, tag: str) -> Path:
    """Where the cache holds the weights of open_clip's ``tag`` for ``arch`` (its ``hf_hub``
    repo id and file name, as open_clip's ``pretrained.py`` and tracer's cache check read them)."""
    hub_id = open_clip.get_pretrained_cfg(arch, tag)["hf_hub"]
    repo, filename = os.path.split(hub_id)
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(_COMMIT)
    snapshot = repo_dir / "snapshots" / _COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot / (filename or "open_clip_pytorch_model.bin")
