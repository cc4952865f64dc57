"""Does the embedded world show the phenomenon TRACER is about? Plain finetuning vs TRACER.

Runs the quickstart recipe twice per seed through the real CLI: once as plain contrastive
finetuning (no teacher, no distillation, no regularizer) and once as shipped (TRACER), then prints
a Markdown table of zero-shot vs finetuned accuracy per domain with standard errors, and says which
changes are larger than their noise.

    python benchmarks/phenomenon.py                      # seeds 0 1 2, runs in ./runs/phenomenon
    python benchmarks/phenomenon.py --seeds 0 --out /tmp/ph

Standard errors: with several seeds, the standard error of the mean over seeds combined with the
binomial error of each evaluation set; with one seed, the binomial error sqrt(p(1-p)/n) alone.
A change counts as beyond noise when it exceeds twice the standard error of the difference.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

PLAIN = ["--set", "teacher.kind=none", "--set", "distill.lambda_sd=0",
         "--set", "distill.lambda_fn=0"]
METHODS = {"plain finetune": PLAIN, "TRACER (quickstart)": []}


def _run(recipe: str, out: Path, name: str, seed: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "tracer_cli", "finetune", recipe, "--output-dir", str(out),
           "--overwrite", "--json", "--set", f"run.name={name}", "--set", f"run.seed={seed}", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _mean_se(values: list[float], ns: list[int]) -> tuple[float, float]:
    """Mean over seeds; SE from the spread over seeds and the binomial error of each set."""
    v = np.asarray(values)
    binom = np.mean([p * (1 - p) / n for p, n in zip(values, ns)])
    spread = v.var(ddof=1) / len(v) if len(v) > 1 else 0.0
    return float(v.mean()), math.sqrt(spread + binom / len(v))


def _collect(results: list[dict], model: str, datasets: list[str]) -> dict[str, tuple]:
    out = {}
    for name in datasets:
        accs = [r["eval"]["models"][model][name]["accuracy"] for r in results]
        ns = [r["eval"]["models"][model][name]["n"] for r in results]
        out[name] = _mean_se(accs, ns)
    avg = [r["eval"]["models"][model]["avg_ood_accuracy"] for r in results]
    n_ood = sum(results[0]["eval"]["models"][model][d]["n"] for d in results[0]["eval"]["ood"])
    out["average OOD"] = _mean_se(avg, [n_ood] * len(avg))
    return out


def _fmt(mean: float, se: float) -> str:
    return f"{100 * mean:.2f} ± {100 * se:.2f}"


def _verdict(new: tuple, old: tuple) -> str:
    diff = new[0] - old[0]
    se = math.sqrt(new[1] ** 2 + old[1] ** 2)
    word = "within noise" if abs(diff) <= 2 * se else ("up" if diff > 0 else "down")
    return f"{100 * diff:+.2f} ({word})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="recipes/quickstart.toml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/phenomenon"))
    args = p.parse_args()
    runs = {m: [_run(args.recipe, args.out, f"{m.split()[0].lower()}_s{s}", s, extra)
                for s in args.seeds] for m, extra in METHODS.items()}
    first = next(iter(runs.values()))[0]["eval"]
    datasets = first["id"] + first["ood"]
    zeroshot = _collect(runs["plain finetune"][:1], "zeroshot", datasets)
    rows = {m: _collect(r, "student", datasets) for m, r in runs.items()}
    rows["TRACER teacher (WMA)"] = _collect(runs["TRACER (quickstart)"], "teacher", datasets)
    roles = {d: "ID" for d in first["id"]} | {d: "OOD" for d in first["ood"]}
    print(f"seeds {args.seeds}; recipe {args.recipe}; accuracy % (mean ± SE); change vs zero-shot\n")
    print("| dataset | role | zero-shot | " + " | ".join(rows) + " |")
    print("|---|---|---|" + "---|" * len(rows))
    for name in [*datasets, "average OOD"]:
        cells = [f"{_fmt(*r[name])}, {_verdict(r[name], zeroshot[name])}" for r in rows.values()]
        print(f"| {name} | {roles.get(name, '')} | {_fmt(*zeroshot[name])} | " + " | ".join(cells)
              + " |")
    walls = {m: np.mean([r["wall_time_s"] for r in rs]) for m, rs in runs.items()}
    print("\nmean wall time per run: " + ", ".join(f"{m} {w:.0f} s" for m, w in walls.items()))


if __name__ == "__main__":
    main()
