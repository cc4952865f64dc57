"""Build the embedded tiny CLIP and write the packed weights tracer ships with it.

``model.pretrained = "embedded"`` unpacks ``plugins/backbones/weights/<arch>-<digest>.safetensors``
when tracer ships it for that pretraining seed (seed 0), instead of pretraining for minutes. This
script makes that file: it runs the packaged pretraining recipe exactly as the engine's build does
(``recipes/tiny_pretrain.toml`` with the build's overrides), packs the student's weights
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

    from tracer_cli import recipe as recipe_mod
    from tracer_cli import rundir
    from tracer_cli.engine import checkpoint
    from tracer_cli.engine.run import finetune
    from tracer_cli.cli.progress import make_reporter
    from tracer_cli.events import use_reporter
    from tracer_plugins.backbones import embedded

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = list(embedded.build_overrides(args.arch, args.seed))
    with tempfile.TemporaryDirectory(prefix="tracer-weights-") as tmp:
        source = Path(tmp) / "recipe.toml"
        source.write_text(embedded.pretrain_recipe_text(), encoding="utf-8")
        build = recipe_mod.load(source, overrides)
        start = time.perf_counter()
        if args.source is None:
            with use_reporter(make_reporter()) as reporter:
                result = finetune(build, output_dir=Path(tmp) / "runs", reporter=reporter)
            run_dir = result.run_dir
        else:
            run_dir = args.source
        last = checkpoint.load(rundir.last_path(run_dir))
        differences = recipe_mod.resume_differences(last["recipe"], build)
        if differences:
            print(f"error: {run_dir} is not the build of {args.arch} seed {args.seed}: "
                  + "; ".join(differences), file=sys.stderr)
            return 2
        lock = rundir.recipe_lock_path(run_dir).read_text(encoding="utf-8")
        built_s = time.perf_counter() - start
    state = last["state_dict"]
    trained = embedded.trained_rows(last, state[embedded.TOKEN_KEY].shape)
    packed = embedded.pack(state, trained)
    if args.cache:
        target = embedded.embedded_path(args.arch, args.seed)
        target.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save(target, {"state_dict": embedded.unpack(packed)})
        target.with_suffix(".lock.toml").write_text(lock, encoding="utf-8")
        print(f"{target}: unpacked weights of {args.arch} seed {args.seed}")
        return 0
    out = args.out or embedded.WEIGHTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / embedded.shipped_path(args.arch, args.seed).name
    partial = path.with_name(path.name + ".partial")
    save_file(packed, str(partial))
    digest = embedded.file_sha256(partial)
    path.with_name(path.name + ".sha256").write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    path.with_name(path.name.removesuffix(".safetensors") + ".lock.toml").write_text(
        lock, encoding="utf-8")
    os.replace(partial, path)
    rows = int(trained.sum())
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, sha256 {digest}, "
          f"{rows:,} trained token rows of {len(trained):,}"
          + (f", built in {built_s / 60:.1f} min" if args.source is None else ""))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
