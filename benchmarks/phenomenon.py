"""Does the embedded world show the phenomenon TRACER is about? Plain finetuning vs TRACER, for
every pretrained model.

Either runs the quickstart recipe through the real CLI, for every pretraining seed of the
embedded CLIP (``model.embedded_seed``) and finetuning seed, once as plain contrastive finetuning
(no teacher, no distillation, no regularizer) and once as shipped (TRACER); or (``--from DIR``)
reads such runs from ``python benchmarks/robustness.py --out DIR`` (its ``flyp`` or ``--plain``
runs, the chosen ``tracer`` runs and the ``zeroshot`` runs: the synth_<method>.toml recipes pose
the quickstart's problem at batch 64). Prints Markdown: one table per pretrained model, then one
pooled over them.

    python benchmarks/phenomenon.py                              # pretrain 0 1 2 x seeds 0 1 2
    python benchmarks/phenomenon.py --pretrain-seeds 0 --seeds 0 --out /tmp/ph
    python benchmarks/phenomenon.py --from runs/robustness       # no training: the benchmark's

Errors. Per pretrained model: mean over finetuning seeds, SE = sqrt(var between seeds / n + mean
binomial variance / n) (one seed: the binomial error alone). Pooled: the mean of the models'
means, SE = sqrt(var between models / P + mean within-model SE² / P), so the spread over
pretraining seeds is in it. A change against zero-shot is up/down when it exceeds twice the SE of
the difference (the two SEs combined), else within noise. A pretrained model "shows the
phenomenon" when plain finetuning moves its ID accuracy up and its average OOD accuracy down,
both beyond noise.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from tracer_cli import rundir
from tracer_cli.analysis.stats import mean_se

PLAIN = ["--set", "teacher.kind=none", "--set", "distill.lambda_sd=0",
         "--set", "distill.lambda_fn=0"]
PLAIN_NAME, TRACER_NAME, TEACHER_NAME = "plain finetune", "TRACER (student)", "TRACER teacher"


def _run(recipe: str, out: Path, name: str, seed: int, pseed: int, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "tracer_cli", "finetune", recipe, "--output-dir", str(out),
           "--overwrite", "--json", "--set", f"run.name={name}", "--set", f"run.seed={seed}",
           "--set", f"model.embedded_seed={pseed}", "--set", "train.checkpoint_every=0", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def _summary(run_dir: Path) -> dict:
    path = rundir.summary_path(run_dir)
    if not path.is_file():
        sys.exit(f"{path}: missing (is the benchmark finished?)")
    return json.loads(path.read_text())


def _model_eval(summary: dict, model: str) -> dict:
    return summary["eval"]["models"][model]


def _accs(ev: dict, datasets: list[str], ood: list[str]) -> tuple[dict, dict]:
    """Accuracy and binomial variance per dataset, plus the average OOD."""
    acc = {d: ev[d]["accuracy"] for d in datasets}
    var = {d: acc[d] * (1 - acc[d]) / ev[d]["n"] for d in datasets}
    acc["average OOD"] = float(np.mean([acc[d] for d in ood]))
    var["average OOD"] = sum(var[d] for d in ood) / len(ood) ** 2
    return acc, var


def _mean_se(evals: list[tuple[dict, dict]], key: str) -> tuple[float, float]:
    return mean_se([a[key] for a, _ in evals], [v[key] for _, v in evals])


def _pool(cells: list[tuple[float, float]]) -> tuple[float, float]:
    # The same formula one level up: the models' means, with their SE² as the "binomial" term.
    return mean_se([m for m, _ in cells], [se ** 2 for _, se in cells])


def _fmt(cell: tuple[float, float]) -> str:
    return f"{100 * cell[0]:.2f} ± {100 * cell[1]:.2f}"


def _change(new: tuple[float, float], old: tuple[float, float]) -> tuple[float, str]:
    diff = new[0] - old[0]
    se = math.sqrt(new[1] ** 2 + old[1] ** 2)
    word = "within noise" if abs(diff) <= 2 * se else ("up" if diff > 0 else "down")
    return diff, word


def _table(title: str, rows: dict[str, dict], zero: dict, names: list[str],
           roles: dict[str, str]) -> str:
    lines = [title, "", "| dataset | role | zero-shot | " + " | ".join(rows) + " |",
             "|---|---|---|" + "---|" * len(rows)]
    for name in names:
        cells = []
        for row in rows.values():
            diff, word = _change(row[name], zero[name])
            cells.append(f"{_fmt(row[name])}, {100 * diff:+.2f} ({word})")
        lines.append(f"| {name} | {roles.get(name, '')} | {_fmt(zero[name])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _collect_from(root: Path, pseeds: list[int], seeds: list[int], plain: str = "flyp"):
    runs = root / "runs" if (root / "runs").is_dir() else root
    results = root / "results.json"
    chosen = json.loads(results.read_text()).get("choice", {}) if results.is_file() else {}
    beta, lam = chosen.get("beta"), chosen.get("lambda_sd")
    tracer = (f"tracer-b{beta:g}-l{lam:g}" if beta is not None and lam is not None else "tracer")
    data = {}
    for p in pseeds:
        zero = _summary(runs / f"zeroshot_p{p}_s{seeds[0]}")
        data[p] = {"zero": _model_eval(zero, "student"), "eval": zero["eval"],
                   PLAIN_NAME: [_model_eval(_summary(runs / f"{plain}_p{p}_s{s}"), "student")
                                for s in seeds],
                   TRACER_NAME: [], TEACHER_NAME: []}
        for s in seeds:
            summary = _summary(runs / f"{tracer}_p{p}_s{s}")
            data[p][TRACER_NAME].append(_model_eval(summary, "student"))
            data[p][TEACHER_NAME].append(_model_eval(summary, "teacher"))
    flag = "" if plain == "flyp" else f" --plain {plain}"
    return data, (f"`python benchmarks/phenomenon.py --from {root}{flag}` (plain finetuning: the "
                  f"{plain} runs; TRACER: {tracer})")


def _collect_runs(args) -> tuple[dict, str]:
    data = {}
    for p in args.pretrain_seeds:
        # The zero-shot model is evaluated once per pretrained model (the first plain run).
        once = ["--set", "run.eval_zeroshot=false"]
        plain = [_run(args.recipe, args.out, f"plain_p{p}_s{s}", s, p, PLAIN + (once if i else []))
                 for i, s in enumerate(args.seeds)]
        tracer = [_run(args.recipe, args.out, f"tracer_p{p}_s{s}", s, p, once)
                  for s in args.seeds]
        data[p] = {"zero": _model_eval(plain[0], "zeroshot"), "eval": plain[0]["eval"],
                   PLAIN_NAME: [_model_eval(r, "student") for r in plain],
                   TRACER_NAME: [_model_eval(r, "student") for r in tracer],
                   TEACHER_NAME: [_model_eval(r, "teacher") for r in tracer]}
    return data, f"`python benchmarks/phenomenon.py --recipe {args.recipe}`"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default="recipes/quickstart.toml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pretrain-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/phenomenon"))
    p.add_argument("--from", dest="source", type=Path,
                   help="read the runs of `python benchmarks/robustness.py --out DIR` instead")
    p.add_argument("--plain", default="flyp", metavar="METHOD",
                   help="with --from: the benchmark method that stands for plain finetuning "
                        "(default flyp, contrastive like the quickstart; ft: a cross-entropy head)")
    args = p.parse_args()
    data, how = (_collect_from(args.source, args.pretrain_seeds, args.seeds, args.plain)
                 if args.source else _collect_runs(args))
    first = next(iter(data.values()))["eval"]
    datasets, ood = first["id"] + first["ood"], first["ood"]
    names = [*datasets, "average OOD"]
    roles = {d: "ID" for d in first["id"]} | {d: "OOD" for d in ood}
    methods = (PLAIN_NAME, TRACER_NAME, TEACHER_NAME)
    per_model, verdicts = {}, {}
    out = [f"{how}; pretraining seeds {args.pretrain_seeds}, finetuning seeds {args.seeds}; "
           "accuracy % (mean ± SE), change against zero-shot.", ""]
    for pseed, d in data.items():
        zero_acc = _accs(d["zero"], datasets, ood)
        zero = {n: (zero_acc[0][n], math.sqrt(zero_acc[1][n])) for n in names}
        rows = {m: {n: _mean_se([_accs(ev, datasets, ood) for ev in d[m]], n) for n in names}
                for m in methods}
        per_model[pseed] = (zero, rows)
        id_name = first["id"][0]
        id_word = _change(rows[PLAIN_NAME][id_name], zero[id_name])[1]
        ood_word = _change(rows[PLAIN_NAME]["average OOD"], zero["average OOD"])[1]
        verdicts[pseed] = id_word == "up" and ood_word == "down"
        out += [_table(f"Pretrained model {pseed} (`model.embedded_seed = {pseed}`): plain "
                       f"finetuning ID {id_word}, average OOD {ood_word}; phenomenon "
                       f"{'shown' if verdicts[pseed] else 'NOT shown'}.",
                       rows, zero, names, roles), ""]
    zero_pool = {n: _pool([per_model[p][0][n] for p in per_model]) for n in names}
    rows_pool = {m: {n: _pool([per_model[p][1][m][n] for p in per_model]) for n in names}
                 for m in methods}
    out.append(_table(f"Pooled over the {len(per_model)} pretrained models (SE includes the "
                      "spread over pretraining seeds):", rows_pool, zero_pool, names, roles))
    zs_id = {p: 100 * per_model[p][0][first['id'][0]][0] for p in per_model}
    out += ["", "Zero-shot ID accuracy per pretrained model: "
            + ", ".join(f"{p}: {v:.2f}" for p, v in zs_id.items())
            + f" (range {max(zs_id.values()) - min(zs_id.values()):.2f} points). Phenomenon shown "
            f"by {sum(verdicts.values())} of {len(verdicts)} pretrained models."]
    print("\n".join(out))
    sys.exit(0 if all(verdicts.values()) else 1)


if __name__ == "__main__":
    main()
