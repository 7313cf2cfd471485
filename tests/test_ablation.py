"""DropPos ablation sweeps: the stage list, skip-if-done, the tables, the rank correlation by hand, bad input."""

import json
import sys
from pathlib import Path

import pytest

from analysis.reproduce import main as reproduce
from analysis.sweeps import ablation
from analysis.sweeps.ablation import (
    GRID_CONFIRM_RUNS,
    RECIPE,
    Point,
    build_ablation_stages,
    format_value,
    plan_sweep,
)
from analysis.pictures.ablation import Pair, correlate, plot_correlation, ranks, spearman
from analysis.reproduce.profiles import demo_profile
from analysis.reproduce.runner import run_stages
from analysis.reproduce.stages import METRICS

SWEEP = ["--ablation", "droppos.mask_ratio=0.75,0.5,0.9"]


def heads(text: str) -> list[str]:
    """'# <run folder> / <stage>' of every command a dry run prints."""
    return [line.split(" -> ")[0][2:] for line in text.splitlines() if line.startswith("# ") and " -> " in line]


# --------------------------------------------------------------------------- the stage list
def test_dry_run_lists_each_value_once_and_the_recipe_shared(tmp_path, capsys):
    out = tmp_path / "abl"
    argv = [*SWEEP, "--ablation", "droppos.tau=0.05,0.1", "--dry-run", "--output", str(out), "--workers", "0"]
    assert reproduce.main(argv) == 0
    text = capsys.readouterr().out
    h = heads(text)
    points = ["recipe", "droppos.mask_ratio=0.75", "droppos.mask_ratio=0.9", "droppos.tau=0.05"]
    # stage by stage: every point's pretraining first; the recipe value of both axes is one run
    assert h[:4] == [f"{p}/droppos / pretrain" for p in points]
    assert [x.split(" / ")[1] for x in h[4::4]] == ["finetune", "linear_probe", "knn", "position_probe"]
    assert len(h) == 4 * 5 and not any("detection" in x or "segmentation" in x for x in h)
    lines = text.splitlines()
    head = "# {p}/droppos / pretrain -> {out}/{p}/droppos/pretrain/pretrain_metrics.json"
    pretrain = {p: lines[lines.index(head.format(p=p, out=out)) + 1] for p in points}
    assert "droppos.mask_ratio" not in pretrain["recipe"] and "droppos.tau" not in pretrain["recipe"]
    assert pretrain["droppos.mask_ratio=0.75"].endswith("train.epochs=6 droppos.mask_ratio=0.75 train.seed=0")
    assert "droppos.tau=0.05" in pretrain["droppos.tau=0.05"] and "droppos_vit_tiny_builtin.yaml" in text
    assert f"checkpoint={out}/droppos.mask_ratio=0.9/droppos/pretrain/backbone.pth" in text
    assert "python -m analysis.sweeps.ablation_tables" in text and not out.exists()


def test_seeds_default_grid_and_grid_points(tmp_path, capsys):
    out = tmp_path / "abl"
    assert reproduce.main(["--ablation", "droppos.attentive", "--seeds", "2", "--dry-run", "--output", str(out)]) == 0
    h = heads(capsys.readouterr().out)
    assert h[:2] == ["recipe/droppos / pretrain", "droppos.attentive=false/droppos / pretrain"]
    assert "recipe/droppos/seed1 / finetune" in h and "droppos.attentive=false/droppos/seed1 / knn" in h
    assert len(h) == 2 * (1 + 4 * 2)
    profile = demo_profile(Path("data/builtin"), 1)
    axes, points = plan_sweep(["droppos.mask_ratio=0.75,0.5", "droppos.sigma=0,1"], profile, grid=True)
    assert [p.name for p in points] == [
        RECIPE,
        "droppos.mask_ratio=0.75+droppos.sigma=0.0",
        "droppos.mask_ratio=0.75",
        "droppos.sigma=0.0",
    ]  # the product of the values in order; points at the recipe on an axis share that axis's runs
    _, tau = plan_sweep(["droppos.tau"], profile)
    assert [p.name for p in tau] == [RECIPE, "droppos.tau=0.05", "droppos.tau=0.5"]
    assert format_value(1.0) == "1.0" and format_value(1e-5) == "0.00001" and format_value(True) == "true"


