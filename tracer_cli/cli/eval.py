"""``tracer eval``: ID and OOD metrics of a run, a checkpoint or any backbone, with CI gates.

The work happens in :mod:`tracer_cli.commands.evaluate`; this module parses flags, draws the
tables and maps a failed gate to exit 3 (after the results are printed, so a failing CI job still
shows them).
The tables show the metrics the run's task declares (classification: accuracy, top-5, ECE, ...;
retrieval: recall@1/5/10 both ways; vqa: accuracy, VQA score, ...).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from tracer_cli.cli.common import (
    JsonOpt,
    SetOpt,
    WhichOpt,
    boundary,
    emit_json,
    result_console,
    stderr_console,
)
from tracer_cli.cli.progress import make_reporter
from tracer_cli.errors import UsageError
from tracer_cli.events import use_reporter
from tracer_cli.io import folder_blocker
from tracer_cli.results.display import retention_table
from tracer_cli.sdk.task_metrics import CLASSIFICATION_METRICS, RETAIN_KEYS, TaskMetrics

app = typer.Typer()

# Where `tracer finetune` puts runs by default (run.output_dir), relative to the working directory.
DEFAULT_RUNS = Path("runs")

RunDirArg = Annotated[Optional[Path], typer.Argument(
    help="Run directory written by `tracer finetune` (evaluates its last.pt). Without it, "
    "--checkpoint, --model or --recipe: the most recent run under ./runs.", metavar="RUN_DIR",
    show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", help="Zero-shot look at a backbone without a run: BACKBONE:ARCH[:PRETRAINED], e.g. "
    "openclip:ViT-B-16:openai or openclip:RN50:/path/weights.pt.", show_default=False)]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="A tracer checkpoint (last.pt, checkpoints/step_N.pt); its architecture "
    "comes from --recipe, the run directory, or the recipe stored in it.", show_default=False)]
RecipeOpt = Annotated[Optional[Path], typer.Option(
    "--recipe", help="Recipe TOML: datasets, task and model (the model is evaluated zero-shot "
    "unless --checkpoint or --model is given).", show_default=False)]
IdOpt = Annotated[Optional[str], typer.Option(
    "--id", help="In-distribution datasets: comma-separated registered names (default: the "
    "recipe's data.id).", show_default=False)]
OodOpt = Annotated[Optional[str], typer.Option(
    "--ood", help="Out-of-distribution datasets, e.g. imagenet-r,imagenet-sketch (default: the "
    "recipe's data.ood).", show_default=False)]
RetainOpt = Annotated[Optional[str], typer.Option(
    "--retain", help="Retention datasets of other tasks, scored zero-shot before (the pretrained "
    "model) and after, e.g. synth-colour (default: the recipe's data.retain).",
    show_default=False)]
EvalOutputOpt = Annotated[Optional[Path], typer.Option(
    "--output-dir", help="Write eval.json, a reliability diagram per dataset (and the WiSE-FT "
    "curve) into this folder.", show_default=False)]
FailUnderOpt = Annotated[Optional[list[str]], typer.Option(
    "--fail-under", metavar="METRIC=VALUE", show_default=False,
    help="Exit 3 when a metric is below VALUE (repeatable): avg_ood_accuracy=0.55, "
    "imagenet-r.accuracy=0.7; the run's task names its metrics (retrieval: "
    "avg_ood_mean_recall=0.5, coco.t2i_r5=0.6).")]
FailOverOpt = Annotated[Optional[list[str]], typer.Option(
    "--fail-over", metavar="METRIC=VALUE", show_default=False,
    help="Exit 3 when a lower-is-better metric (ECE, NLL, Brier) is above VALUE (repeatable): "
    "avg_ood_ece=0.1.")]


@app.command("eval")
@boundary
def eval_command(
    run_dir: RunDirArg = None,
    which: WhichOpt = None,
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    recipe: RecipeOpt = None,
    id_names: IdOpt = None,
    ood_names: OodOpt = None,
    retain_names: RetainOpt = None,
    overrides: SetOpt = None,
    output_dir: EvalOutputOpt = None,
    save_predictions: Annotated[bool, typer.Option(
        "--save-predictions", help="With --output-dir: predictions/<dataset>.npz holding logits "
        "(N×C float32) and labels (N).")] = False,
    fail_under: FailUnderOpt = None,
    fail_over: FailOverOpt = None,
    wise_alpha: Annotated[Optional[str], typer.Option(
        "--wise-alpha", help="WiSE-FT: evaluate (1-α)·θ₀ + α·θ_ft for each α of a list such as "
        "0,0.25,0.5,0.75,1.", show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Evaluate a model on ID and OOD datasets with its task's metrics (classification: accuracy,
    top-5, ECE, NLL, Brier, macro-F1; retrieval: recall@k; vqa: accuracy, VQA score)."""
    # imported here: it pulls in torch, which --help does not need
    from tracer_cli.commands import evaluate as evaluation

    if save_predictions and output_dir is None:
        raise UsageError("--save-predictions writes into --output-dir: give both")
    blocker = folder_blocker(output_dir) if output_dir is not None else None
    if blocker is not None:  # checked before the evaluation, not after it
        raise UsageError(f"--output-dir '{output_dir}': '{blocker}' is not a folder, so the "
                         "results cannot be written there; give a folder path")
    if not (run_dir or checkpoint or model or recipe):
        run_dir = most_recent_run()  # None: evaluation says there is nothing to evaluate
    request = evaluation.EvalRequest(
        run_dir=run_dir, checkpoint=checkpoint, model=model, recipe=recipe, which=which,
        id_names=evaluation.parse_names(id_names, "--id"),
        ood_names=evaluation.parse_names(ood_names, "--ood"),
        retain_names=evaluation.parse_names(retain_names, "--retain"),
        overrides=list(overrides or []), wise_alphas=evaluation.parse_alphas(wise_alpha),
        gates=evaluation.parse_gates(fail_under or [], fail_over or []))
    plan = evaluation.prepare(request)
    with use_reporter(make_reporter()) as reporter:
        report = evaluation.run_plan(plan, reporter)
        written = (evaluation.write_outputs(report, output_dir, save_predictions)
                   if output_dir is not None else [])
    doc = report.document
    console = result_console(as_json)
    if doc["id"] or doc["ood"]:
        console.print(metrics_table(doc, report.metrics))
    if doc["retain"]:
        console.print(retention_table(doc["retain"], _retention_columns(doc)))
    if doc["wise"]:
        console.print(wise_table(doc["wise"], report.metrics))
    for gate in doc["gates"]:
        verdict = "passed" if gate["passed"] else "FAILED"
        console.print(f"gate {verdict}: {gate['metric']} = {gate['value']:.4g} "
                      f"({gate['flag']} {gate['threshold']:g})")
    if written:
        console.print(f"wrote {len(written)} files to {output_dir}")
    if as_json:
        emit_json(doc)
    evaluation.check_gates(doc)


