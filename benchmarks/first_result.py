"""How long a newcomer waits for the first result: the quickstart on an empty cache.

Runs ``tracer finetune recipes/quickstart.toml`` exactly as the README's quickstart does, with an
empty ``TRACER_CACHE`` (so the one-time embedded CLIP build is included) and a fresh output
folder, and prints the wall time until the result table, split into the embedded build and the
finetune itself (the build's end is the moment its weights file appears in the cache).

    python benchmarks/first_result.py                 # a temporary cache and output folder
    python benchmarks/first_result.py --keep /tmp/fr  # keep the cache and the run there
    python benchmarks/first_result.py --json

Exit status: the quickstart's own (non-zero when it failed), else 0. The target is <= 6 min on 2
idle CPU cores (README, "Quickstart").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _watch_build(cache: Path, start: float, done: threading.Event, seen: dict) -> None:
    """Record when the embedded weights file first appears under ``cache``."""
    while not done.wait(0.2):
        files = list((cache / "embedded").glob("*.pt")) if (cache / "embedded").is_dir() else []
        if files:
            seen["build_s"] = time.perf_counter() - start
            return


def measure(work: Path, recipe: str) -> dict:
    cache, out = work / "cache", work / "runs"
    env = {**os.environ, "TRACER_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "tracer_cli", "finetune", recipe, "--output-dir", str(out),
           "--overwrite", "--json"]
    seen: dict = {}
    done = threading.Event()
    start = time.perf_counter()
    watcher = threading.Thread(target=_watch_build, args=(cache, start, done, seen), daemon=True)
    watcher.start()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    total = time.perf_counter() - start
    done.set()
    watcher.join()
    result = {"command": " ".join(cmd[1:]), "returncode": proc.returncode,
              "total_s": round(total, 1), "build_s": round(seen.get("build_s", 0.0), 1),
              "cpu_count": os.cpu_count()}
    result["finetune_s"] = round(total - result["build_s"], 1)
    if proc.returncode != 0:
        result["stderr"] = proc.stderr[-2000:]
        return result
    summary = json.loads(proc.stdout)
    result["accuracy"] = {name: round(100 * m["accuracy"], 2)
                          for name, m in summary["eval"]["models"]["student"].items()
                          if isinstance(m, dict) and "accuracy" in m}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="recipes/quickstart.toml")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a "
                   "temporary folder, removed afterwards)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args()
    if args.keep:
        if args.keep.exists() and any(args.keep.iterdir()):
            sys.exit(f"--keep {args.keep}: the folder must be empty or absent (an empty cache "
                     "is what this measures)")
        args.keep.mkdir(parents=True, exist_ok=True)
        result = measure(args.keep.resolve(), args.recipe)
    else:
        with tempfile.TemporaryDirectory(prefix="tracer-first-result-") as work:
            result = measure(Path(work), args.recipe)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        minutes = lambda s: f"{int(s // 60)} min {s % 60:04.1f} s"  # noqa: E731
        print(f"tracer finetune {args.recipe} on an empty cache, {result['cpu_count']} CPUs")
        print(f"  embedded CLIP build : {minutes(result['build_s'])}")
        print(f"  finetune + evals    : {minutes(result['finetune_s'])}")
        print(f"  first result        : {minutes(result['total_s'])}  (target <= 6 min)")
        for name, acc in result.get("accuracy", {}).items():
            print(f"  {name:<14} {acc:6.2f}")
        if result["returncode"]:
            print(result.get("stderr", ""), file=sys.stderr)
    sys.exit(result["returncode"])


if __name__ == "__main__":
    main()
