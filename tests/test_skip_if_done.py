"""Skip-if-done checks what it skips (issue 25): a finished stage made from other inputs runs again or is refused.

A stage's folder records its inputs when it starts (recipe file + sha256, the files it
reads + sha256, its arguments); a later run that would skip it compares: an edited recipe,
a checkpoint with other bytes or a changed override is named, the old folder set aside
(never deleted) and the stage run again, or, with ``--no-rerun``, refused.
"""
import json
import sys
from pathlib import Path

from analysis.reproduce import main as reproduce
from analysis.reproduce.runner import read_status, run_stage
from analysis.reproduce.stage_inputs import INPUTS_FILE, stage_inputs
from analysis.reproduce.stages import Stage


def stage(out: Path, recipe: Path, ckpt: Path, value: str = "1") -> Stage:
    """A stage whose process writes its metrics and a file holding its argument."""
    metrics = out / "mine" / "finetune" / "classification_metrics.json"
    code = (f"import json, pathlib, sys; d = pathlib.Path({str(metrics.parent)!r}); d.mkdir(parents=True, "
            f"exist_ok=True); (d / 'value.txt').write_text(sys.argv[1]); "
            f"(d / {metrics.name!r}).write_text(json.dumps({{'task': 'finetune', 'top1': 1.0}}))")
    return Stage("mine", "finetune", [sys.executable, "-c", code, f"train.lr={value}"], metrics, needs=[ckpt],
                 protocol={"recipe": str(recipe), "checkpoint": str(ckpt)})


def test_changed_recipe_checkpoint_or_override_reruns_and_keeps_the_old_output(tmp_path, capsys):
    out, recipe, ckpt = tmp_path / "out", tmp_path / "recipe.yaml", tmp_path / "backbone.pth"
    recipe.write_text("train: {epochs: 3}\n")
    ckpt.write_bytes(b"weights v1")
    assert run_stage(stage(out, recipe, ckpt), out)["status"] == "done"
    record = json.loads((out / "mine" / "finetune" / INPUTS_FILE).read_text())
    assert record["recipe"] == str(recipe) and record["reads"][str(ckpt)] and "train.lr=1" in record["arguments"]
    capsys.readouterr()
    assert run_stage(stage(out, recipe, ckpt), out).get("cached")  # same inputs: skipped
    assert "done before" in capsys.readouterr().out

    recipe.write_text("train: {epochs: 4}\n")  # the recipe file edited under the finished output
    assert run_stage(stage(out, recipe, ckpt), out, no_rerun=True)["status"] == "failed"
    log = capsys.readouterr().out
    assert "REFUSED (--no-rerun)" in log and f"recipe file {recipe} was edited" in log
    assert (out / "mine" / "finetune" / "value.txt").is_file()  # refused: nothing moved
    assert "--no-rerun" in read_status(out / "mine")["finetune"]["reason"]
    rec = run_stage(stage(out, recipe, ckpt), out)
    log = capsys.readouterr().out
    assert rec["status"] == "done" and not rec.get("cached")
    assert f"recipe file {recipe} was edited" in log and "running it again" in log
    old = out / ".replaced" / "mine" / "finetune-1"
    assert (old / "classification_metrics.json").is_file() and (old / "value.txt").read_text() == "train.lr=1"

    ckpt.write_bytes(b"weights v2")  # the same path now holds other weights
    run_stage(stage(out, recipe, ckpt), out)
    assert f"{ckpt} holds other bytes" in capsys.readouterr().out
    run_stage(stage(out, recipe, ckpt, value="2"), out)  # another override
    assert "arguments -train.lr=1; +train.lr=2" in capsys.readouterr().out
    assert (out / "mine" / "finetune" / "value.txt").read_text() == "train.lr=2"
    assert sorted(p.name for p in (out / ".replaced" / "mine").iterdir()) == ["finetune-1", "finetune-2", "finetune-3"]


def test_a_folder_from_before_the_records_is_skipped_saying_it_was_not_checked(tmp_path, capsys):
    out, recipe, ckpt = tmp_path / "out", tmp_path / "r.yaml", tmp_path / "c.pth"
    recipe.write_text("a: 1\n")
    ckpt.write_bytes(b"w")
    s = stage(out, recipe, ckpt)
    s.metrics.parent.mkdir(parents=True)
    s.metrics.write_text(json.dumps({"task": "finetune", "top1": 1.0}))
    assert run_stage(s, out).get("cached")
    assert "its inputs were not recorded, not checked" in capsys.readouterr().out


