"""Retention on the embedded world: what FT, FLYP and TRACER keep of a task they are not finetuned
on (naming the colour of a shape, ``synth-colour``): BENCHMARKS.md's retention block.

    python benchmarks/retention.py --report BENCHMARKS.md    # seeds 0 1 2, embedded CLIP seed 0
    python benchmarks/retention.py --dry-run                 # the plan
    python benchmarks/retention.py --seeds 0 --jobs 1

Every step goes through the real CLI. Each method's recipe ``recipes/synth_<method>.toml`` is
finetuned as shipped (TRACER at β 0.2, λ_sd 5, the setting of README's headline table, chosen on
the validation domain), with ``run.eval = false``: its ID and OOD numbers are those of the
robustness benchmark, and leaving them out keeps this study cheap. Then ``tracer eval RUN
--retain synth-colour`` scores the pretrained model (θ₀, "before") and the finetuned student
("after") zero-shot on the same ``--retain-size`` test images (default 2,000). FT's head has only
the shape classes, so its retention goes through the text tower, as for every method.

Per method: retained accuracy (mean ± SE over seeds, with the binomial term), its change from the
pretrained model (after minus before; the SE is the spread over seeds, the test images being the
same), and the paired difference (by seed) of retained accuracy against ``--baseline`` (FLYP).
Finished runs and evaluations are reused when their command is unchanged (``command.txt`` next
to ``summary.json``; ``retention.json`` holds its eval command).

Output: ``OUT/retention.json`` (the Markdown and the numbers) and, with ``--report``, the block
between ``<!-- retention:begin -->`` and ``<!-- retention:end -->`` of that file.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from cli_runs import (ROOT, add_run_options, print_plan, replace_block, run_all,
                      threads_per_run)

from tracer_cli.analysis.report import fmt_diff, fmt_pct
from tracer_cli.analysis.stats import binomial_var, mean_se, paired_difference

METHODS = ("ft", "flyp", "tracer")
# README's headline TRACER setting (benchmarks/robustness.py chose it on synth-mono).
TRACER_SETS = ("teacher.beta=0.2", "distill.lambda_sd=5.0")
RETAIN = "synth-colour"


def finetune_cmd(out: Path, method: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The training run of ``method`` at ``seed`` (no evaluation: retention is measured after)."""
    sets = [f"run.name={method}-s{seed}", f"run.seed={seed}", f"run.output_dir={out}",
            "run.eval=false", "train.checkpoint_every=0",
            f"model.embedded_seed={args.embedded_seed}",
            *(TRACER_SETS if method == "tracer" else ()), *args.sets]
    return [sys.executable, "-m", "tracer_cli", "finetune", f"recipes/synth_{method}.toml",
            *(part for item in sets for part in ("--set", item)), "--overwrite", "--json"]


def eval_cmd(run: Path, size: int) -> list[str]:
    """Retention before (θ₀) and after (the student) on ``size`` synth-colour test images."""
    return [sys.executable, "-m", "tracer_cli", "eval", str(run), "--retain", RETAIN,
            "--set", "data.id=[]", "--set", "data.ood=[]",
            "--set", f"data.retain[0].size={size}", "--json"]


def evaluate(run: Path, size: int, threads: int) -> dict:
    """The eval document of :func:`eval_cmd`, reused from ``run/retention.json`` when its
    command is unchanged."""
    cmd = eval_cmd(run, size)
    saved = run / "retention.json"
    text = shlex.join(cmd[1:])
    if saved.is_file():
        doc = json.loads(saved.read_text())
        if doc.get("command") == text:
            return doc["eval"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {text}\n{done.stderr[-3000:]}")
    doc = json.loads(done.stdout)
    saved.write_text(json.dumps({"command": text, "eval": doc}, indent=2))
    return doc


def _row(method: str, mine: dict[int, dict], base: dict[int, float] | None, n: int) -> str:
    """One method's line: retained accuracy, its change, the paired difference to the baseline
    (``base``: the baseline's retained accuracy by seed; None on the baseline's own line)."""
    after = [d["retain_accuracy"] for d in mine.values()]
    change = mean_se([d["retain_change"] for d in mine.values()])
    if base is None:
        diff = "—"
    else:
        pair = paired_difference({s: d["retain_accuracy"] for s, d in mine.items()}, base)
        diff = f"{fmt_diff(pair)} ({pair['verdict']})"
    change_se = change[1] if len(mine) > 1 else None
    return (f"| {method} | {fmt_pct(mean_se(after, [binomial_var(a, n) for a in after]))} | "
            f"{fmt_pct((change[0], change_se), signed=True)} | {diff} | "
            f"{', '.join(map(str, mine))} |")


def table(docs: dict[tuple[str, int], dict], baseline: str) -> str:
    """The Markdown table: the pretrained model (the same θ₀ and images in every run), then one
    row per method."""
    first = next(iter(docs.values()))
    n, before = first["datasets"][RETAIN]["n"], first["retain_before"][RETAIN]["accuracy"]
    by_method = {m: {s: d for (mm, s), d in docs.items() if mm == m} for m in METHODS}
    base = {s: d["retain_accuracy"] for s, d in by_method[baseline].items()}
    rows = ["| model | retained acc % | change vs pretrained | Δ retained acc vs "
            f"{baseline} (paired) | seeds |", "|---|---|---|---|---|",
            f"| zero-shot (pretrained) | {fmt_pct((before, binomial_var(before, n) ** 0.5))} | — "
            "| — | — |"]
    rows += [_row(m, by_method[m], None if m == baseline else base, n)
             for m in METHODS if by_method[m]]
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--retain-size", type=int, default=2000,
                   help="synth-colour test images per evaluation")
    p.add_argument("--baseline", choices=METHODS, default="flyp")
    add_run_options(p, "runs/retention")
    args = p.parse_args()
    threads = threads_per_run(args)
    out = args.out.resolve()
    runs = {(m, s): finetune_cmd(out, m, s, args) for s in args.seeds for m in METHODS}
    if args.dry_run:
        evals = [eval_cmd(out / f"{m}-s{s}", args.retain_size) for m, s in runs]
        return print_plan([*runs.values(), *evals], f"{len(runs)} runs, {len(evals)} evals")
    t0 = time.perf_counter()
    run_all({key: (cmd, out / f"{key[0]}-s{key[1]}") for key, cmd in runs.items()},
            args.jobs, threads)
    docs = {key: evaluate(out / f"{key[0]}-s{key[1]}", args.retain_size, threads)
            for key in runs}
    minutes = (time.perf_counter() - t0) / 60
    cmdline = "python benchmarks/retention.py " + shlex.join(sys.argv[1:])
    body = (f"`{cmdline.strip()}` ({date.today().isoformat()}, {minutes:.0f} min, "
            f"{os.cpu_count()} CPUs; embedded CLIP seed {args.embedded_seed}, seeds "
            f"{' '.join(map(str, args.seeds))}; {RETAIN}, "
            f"{args.retain_size:,} test photos).\n\n{table(docs, args.baseline)}\n")
    (out / "retention.json").write_text(json.dumps(
        {"minutes": minutes, "markdown": body,
         "runs": {f"{m}-s{s}": d for (m, s), d in docs.items()}}, indent=2))
    print(body)
    if args.report:
        replace_block(args.report, body, "retention")


if __name__ == "__main__":
    main()
