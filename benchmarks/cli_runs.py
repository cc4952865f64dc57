"""What the study scripts of benchmarks/ share: finetunes through the real CLI, reused when their
command is unchanged, and a Markdown block written between its markers.

Used by ``vqa.py`` and ``tasks.py`` (run as scripts, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tracer_cli import rundir

ROOT = Path(__file__).resolve().parents[1]


def execute(cmd: list[str], run_dir: Path, threads: int) -> dict:
    """Run one ``python -m tracer_cli finetune ... --json`` (or reuse it: ``command.txt`` in
    ``run_dir`` holds the same command and ``summary.json`` is there); the run's summary.

    The child gets ``threads`` OpenMP/MKL threads; a failure exits with the command and the tail
    of its stderr.
    """
    stamp = run_dir / "command.txt"
    text = shlex.join(cmd[1:])
    summary = rundir.summary_path(run_dir)
    if stamp.is_file() and stamp.read_text() == text and summary.is_file():
        return json.loads(summary.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {text}\n{done.stderr[-3000:]}")
    stamp.write_text(text)
    return json.loads(done.stdout)


def run_all(runs: dict, jobs: int, threads: int) -> dict:
    """``{key: (command, run_dir)}`` → ``{key: summary}``, ``jobs`` runs at a time (each
    through :func:`execute`, so finished ones are reused), started in the dict's order."""
    with cf.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {key: pool.submit(execute, cmd, run_dir, threads)
                   for key, (cmd, run_dir) in runs.items()}
        return {key: future.result() for key, future in futures.items()}


def add_run_options(parser: argparse.ArgumentParser, out: str) -> None:
    """The options every study script takes: recipe overrides, the embedded CLIP's pretraining,
    where the runs go, how many run at once with how many threads, the report, the plan."""
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for every run (repeatable), e.g. "
                             "train.batch_size=64")
    parser.add_argument("--embedded-seed", type=int, default=0,
                        help="which pretraining of the embedded CLIP (model.embedded_seed)")
    parser.add_argument("--out", type=Path, default=Path(out))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int,
                        help="threads per run (default: cpu_count // jobs, at least 1)")
    parser.add_argument("--report", type=Path, help="write the Markdown block into this file")
    parser.add_argument("--dry-run", action="store_true")


def print_plan(commands, footer: str) -> None:
    """``--dry-run``: every command (without the interpreter), then ``# FOOTER``."""
    for cmd in commands:
        print(shlex.join(cmd[1:]))
    print(f"# {footer}")


def threads_per_run(args: argparse.Namespace) -> int:
    """``--threads``, else the CPUs shared out over ``--jobs`` (at least 1)."""
    return args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))


def compare_markdown(patterns: list[str], by: str, baseline: str, top: int = 2) -> str:
    """``tracer compare PATTERNS --by BY --baseline BASELINE --markdown``, its headings moved so
    that its top one (``##``) is at level ``top`` (to sit under a report's own sections); exits
    when the command fails."""
    done = subprocess.run([sys.executable, "-m", "tracer_cli", "compare", *patterns, "--by", by,
                           "--baseline", baseline, "--markdown"],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"tracer compare failed:\n{done.stderr[-3000:]}")
    shift = "#" * max(0, top - 2)
    return re.sub(r"^#", lambda m: shift + m.group(0), done.stdout, flags=re.M)


def replace_block(report: Path, body: str, marker: str) -> None:
    """Put ``body`` between ``<!-- MARKER:begin -->`` and ``<!-- MARKER:end -->`` of ``report``
    (replacing what was there, else appended at the end); the rest of the file is left as it
    was. Written to a temporary file first, then renamed over the report."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = report.read_text() if report.is_file() else ""
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text,
                      flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = report.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(report)