def test_paper_profile_prints_vit_b_commands(tmp_path, capsys):
    argv = [*SWEEP, "--profile", "vit_b_200ep", "--imagenet", "/in1k", "--gpus", "8", "--output", str(tmp_path / "b")]
    assert reproduce.main(argv) == 0
    text = capsys.readouterr().out
    assert "torchrun --nproc_per_node=8 -m pretrain.main --config pretrain/configs/droppos_vit_base_200ep.yaml" in text
    assert "droppos.mask_ratio=0.9 train.seed=0" in text and "finetune_vit_base_100ep.yaml" in text
    assert "--img-size 224" in text and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "specs, needle",
    [
        (["droppos.mask_ratioo=0.5"], "unknown key 'droppos.mask_ratioo'"),
        (["droppos.mask_ratio=0.5,0.99"], "droppos.mask_ratio=0.99"),  # no visible patch of the 8 x 8 grid
        (["droppos.mask_ratio=1.0"], "droppos.mask_ratio=1.0"),
        (["droppos.mask_ratio=0"], "droppos.mask_ratio=0.0"),
        (["droppos.pos_drop_ratio=0"], "droppos.pos_drop_ratio=0.0"),  # no dropped position
        (["droppos.pos_drop_ratio=1"], "droppos.pos_drop_ratio=1.0"),
        (["droppos.sigma=-0.5"], "droppos.sigma=-0.5"),
        (["droppos.tau=-0.1"], "droppos.tau=-0.1"),
        (["droppos.tau=0"], "droppos.tau=0.0"),
        (["droppos.tau=0.05", "droppos.tau=0.5"], "droppos.tau: axis given twice"),
        (["droppos.tau=0.05,0.05"], "value 0.05 given twice"),
        (["droppos.tau=fast"], "droppos.tau=fast"),
        (["droppos.attentive=yes"], "droppos.attentive=yes"),
        (["droppos.mask_ratio="], "droppos.mask_ratio=: empty value"),
        (["droppos.decoder_dim"], "no default grid for 'droppos.decoder_dim'"),
        (["train.seed=1,2"], "'train.seed' is not an ablation axis"),
    ],
)
def test_bad_input_stops_before_any_work(tmp_path, capsys, specs, needle):
    out = tmp_path / "abl"
    argv = [a for s in specs for a in ("--ablation", s)] + ["--output", str(out)]
    assert reproduce.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err
    assert not out.exists()


