"""Does TRACER keep more OOD accuracy than plain finetuning on VQA, once its loss weights are chosen
on a validation split? Runs through the real CLI; statistics and tables from ``tracer compare``.

    python benchmarks/vqa.py                 # sweep on vqa-mono, then FT vs TRACER on the tests
    python benchmarks/vqa.py --dry-run       # the plan
    python benchmarks/vqa.py --steps 200 --seeds 0 1 2 --sweep-seeds 0 1

Phase 1 (choose): TRACER (``--recipe``, default recipes/quickstart_vqa.toml) for every λ_sd in
``--lambdas`` and ICL weight in ``--icl`` on the sweep seeds; each run is evaluated on the
validation split only: synth-vqa *monochrome* photos (``vqa-mono``, a domain none of the reported
test sets uses; colour is not asked about it). The pair with the highest mean validation accuracy
is chosen (ties: the recipe's own values).
Phase 2 (report): plain finetuning (``train.method = "ft"``, no teacher) and TRACER with the chosen
weights, on the finetuning seeds, evaluated on the recipe's ID and OOD test sets; the table and
the paired differences (TRACER − FT, by seed; within noise when |mean| < 2 SE) are ``tracer
compare --markdown --baseline ft`` over those runs.

Each child gets OMP_NUM_THREADS = MKL_NUM_THREADS = --threads (default max(1, cpu_count // jobs)). A finished run is
reused when its command is unchanged (its ``summary.json`` and ``command.txt`` next to it).
Output: ``OUT/vqa.json`` and, with ``--report``, the block between ``<!-- vqa:begin -->`` and
``<!-- vqa:end -->`` of that file (replaced, else appended).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
from cli_runs import (ROOT, add_run_options, compare_markdown, print_plan, replace_block,
                      run_all, threads_per_run)

VAL_SET = ('[{ name = "synth-vqa", label = "vqa-mono", domains = ["mono"], '
           'kinds = ["shape", "size", "position", "count"] }]')
PLAIN = ["--set", "train.method=ft", "--set", "teacher={}", "--set", "distill={}"]


def run_cmd(recipe: str, out: Path, name: str, seed: int, extra: list[str],
            steps: int | None, embedded_seed: int, sets: list[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "tracer_cli", "finetune", recipe, "--output-dir", str(out),
           "--overwrite", "--json", "--set", f"run.name={name}", "--set", f"run.seed={seed}",
           "--set", "train.checkpoint_every=0", "--set", "run.eval_zeroshot=false",
           "--set", f"model.embedded_seed={embedded_seed}", *extra]
    if steps is not None:
        cmd += ["--set", f"train.steps={steps}"]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def _recipe_weights(recipe: str) -> tuple[float, float]:
    """The recipe's own (λ_sd, ICL weight): what a tie on validation goes to."""
    import tomllib

    with open(ROOT / recipe if not Path(recipe).is_absolute() else recipe, "rb") as f:
        distill = tomllib.load(f).get("distill", {})
    return float(distill.get("lambda_sd", 0.0)), float(distill.get("icl", 0.0))


def accuracy(summary: dict, dataset: str) -> float:
    return summary["eval"]["models"]["student"][dataset]["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="recipes/quickstart_vqa.toml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sweep-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lambdas", type=float, nargs="+", default=[0.1, 0.3, 0.9])
    p.add_argument("--icl", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--steps", type=int, help="train.steps of every run (default: the recipe's)")
    add_run_options(p, "runs/vqa")
    args = p.parse_args()
    threads = threads_per_run(args)
    out = args.out.resolve()
    sweep_dir, test_dir = out / "sweep", out / "test"
    grid = [(lam, icl) for lam in args.lambdas for icl in args.icl]
    sweep = {(lam, icl, s): run_cmd(args.recipe, sweep_dir, f"tracer-l{lam:g}-icl{icl:g}_s{s}", s,
                                    ["--set", f"distill.lambda_sd={lam}", "--set",
                                     f"distill.icl={icl}", "--set", f"data.ood={VAL_SET}"],
                                    args.steps, args.embedded_seed, args.sets)
             for lam, icl in grid for s in args.sweep_seeds}
    if args.dry_run:
        return print_plan(sweep.values(),
                          f"phase 1: {len(sweep)} runs; phase 2: {2 * len(args.seeds)} runs")
    t0 = time.perf_counter()

    def launch(cmds: dict, folder: Path) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        return run_all({key: (cmd, folder / cmd[cmd.index("--set") + 1].split("=", 1)[1])
                        for key, cmd in cmds.items()}, args.jobs, threads)

    results = launch(sweep, sweep_dir)
    means = {(lam, icl): float(np.mean([accuracy(results[(lam, icl, s)], "vqa-mono")
                                         for s in args.sweep_seeds])) for lam, icl in grid}
    best = max(means.values())
    own = _recipe_weights(args.recipe)
    chosen = max((k for k, v in means.items() if abs(v - best) <= 1e-12),
                 key=lambda k: (k == own, -grid.index(k)))
    tests = {}
    for s in args.seeds:
        tests[("ft", s)] = run_cmd(args.recipe, test_dir, f"ft_s{s}", s, PLAIN, args.steps,
                                   args.embedded_seed, args.sets)
        tests[("tracer", s)] = run_cmd(
            args.recipe, test_dir, f"tracer_s{s}", s,
            ["--set", f"distill.lambda_sd={chosen[0]}", "--set", f"distill.icl={chosen[1]}"],
            args.steps, args.embedded_seed, args.sets)
    launch(tests, test_dir)
    compare = compare_markdown([str(test_dir / "ft_s*"), str(test_dir / "tracer_s*")],
                               "train.method", "ft", top=5)
    minutes = (time.perf_counter() - t0) / 60
    sweep_rows = "\n".join(
        f"| {lam:g} | {icl:g} | " + " | ".join(
            f"{100 * accuracy(results[(lam, icl, s)], 'vqa-mono'):.2f}" for s in args.sweep_seeds)
        + f" | {100 * means[(lam, icl)]:.2f}{' (chosen)' if (lam, icl) == chosen else ''} |"
        for lam, icl in grid)
    cmdline = "python benchmarks/vqa.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    body = (f"`{cmdline.strip()}` ({minutes:.0f} min, {os.cpu_count()} CPUs, "
            f"{args.jobs} runs in parallel at {threads} thread(s) each).\n\n"
            f"Validation (vqa-mono accuracy %, TRACER, seeds "
            f"{' '.join(map(str, args.sweep_seeds))}):\n\n"
            f"| λ_sd | ICL | " + " | ".join(f"seed {s}" for s in args.sweep_seeds)
            + " | mean |\n|---|---|" + "---|" * (len(args.sweep_seeds) + 1) + "\n"
            + sweep_rows + "\n\nTest sets, FT (no teacher) vs TRACER at the chosen weights "
            f"(λ_sd {chosen[0]:g}, ICL {chosen[1]:g}), seeds {' '.join(map(str, args.seeds))}, "
            "`tracer compare --by train.method --baseline ft --markdown`:\n\n"
            + compare)
    (out / "vqa.json").write_text(json.dumps(
        {"chosen": {"lambda_sd": chosen[0], "icl": chosen[1]},
         "validation": {f"{lam:g},{icl:g}": means[(lam, icl)] for lam, icl in grid},
         "minutes": minutes, "markdown": body}, indent=2))
    print(body)
    if args.report:
        replace_block(args.report, body, "vqa")


if __name__ == "__main__":
    main()