def most_recent_run(root: Path = DEFAULT_RUNS) -> Path | None:
    """The most recent run under ``root`` (:func:`tracer_cli.rundir.latest_run`), announced on
    stderr so the user sees which run the numbers belong to."""
    from tracer_cli.rundir import LAST, latest_run

    run = latest_run(root)
    if run is not None:
        written = datetime.fromtimestamp((run / LAST).stat().st_mtime)
        stderr_console().print(f"evaluating the most recent run under {root}/: {run} ({LAST} "
                               f"written {written:%Y-%m-%d %H:%M:%S})", markup=False,
                               highlight=False)
    return run


def _retention_columns(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The retention table's two columns: the pretrained model and the one evaluated."""
    from tracer_cli.sdk.task_metrics import retention

    before = doc["retain_before"]
    after = {**doc["datasets"], **{k: doc[k] for k in RETAIN_KEYS}}
    return {"pretrained": {**before, **retention(before, doc["retain"], before)},
            "evaluated": after}


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _cell(spec: TaskMetrics, metric: str, value: Any) -> str:
    """A metric as the task shows it: ×100 for percentages, integers as they are."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _pct(value) if metric in spec.percent else _num(value)


def metrics_table(doc: dict[str, Any], spec: TaskMetrics = CLASSIFICATION_METRICS) -> Table:
    """One row per dataset (ID, then OOD) with the task's columns, then the OOD average of the
    metrics the task averages."""
    alpha = doc["model"].get("wise_alpha")
    title = "evaluation" + (f" (WiSE-FT α={alpha:g})" if alpha is not None else "")
    table = Table(title=title)
    table.add_column("dataset")
    table.add_column("role")
    for metric in spec.columns:
        table.add_column(spec.header(metric), justify="right")
    for role in ("id", "ood"):
        for name in doc[role]:
            m = doc["datasets"][name]
            table.add_row(name, role.upper(),
                          *(_cell(spec, c, m.get(c)) for c in spec.columns))
    if doc["ood"]:
        table.add_row("average OOD", "",
                      *(_cell(spec, c, doc.get(f"avg_ood_{c}")) if c in spec.averaged else ""
                        for c in spec.columns), style="bold")
    return table


def wise_table(entries: list[dict[str, Any]],
               spec: TaskMetrics = CLASSIFICATION_METRICS) -> Table:
    """The WiSE-FT sweep: the task's ID and OOD averages per α (classification: ID accuracy,
    OOD accuracy and OOD ECE), then retention when there are retention sets."""
    table = Table(title="WiSE-FT: θ = (1-α)·θ₀ + α·θ_ft")
    keys = [*spec.id_keys, *spec.ood_keys]
    retain = [k for k in RETAIN_KEYS if entries and k in entries[0]]
    table.add_column("α", justify="right")
    for key in keys:
        role = "ID" if key in spec.id_keys else "avg OOD"
        table.add_column(f"{role} {spec.header(spec.base(key))}", justify="right")
    for key in retain:
        table.add_column(key.replace("_", " ") + " %", justify="right")
    for e in entries:
        table.add_row(f"{e['alpha']:g}", *(_cell(spec, spec.base(k), e.get(k)) for k in keys),
                      *(_pct(e.get(k)) for k in retain))
    return table
