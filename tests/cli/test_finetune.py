"""`tracer finetune` end to end through the CLI on the tiny model, and its error contract."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from tracer_cli.cli import app
from tracer_cli.engine import checkpoint

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_finetune_runs_the_engine_and_writes_the_run_dir(runner, tiny_recipe, tmp_path):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)  # stdout holds exactly one JSON document
    run_dir = out / "tiny"
    assert doc["run_dir"] == str(run_dir) and doc["steps"] == 3
    models = doc["eval"]["models"]
    assert set(models) == {"zeroshot", "student", "teacher"}
    for model in models.values():
        assert 0.0 <= model["avg_ood_accuracy"] <= 1.0
        assert model["synth-photo"]["n"] == 48
    assert "accuracy (%)" in result.stderr and "run directory" in result.stderr

    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert {"recipe.lock.toml", "metrics.jsonl", "last.pt", "summary.json",
            "checkpoints/step_2.pt", "checkpoints/step_3.pt", "eval/zeroshot.json",
            "eval/final_student.json", "eval/final_teacher.json"} <= files
    assert not [f for f in files if f.endswith(".tmp")]

    lock = tomllib.loads((run_dir / "recipe.lock.toml").read_text())
    assert lock["train"]["steps"] == 3 and lock["lock"]["torch"] == torch.__version__
    assert lock["lock"]["backbone"]["arch"] == "tracer-tiny-rn"

    records = _read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert "kl_i2t" not in train[0]  # no teacher term at step 0: teacher == student
    for key in ("loss", "loss_clip", "loss_sd", "lr", "kl_i2t", "kl_t2i", "agreement",
                "img_per_s", "sd_crd", "sd_fd", "sd_icl", "sd_xkd", "reg_cross_fnorm",
                "param_ratio", "drift", "gap"):
        assert key in train[-1], key
    assert any(r["event"] == "eval" and r["model"] == "zeroshot" for r in records)

    ckpt = checkpoint.load(run_dir / "last.pt")
    assert ckpt["step"] == 3 and ckpt["data_position"] == {"epoch": 0, "batch": 3}
    assert ckpt["teacher"]["weight_sum"] > 0


def test_last_checkpoint_loads_in_plain_open_clip(runner, tiny_recipe, tmp_path):
    import open_clip

    from tracer_plugins.backbones.openclip import register_tiny_configs

    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path),
                                 "--set", "run.eval=false", "--max-steps", "1"])
    assert result.exit_code == 0, result.stderr
    register_tiny_configs()
    model = open_clip.create_model("tracer-tiny-rn", pretrained=str(tmp_path / "tiny/last.pt"))
    saved = checkpoint.load(tmp_path / "tiny/last.pt")["state_dict"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_human_output_without_json(runner, tiny_recipe, tmp_path):
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path),
                                 "--set", "teacher.kind=none", "--set", "distill.lambda_sd=0"])
    assert result.exit_code == 0, result.stderr
    assert "average OOD" in result.stdout and "zeroshot" in result.stdout
    assert "teacher" not in result.stdout.split("accuracy (%)")[1].splitlines()[1]
    assert "[train] step=3" in result.stderr  # plain progress lines when CI is set


@pytest.mark.parametrize("args, fragment", [
    (["--set", "train.steps=zero"], "recipe key 'train.steps': expected an integer"),
    (["--set", "teacher.kind=swa"], "recipe key 'teacher.kind'"),
    (["--set", "data.train=synth-fotos"], "unknown dataset 'synth-fotos': did you mean"),
    (["--set", "model.arch=tracer-tiny-rm"], "unknown open_clip architecture 'tracer-tiny-rm'"),
    (["--set", "model.pretrained=/nope/weights.pt"], "weights file '/nope/weights.pt' does not"),
    (["--set", "model.colour=1"], "recipe key 'model.colour': unknown key"),
    (["--set", "task.train_templates=[\"no slot\"]"], "exactly one '{}'"),
    (["--set", "train"], "expected KEY.PATH=VALUE"),
    (["--set", "run.eval_every=-1"], "recipe key 'run.eval_every': got -1; must be between 0 and 1,000,000,000"),
    (["--set", "run.eval_sets=synth-fotos"], "recipe key 'run.eval_sets': got 'synth-fotos', "
                                             "which is not an evaluation dataset"),
    (["--set", "run.eval_every=2", "--set", "run.eval=false"],
     "recipe key 'run.eval_every': got 2, but run.eval = false"),
    (["--set", "run.eval_max_images=-5"], "recipe key 'run.eval_max_images': got -5"),
])
def test_bad_input_exits_2_with_one_line(runner, tiny_recipe, tmp_path, args, fragment):
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path),
                                 *args])
    assert result.exit_code == 2, result.stderr
    assert fragment in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "tiny").exists()  # nothing was started


def test_missing_recipe_and_existing_run_dir(runner, tiny_recipe, tmp_path):
    result = runner.invoke(app, ["finetune", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "keep.txt").write_text("x")
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert (tmp_path / "tiny" / "keep.txt").exists()


def test_usage_errors_are_exit_2(runner):
    assert runner.invoke(app, ["finetune"]).exit_code == 2
    assert runner.invoke(app, ["finetune", "x.toml", "--max-steps", "0"]).exit_code == 2
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2


FT = ["train.method=ft", "teacher.kind=none", "distill.lambda_sd=0", "distill.crd=0",
      "distill.fd=0", "distill.icl=0", "distill.xkd=0", "distill.lambda_fn=0"]


def test_evaluations_during_training_in_plain_output(runner, tiny_recipe, tmp_path):
    sets = [a for item in ["run.eval_every=1", "run.eval_sets=synth-sketch", *FT]
            for a in ("--set", item)]
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path),
                                 *sets])
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    # a plain line per dataset of every evaluation (CI is set), then the step's headline
    for step in (1, 2):
        at = lines.index(next(n for n in lines if n.startswith(f"step {step} student accuracy")))
        assert lines[at - 1].startswith("[eval student synth-sketch] batches=1 seconds=")
        assert lines[at].startswith(f"step {step} student accuracy: synth-sketch ")
    assert any(n.startswith("[eval zeroshot synth-photo] batches=1") for n in lines)
    assert any(n.startswith("[eval student synth-noisy] batches=1") for n in lines)  # final
    records = _read_jsonl(tmp_path / "tiny" / "metrics.jsonl")
    assert [(r["model"], r["step"]) for r in records if r["event"] == "eval"] == [
        ("zeroshot", 0), ("student", 1), ("student", 2), ("final_student", 3)]
    assert (tmp_path / "tiny" / "eval" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_curves_start_at_zeroshot_and_keep_a_redone_step_once(tmp_path):
    from tracer_cli import rundir
    from tracer_cli.engine.run import _curves

    for record in [{"model": "zeroshot", "step": 0, "a/accuracy": 0.5, "b/accuracy": 0.4},
                   {"model": "student", "step": 2, "a/accuracy": 0.6},
                   {"model": "student", "step": 2, "a/accuracy": 0.7},  # after a resume
                   {"model": "final_student", "step": 4, "a/accuracy": 0.8, "b/accuracy": 0.3},
                   {"event": "train", "step": 4, "loss": 1.0}]:
        rundir.append_metrics(tmp_path, {"event": "eval", **record})
    assert _curves(tmp_path, "accuracy") == {
        "student a": [(0, 0.5), (2, 0.7), (4, 0.8)], "student b": [(0, 0.4), (4, 0.3)]}


def test_head_methods_are_evaluated_through_the_head_during_training(tiny_recipe, tmp_path,
                                                                     monkeypatch):
    """At the step a stopped run ends, its evaluation during training and its final evaluation
    see the same weights and head, so they agree to the last bit."""
    from tracer_cli import recipe as recipe_mod
    from tracer_cli.engine.run import finetune
    from tracer_cli.engine.loop import RunWriter
    from tracer_cli.events import Reporter

    seen = []
    original = RunWriter.log_eval

    def recording(self, tag, metrics, step, primary="accuracy"):
        seen.append((tag, step, metrics))
        original(self, tag, metrics, step, primary)

    monkeypatch.setattr(RunWriter, "log_eval", recording)
    raw = recipe_mod.apply_overrides(tomllib.loads(tiny_recipe.read_text()),
                                     [*FT, "run.eval_every=2", "run.eval_zeroshot=false"])
    result = finetune(recipe_mod.from_dict(raw), output_dir=tmp_path, reporter=Reporter(),
                      stop_after=2)
    [during] = [m for tag, step, m in seen if (tag, step) == ("student", 2)]
    final = json.loads((result.run_dir / "eval" / "final_student.json").read_text())
    assert during == final
