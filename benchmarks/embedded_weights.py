"""Build the embedded tiny CLIP and write the packed weights tracer ships with it.

``model.pretrained = "embedded"`` unpacks ``plugins/backbones/weights/<arch>-<digest>.safetensors``
when tracer ships it for that pretraining seed (seed 0), instead of pretraining for minutes. This
script makes that file: it runs the packaged pretraining recipe through the engine's own build
(``tracer_cli.engine.run.train_weights``: ``recipes/tiny_pretrain.toml`` with the build's
overrides), packs the student's weights
(:func:`tracer_plugins.backbones.embedded.pack`: float16, trained token rows only) and writes the
file, its SHA-256 and the run's lock file. The same run on the same machine with the same number of
threads gives the same file, bit for bit (the shipped file: one thread, the default).

    python benchmarks/embedded_weights.py                       # seed 0, into the package
    python benchmarks/embedded_weights.py --seed 1 --out /tmp/w
    python benchmarks/embedded_weights.py --from runs/seed0     # pack a finished pretraining run
    python benchmarks/embedded_weights.py --from runs/seed1 --seed 1 --cache
                                            # put it in $TRACER_CACHE as a build would

``--from`` takes a run of ``tracer finetune recipes/tiny_pretrain.toml`` with the build's
overrides (``embedded.build_overrides``; its recipe must match the build's in every key that
defines the run). ``--cache`` writes the unpacked weights where a build would keep them, instead
of the packed file. Exit status 2 when the run does not match the build.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="tracer-tiny-rn")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed (run.seed)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the build (default 1: the shipped file was built "
                             "at one thread, and the thread count changes the float rounding)")
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="a finished pretraining run directory to pack instead of building")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the packed file (default: the package's weights folder)")
    parser.add_argument("--cache", action="store_true",
                        help="write the unpacked weights into $TRACER_CACHE as a build would")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch
    from safetensors.torch import save_file

    from tracer_cli import rundir
    from tracer_cli.rundir import checksums
    from tracer_plugins.backbones import embedded

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.source is not None:
        found = _pack_run(args.source, args.arch, args.seed)
        if found is None:
            return 2
        packed, trained, lock = found
    elif args.cache:
        packed, trained, lock = _build(args.arch, args.seed,
                                       embedded.embedded_path(args.arch, args.seed))
    else:  # the unpacked weights are not wanted: the build keeps them in a temporary folder
        with tempfile.TemporaryDirectory(prefix="tracer-weights-") as tmp:
            packed, trained, lock = _build(args.arch, args.seed, Path(tmp) / "weights.pt")
    built_s = time.perf_counter() - start
    if args.cache:
        target = embedded.embedded_path(args.arch, args.seed)
        if args.source is not None:
            _store(target, embedded.unpack(packed), lock)
        print(f"{target}: unpacked weights of {args.arch} seed {args.seed}")
        return 0
    out = args.out or embedded.WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / embedded.shipped_path(args.arch, args.seed).name
    partial = path.with_name(path.name + ".partial")
    save_file(packed, str(partial))
    digest = checksums.file_sha256(partial)
    checksums.write_sha(path, digest)
    # write_sha goes through a private temporary (mode 600); a shipped file keeps a plain file's
    # mode, as the lock file beside it, so that every user of an installed tracer can read it.
    os.chmod(rundir.sha_path(path), _plain_mode())
    path.with_name(path.name.removesuffix(".safetensors") + ".lock.toml").write_text(
        lock, encoding="utf-8")
    os.replace(partial, path)
    rows = int(trained.sum())
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, sha256 {digest}, "
          f"{rows:,} trained token rows of {len(trained):,}"
          + (f", built in {built_s / 60:.1f} min" if args.source is None else ""))
    return 0


def _build(arch: str, seed: int, target: Path) -> tuple[dict, Any, str]:
    """Pretrain ``arch`` exactly as a first use does, through the engine's build
    (:func:`tracer_cli.engine.run.train_weights` on the plugin's own ``weights_build``, the
    shipped weights left out so that it trains), keeping the unpacked weights and their lock file
    at ``target``; returns (the packed weights, the trained token rows, the lock text)."""
    import dataclasses

    from tracer_cli.cli.progress import make_reporter
    from tracer_cli.engine import run
    from tracer_cli.events import use_reporter
    from tracer_plugins.backbones import embedded

    kept: dict[str, Any] = {}

    def keep_packed(state: dict, checkpoint: dict) -> dict:
        # embedded.finalize, with the packed form kept for the file this script writes.
        kept["trained"] = embedded.trained_rows(checkpoint, state[embedded.TOKEN_KEY].shape)
        kept["packed"] = embedded.pack(state, kept["trained"])
        return embedded.unpack(kept["packed"])

    plan = dataclasses.replace(embedded.weights_build(arch, seed), target=target,
                               finalize=keep_packed, shipped=None)
    with use_reporter(make_reporter()):
        run.train_weights(plan)
    lock = target.with_suffix(".lock.toml").read_text(encoding="utf-8")
    return kept["packed"], kept["trained"], lock


def _pack_run(run_dir: Path, arch: str, seed: int) -> tuple[dict, Any, str] | None:
    """(the packed weights, the trained token rows, the lock text) of a finished pretraining run,
    or None (with the error printed) when it is not the build of ``arch`` at ``seed``."""
    from tracer_cli import recipe as recipe_mod
    from tracer_cli import rundir
    from tracer_cli.rundir import checksums
    from tracer_cli.engine import checkpoint
    from tracer_plugins.backbones import embedded

    with tempfile.TemporaryDirectory(prefix="tracer-weights-") as tmp:
        source = Path(tmp) / "recipe.toml"
        source.write_text(embedded.pretrain_recipe_text(), encoding="utf-8")
        build = recipe_mod.load(source, list(embedded.build_overrides(arch, seed)))
        last = checkpoint.load(rundir.last_path(run_dir))
        differences = recipe_mod.resume_differences(last["recipe"], build)
    if differences:
        print(f"error: {run_dir} is not the build of {arch} seed {seed}: "
              + "; ".join(differences), file=sys.stderr)
        return None
    state = last["state_dict"]
    trained = embedded.trained_rows(last, state[embedded.TOKEN_KEY].shape)
    lock = rundir.recipe_lock_path(run_dir).read_text(encoding="utf-8")
    return embedded.pack(state, trained), trained, lock


def _plain_mode() -> int:
    """The mode a file created with ``open(path, "w")`` gets: 0o666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _store(target: Path, state: dict, lock: str) -> None:
    """Unpacked weights where a build keeps them, as :func:`run.train_weights` stores them: the
    lock file first, the weights (with their SHA-256 beside them) last."""
    from tracer_cli.engine import checkpoint

    target.parent.mkdir(parents=True, exist_ok=True)
    target.with_suffix(".lock.toml").write_text(lock, encoding="utf-8")
    checkpoint.save(target, {"state_dict": state})


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