def test_no_rerun_reaches_the_runner_from_the_command_line(tmp_path, monkeypatch, capsys):
    recipe, ckpt = tmp_path / "r.yaml", tmp_path / "c.pth"
    recipe.write_text("a: 1\n")
    ckpt.write_bytes(b"w")
    out = tmp_path / "demo"
    monkeypatch.setattr(reproduce, "build_stages", lambda args, out, methods, profile: [stage(out, recipe, ckpt)])
    monkeypatch.setattr(reproduce, "prepare_data", lambda root: None)
    argv = ["--output", str(out), "--no-pictures", "--methods", "mae"]
    assert reproduce.main(argv) == 0
    recipe.write_text("a: 2\n")
    assert reproduce.main([*argv, "--no-rerun"]) == 1
    assert "REFUSED (--no-rerun)" in capsys.readouterr().out


def test_ablation_stages_carry_the_recipe_the_check_compares(tmp_path):
    """A sweep's stages run through the same runner; each records its recipe file's sha256."""
    from analysis.reproduce.profiles import demo_profile
    from analysis.sweeps.ablation import build_ablation_stages, plan_sweep

    profile = demo_profile(tmp_path / "data", 0)
    _, points = plan_sweep(["droppos.mask_ratio=0.5"], profile, False, 1, False)
    stages = build_ablation_stages(profile, tmp_path / "abl", points, 1, 1, ("pretrain", "finetune"))
    assert stages and all(stage_inputs(s)["recipe_sha256"] for s in stages if s.name == "pretrain")
    assert all(stage_inputs(s)["recipe_sha256"] for s in stages)


def test_the_robustness_stages_worker_count_is_no_input_its_batch_size_is(tmp_path):
    """``--workers`` (data-loader processes) of the robustness command changes nothing it computes: a run with
    other workers skips the finished stage; ``--batch-size`` may move its logits' rounding, so it counts."""
    import dataclasses

    from analysis.reproduce import profiles
    from analysis.reproduce.stages import build_stage_table

    def robustness(workers: int, batch: str | None = None):
        p = dataclasses.replace(profiles.demo_profile(tmp_path / "data", workers), check=False)
        if batch is not None:
            flags = list(p.robustness_flags)
            flags[flags.index("--batch-size") + 1] = batch
            p = dataclasses.replace(p, robustness_flags=flags)
        return next(s for s in build_stage_table(p, tmp_path / "out", ["mae"]) if s.name == "robustness")

    one, four = robustness(1), robustness(4)
    assert "--workers" in one.command and one.command != four.command
    assert stage_inputs(one) == stage_inputs(four) and "--workers" not in stage_inputs(one)["arguments"]
    assert stage_inputs(robustness(1, "50"))["arguments"] != stage_inputs(one)["arguments"]
    from analysis.reproduce.stage_inputs import changes

    earlier = {**stage_inputs(one), "arguments": one.command[one.command.index("-m"):]}  # recorded with --workers
    assert "--workers" in earlier["arguments"] and changes(earlier, stage_inputs(four)) == []


def test_the_status_and_the_submission_share_one_done_test(tmp_path):
    """``runner.is_done``: finished and made from the inputs it has now; ``--status`` reads each run folder's
    stage_status.json once (given to stage_state)."""
    from analysis.reproduce.runner import is_done, write_status
    from analysis.reproduce.slurm_status import stage_state

    out, recipe, ckpt = tmp_path / "out", tmp_path / "r.yaml", tmp_path / "c.pth"
    recipe.write_text("a: 1\n")
    ckpt.write_bytes(b"w")
    s = stage(out, recipe, ckpt)
    assert not is_done(s) and stage_state(s, out, None, {})[0] == "not submitted"
    assert run_stage(s, out)["status"] == "done"
    assert is_done(s) and stage_state(s, out, None, {}) == ("done", str(s.metrics), [])
    recipe.write_text("a: 2\n")  # other inputs: done for neither
    assert not is_done(s)
    write_status(out / "mine", "finetune", {"status": "skipped", "reason": "why"})
    assert stage_state(s, out, None, {}) == ("skipped", "why", [])
    assert stage_state(s, out, None, {}, run_status={}) == ("not submitted", "", [])  # the status given is used
    (out / "mine" / "stage_status.json").write_text("[1, 2]")  # not a map: no record, as when unreadable
    assert read_status(out / "mine") == {} and stage_state(s, out, None, {})[0] == "not submitted"