def test_large_grid_needs_confirmation(tmp_path, capsys, monkeypatch):
    out = tmp_path / "abl"
    argv = ["--ablation", "droppos.mask_ratio=0.5,0.6,0.9", "--ablation", "droppos.tau=0.05,0.2,0.5", "--ablation-grid"]
    assert reproduce.main([*argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--ablation-grid: 10 points" in err and f"more than {GRID_CONFIRM_RUNS}" in err and "--yes" in err
    assert not out.exists()
    assert reproduce.main([*argv, "--yes", "--dry-run", "--output", str(out)]) == 0
    assert len(heads(capsys.readouterr().out)) == 10 * 5
    # one axis at a time the same values are 7 runs: no confirmation needed
    assert reproduce.main([argv[0], argv[1], argv[2], argv[3], "--dry-run", "--output", str(out)]) == 0


def test_every_default_grid_passes_its_checks():
    """Each default grid of a key the config has is a valid sweep (the released variants' options among them)."""
    profile = demo_profile(Path("data/builtin"), 1)
    keys = set(ablation._leaf_keys(dict(ablation.OmegaConf.to_container(ablation.recipe_config(profile)))))
    present = [k for k in ablation.DEFAULT_GRIDS if k in keys]
    assert {"droppos.mask_ratio", "droppos.pos_drop_ratio", "droppos.sigma", "droppos.tau"} <= set(present)
    for key in present:
        axes, points = plan_sweep([key], profile)
        assert points[0].name == RECIPE and len(points) == len(ablation.DEFAULT_GRIDS[key]) + (
            axes[0].recipe not in axes[0].values
        )


def test_any_config_key_is_an_axis():
    """Keys of the resolved config (the released options among them, once default.yaml has them) are axes."""
    profile = demo_profile(Path("data/builtin"), 1)
    axes, points = plan_sweep(["droppos.decoder_depth=1,2,4", "optim.blr=0.0001,0.0002"], profile)
    assert axes[0].recipe == 2 and axes[0].values == (1, 2, 4)
    assert axes[1].recipe == ablation.recipe_config(profile).optim.blr and axes[1].values == (1e-4, 2e-4)
    names = [RECIPE, "droppos.decoder_depth=1", "droppos.decoder_depth=4", "optim.blr=0.0001", "optim.blr=0.0002"]
    assert [p.name for p in points] == names
    with pytest.raises(ablation.AblationError, match="droppos.decoder_depth=1.5"):
        plan_sweep(["droppos.decoder_depth=1.5"], profile)


# --------------------------------------------------------------------------- running, skip-if-done, tables
# per point: (pretext pos_acc, FT top-1), made up: the point with the best pos_acc (0.75) is not the best in FT
RESULTS = {RECIPE: (0.40, 80.0), "droppos.mask_ratio=0.75": (0.60, 78.0), "droppos.mask_ratio=0.9": (0.20, 70.0)}


def fake_metrics(stage, point: str) -> dict:
    pos_acc, top1 = RESULTS[point]
    top1 += stage.seed  # a second seed differs
    return {
        "pretrain": {"task": "pretrain", "method": "droppos", "arch": "vit_tiny_patch8_64", "epochs": 6,
                     "epochs_done": 6, "final": {"loss": 3.0, "pos_acc": pos_acc},
                     "cost": {"gpu_hours": 0.0, "cpu_minutes": 1.0}},
        "finetune": {"task": "finetune", "top1": top1},
        "linear_probe": {"task": "linear_probe", "top1": top1 - 20},
        "knn": {"task": "knn", "top1": top1 - 30, "k": 20, "temperature": 0.07},
        "position_probe": {
            "task": "position_probe",
            "grid": [8, 8],
            "replacement": "mask_pos_token",
            "results": [{"drop_ratio": 0.75, "top1": pos_acc / 2, "within1": pos_acc, "chance": 1 / 64}],
        },
    }[stage.name]


def test_sweep_runs_skips_done_stages_when_extended_and_writes_the_tables(tmp_path, monkeypatch, capsys):
    def stub_stages(*args, **kwargs):
        stages = build_ablation_stages(*args, **kwargs)
        for s in stages:
            point = s.method.split("/")[0]
            code = (f"import json, pathlib; p = pathlib.Path({str(s.metrics)!r}); p.parent.mkdir(parents=True, "
                    f"exist_ok=True); p.write_text(json.dumps({fake_metrics(s, point)!r})); "
                    "(p.parent / 'backbone.pth').write_bytes(b'') if p.name.startswith('pretrain') else None")
            s.command = [sys.executable, "-c", code]
            s.available = ""
        return stages

    monkeypatch.setattr(reproduce, "build_ablation_stages", stub_stages)
    monkeypatch.setattr(reproduce, "prepare_data", lambda root: None)
    out = tmp_path / "abl"
    base = ["--output", str(out), "--jobs", "1", "--seeds", "2"]
    assert reproduce.main(["--ablation", "droppos.mask_ratio=0.75,0.5", *base]) == 0
    first = capsys.readouterr().out
    assert first.count(": running") == 2 * (1 + 4 * 2)
    done = (out / RECIPE / "droppos" / "finetune" / METRICS["finetune"]).stat().st_mtime_ns
    # extended by one value: only the new point's stages run, the others are skipped
    assert reproduce.main([*SWEEP, *base]) == 0
    log = capsys.readouterr().out
    assert log.count(": running") == 1 + 4 * 2 and "droppos.mask_ratio=0.9/droppos/pretrain: running" in log
    assert "recipe/droppos/finetune: done before" in log
    assert "droppos.mask_ratio=0.75/droppos/seed1/knn: done before" in log
    assert (out / RECIPE / "droppos" / "finetune" / METRICS["finetune"]).stat().st_mtime_ns == done
    plan = json.loads((out / "ablation_plan.json").read_text())
    assert plan["axes"]["droppos.mask_ratio"] == ["0.75", "0.5", "0.9"]
    assert plan["recipe"]["droppos.mask_ratio"] == "0.5"
    protocol = json.loads((out / "droppos.mask_ratio=0.9" / "droppos" / "protocol.json").read_text())
    assert protocol["stages"]["pretrain"]["ablation"] == {"droppos.mask_ratio": "0.9"}
    md = (out / "ablation.md").read_text()
    # the axis table: values in order, the recipe marked, pretext in %, seeds pooled (80 and 81)
    assert "| droppos.mask_ratio | PT pos. acc (pretext, %) | FT top-1 |" in md
    assert "| 0.5 (recipe) | 40.0 (n=1) | 80.5 ± 0.7 (n=2) |" in md
    assert md.index("| 0.5 (recipe)") < md.index("| 0.75 |") < md.index("| 0.9 |")
    # 78.5 vs 80.5 over two seeds each (std 0.71): se 0.71, Welch df 2, t 4.303: -2.0 [-5.0, +1.0]
    assert "| 0.75 | +20.0 (one seed, no noise estimate) | -2.0 [-5.0, +1.0] within noise |" in md
    assert "| 0.9 | -20.0 (one seed, no noise estimate) | -10.0 [-13.0, -7.0] beyond noise |" in md
    # pos_acc ranks 2, 3, 1 and FT ranks 3, 2, 1: d^2 = 1 + 1 + 0, rho = 1 - 6 * 2 / (3 * 8) = +0.50
    assert "| FT top-1 | 3 | rho = +0.50 [" in md
    assert (out / "report" / "pictures" / "ablation_correlation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report" / "ablation_droppos.mask_ratio.csv").is_file()


def test_runner_skips_every_finished_point(tmp_path, capsys):
    profile = demo_profile(tmp_path / "data", 0)
    points = [Point(), Point((("droppos.mask_ratio", 0.75),))]
    stages = build_ablation_stages(profile, tmp_path, points)
    for s in stages:
        s.metrics.parent.mkdir(parents=True, exist_ok=True)
        s.metrics.write_text(json.dumps(fake_metrics(s, s.method.split("/")[0])))
        s.command = [sys.executable, "-c", "raise SystemExit(9)"]  # would fail if it ran
    records = run_stages(stages, tmp_path)
    assert len(records) == 10 and all(r["status"] == "done" and r.get("cached") for r in records.values())


# --------------------------------------------------------------------------- the rank correlation
def test_spearman_by_hand():
    # ranks equal the values; d = 0, 1, 1, 0: rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert spearman([0.1, 0.5, 0.9], [10.0, 11.0, 50.0]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert ranks([5.0, 1.0, 5.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    # with ties: ranks x = 1.5, 1.5, 3, 4 and y = 1, 2, 3, 4; Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_correlation_interval_and_picture(tmp_path):
    pairs = [Pair(f"p{i}", x, y) for i, (x, y) in enumerate([(1, 1), (2, 3), (3, 2), (4, 4), (5, 6), (6, 5)])]
    c = correlate(pairs)
    assert c.rho == pytest.approx(1 - 6 * 4 / (6 * 35))  # d^2 = 0+1+1+0+1+1
    assert -1.0 <= c.low <= c.rho <= c.high <= 1.0 and c.n == 6 and c.resamples > 1000
    assert correlate(pairs) == c  # seeded: the same interval every time
    assert c.text().startswith(f"rho = {c.rho:+.2f} [{c.low:+.2f}, {c.high:+.2f}] (n=6 runs, bootstrap 95 %")
    assert correlate(pairs[:2]).rho is None and "fewer than 3 runs" in correlate(pairs[:2]).text()
    path = plot_correlation({"FT top-1": pairs, "LP top-1": pairs[:2], "k-NN top-1": []}, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="nothing to correlate"):
        plot_correlation({"FT top-1": []}, tmp_path / "d.png")
