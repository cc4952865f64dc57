"""The retrieval and VQA quickstarts against their plain baselines: BENCHMARKS.md's tasks block.

    python benchmarks/tasks.py --report BENCHMARKS.md     # seeds 0 1 2, embedded CLIP seed 0
    python benchmarks/tasks.py --dry-run                  # the plan
    python benchmarks/tasks.py --seeds 0 --jobs 1

Every run goes through the real CLI (``tracer finetune RECIPE --set ...``). Each task's recipe runs
as shipped (TRACER; its run also evaluates the pretrained model, the zero-shot row) and once per
plain baseline, on every seed:

  retrieval  ``recipes/quickstart_retrieval.toml``: tracer; flyp (the same contrastive loss on
             captions, no teacher, no distillation)
  vqa        ``recipes/quickstart_vqa.toml``: tracer (contrastive on "{question} {answer}"
             texts); lp (the answer head on frozen features); ft (head and backbone, no
             teacher); flyp (the same contrastive texts, no teacher)

A baseline is the recipe with ``train.method`` set and its ``[teacher]`` and ``[distill]`` tables
emptied. Tables and paired differences (by seed; within noise when |mean| < 2 SE) are ``tracer
compare --by train.method --baseline B --markdown`` over each task's runs, B being the plain
method that trains what TRACER trains (flyp for both). ``--set KEY=VALUE`` overrides
every run (e.g. a shorter schedule); each child gets OMP_NUM_THREADS = MKL_NUM_THREADS =
``--threads`` (default max(1, cpu_count // jobs)). A finished run is reused when its command is
unchanged (``command.txt`` and ``summary.json`` next to it); runs go seed by seed, so an
interrupted study can be reported for the seeds it finished (``--seeds`` naming them).

Output: ``OUT/tasks.json`` (the Markdown and the minutes it took) and, with ``--report``, the block
between ``<!-- tasks:begin -->`` and ``<!-- tasks:end -->`` of that file (replaced, else appended).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from datetime import date
from pathlib import Path

from cli_runs import (add_run_options, compare_markdown, print_plan, replace_block, run_all,
                      threads_per_run)

# task -> (recipe, plain baselines, the baseline of the paired differences, what a row means)
TASKS = {
    "retrieval": ("recipes/quickstart_retrieval.toml", ("flyp",), "flyp",
                  "finetuned and tested ID on photos whose shapes come in their own colours (the "
                  "colour tie); 1,000 test images with 3 captions each per domain. The headline is mean recall % (the mean of R@1/5/10 in both "
                  "directions); the SE is the spread over seeds."),
    "vqa": ("recipes/quickstart_vqa.toml", ("lp", "ft", "flyp"), "flyp",
            "questions about shape, colour, size, position and count on photos; 2,000 test "
            "questions per domain, colour not asked about sketches. Accuracy %; the zero-shot row "
            "and the contrastive runs (tracer, flyp) answer CLIP-style (the image against "
            "\"{question} {answer}\" for every answer), lp and ft through their head."),
}
PLAIN = ("--set", "teacher={}", "--set", "distill={}")


def run_cmd(recipe: str, out: Path, method: str, seed: int, embedded_seed: int,
            sets: list[str]) -> list[str]:
    """The finetune command of ``method`` (``tracer``: the recipe as shipped) at ``seed``."""
    name = f"{method}_s{seed}"
    cmd = [sys.executable, "-m", "tracer_cli", "finetune", recipe, "--output-dir", str(out),
           "--overwrite", "--json", "--set", f"run.name={name}", "--set", f"run.seed={seed}",
           "--set", "train.checkpoint_every=0", "--set", f"model.embedded_seed={embedded_seed}"]
    if method != "tracer":  # the pretrained model is evaluated once, by the TRACER run
        cmd += ["--set", "run.eval_zeroshot=false", "--set", f"train.method={method}", *PLAIN]
    for item in sets:
        cmd += ["--set", item]
    return cmd


def plan(args: argparse.Namespace, out: Path) -> dict[tuple[str, str, int], list[str]]:
    """Every run, seed by seed: an interrupted study leaves whole seeds behind, which a second
    invocation with ``--seeds`` naming them reports from the finished runs."""
    return {(task, method, seed): run_cmd(recipe, out / task, method, seed, args.embedded_seed,
                                          args.sets)
            for seed in args.seeds
            for task, (recipe, baselines, _, _) in TASKS.items() if task in args.tasks
            for method in ("tracer", *baselines)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add_run_options(p, "runs/tasks")
    args = p.parse_args()
    threads = threads_per_run(args)
    out = args.out.resolve()
    commands = plan(args, out)
    if args.dry_run:
        return print_plan(commands.values(), f"{len(commands)} runs")
    t0 = time.perf_counter()
    run_all({key: (cmd, out / key[0] / f"{key[1]}_s{key[2]}")
             for key, cmd in commands.items()}, args.jobs, threads)
    minutes = (time.perf_counter() - t0) / 60
    cmdline = "python benchmarks/tasks.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    parts = [f"`{cmdline.strip()}` ({date.today().isoformat()}, {minutes:.0f} min, "
             f"{os.cpu_count()} CPUs, {args.jobs} runs in parallel at {threads} thread(s) each; "
             f"embedded CLIP seed {args.embedded_seed}, seeds {' '.join(map(str, args.seeds))})."]
    for task, (recipe, baselines, baseline, what) in TASKS.items():
        if task not in args.tasks:
            continue
        methods = ", ".join(("tracer", *baselines))
        table = compare_markdown([str(out / task / "*_s*")], "train.method", baseline, top=4)
        parts.append(f"**{task}** (`{recipe}`; {methods}): {what}\n\n{table.strip()}")
    body = "\n\n".join(parts) + "\n"
    (out / "tasks.json").write_text(json.dumps({"minutes": minutes, "markdown": body}, indent=2))
    print(body)
    if args.report:
        replace_block(args.report, body, "tasks")


if __name__ == "__main__":
    main()
