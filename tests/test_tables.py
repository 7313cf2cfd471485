"""The comparison tables: statistics with known answers, seed rows, protocols, the scratch baseline, bad input."""

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest

from analysis.reproduce import main as reproduce
from analysis.tables import comparison as tables
from analysis.reproduce.profiles import demo_profile
from analysis.reproduce.protocols import write_protocols
from analysis.tables.runs import collect_run
from analysis.reproduce.stages import build_stage_table
from analysis.tables.stats import (
    NO_SPREAD,
    ONE_SEED,
    Summary,
    difference_cell,
    summarize,
    t_quantile,
    value_cell,
    welch,
)


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- statistics
def test_t_quantiles_match_the_tables():
    # two-sided 95 % critical values of Student's t (any printed table)
    for df, expected in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423), (math.inf, 1.9600)):
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, 4) == pytest.approx(-2.7764, abs=1e-4)


def test_welch_interval_and_verdict_computed_by_hand():
    # a = 1, 2, 3 and b = 4, 5, 6: means 2 and 5, s = 1 each; se = sqrt(1/3 + 1/3) = 0.8165,
    # df = (2/3)^2 / ((1/3)^2 / 2 + (1/3)^2 / 2) = 4, t = 2.7764: -3 ± 2.2670
    a, b = summarize([1.0, 2.0, 3.0]), summarize([4.0, 5.0, 6.0])
    assert (a.mean, a.std, a.n) == (2.0, 1.0, 3)
    d = welch(a, b)
    assert d.delta == -3.0 and d.df == pytest.approx(4.0)
    assert d.low == pytest.approx(-5.2670, abs=1e-4) and d.high == pytest.approx(-0.7330, abs=1e-4)
    assert d.verdict == "beyond noise"
    # 1, 3 against 2, 4: -1, se = sqrt(2/2 + 2/2) = 1.4142, df = 2, t = 4.3027: -1 ± 6.0849
    d = welch(summarize([1.0, 3.0]), summarize([2.0, 4.0]))
    assert (d.low, d.high) == (pytest.approx(-7.0849, abs=1e-4), pytest.approx(5.0849, abs=1e-4))
    assert d.verdict == "within noise"
    assert difference_cell(d) == "-1.0 [-7.1, +5.1] within noise"


def test_one_seed_gives_no_verdict_and_published_spreads_count():
    d = welch(summarize([71.0]), summarize([70.0, 70.4]))
    assert d.low is None and d.verdict == ONE_SEED
    assert difference_cell(d) == "+0.8 (one seed, no noise estimate)"
    # a paper number with a spread over an unstated number of runs: one run, known spread (df infinite)
    d = welch(summarize([50.0, 50.2, 50.1]), Summary(51.6, 0.1, 1, df=math.inf))
    se = math.sqrt(0.01 / 3 + 0.01)
    assert d.df == pytest.approx(((0.01 / 3 + 0.01) ** 2) / ((0.01 / 3) ** 2 / 2))
    assert d.high == pytest.approx(-1.5 + t_quantile(0.975, d.df) * se) and d.verdict == "beyond noise"
    # the same value from every seed on both sides (k-NN on one checkpoint): no interval, no claim
    d = welch(summarize([58.5, 58.5, 58.5]), summarize([40.5, 40.5, 40.5]))
    assert d.low is None and d.verdict == NO_SPREAD
    assert difference_cell(d) == "+18.0 (same value for every seed, no noise estimate)"
    # one side spread, the other constant: the interval comes from the side that varies
    d = welch(summarize([58.5, 58.5, 58.5]), summarize([51.0, 52.5, 53.5]))
    se = math.sqrt(summarize([51.0, 52.5, 53.5]).std ** 2 / 3)
    assert d.high - d.low == pytest.approx(2 * t_quantile(0.975, 2) * se) and d.verdict == "beyond noise"


def test_value_cells():
    assert value_cell(summarize([70.7, 71.0, 71.3])) == "71.0 ± 0.3 (n=3)"
    assert value_cell(summarize([71.0])) == "71.0 (n=1)"
    assert value_cell(summarize([70.0, 72.0]), planned=3) == "71.0 ± 1.4 (n=2 of 3 planned)"
    with pytest.raises(ValueError):
        summarize([])


# --------------------------------------------------------------------------- run folders
def seed_run(
    root: Path, init: str, seed: int, top1: float, epochs: int = 3, planned: int = 3, arch: str = "vit_tiny_patch8_64"
) -> Path:
    """One run folder as analysis.reproduce lays it out: protocol.json and a fine-tuning result."""
    run = root / init / (f"seed{seed}" if seed else "")
    if seed == 0 and init != "scratch":
        write_json(
            run / "pretrain" / "pretrain_metrics.json",
            {"task": "pretrain", "method": init, "arch": arch, "epochs": 6, "cost": {"gpu_hours": 0, "cpu_minutes": 1}},
        )
    recipe = "classification/configs/finetune_vit_tiny_builtin.yaml"
    write_json(
        run / "protocol.json",
        {
            "init": init,
            "seed": seed,
            "pretrain_seed": None if init == "scratch" else 0,
            "planned_runs": planned,
            "stages": {"finetune": {"recipe": recipe, "seed": seed, "image_size": int(arch.split("_")[-1])}},
        },
    )
    write_json(
        run / "finetune" / "classification_metrics.json",
        {"task": "finetune", "top1": top1, "epochs": epochs, "arch": arch},
    )
    return root / init


def table_line(md: str, start: str, init: str | None = None) -> list[str]:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == start and (init is None or cells[1] == init):
            return cells
    raise AssertionError(f"no row {start} / {init}")


def test_seed_rows_mean_std_n_differences_and_protocol(tmp_path):
    for seed, v in enumerate((70.0, 71.0, 72.0)):
        seed_run(tmp_path, "droppos", seed, v)
    for seed, v in enumerate((40.0, 41.0, 42.0)):
        seed_run(tmp_path, "scratch", seed, v)
    seed_run(tmp_path, "mae", 0, 69.0, planned=1)
    dirs = [tmp_path / d for d in ("scratch", "mae", "droppos")]
    md, runs = tables.build_tables(dirs, tmp_path / "report")
    assert [r.method for r in runs][:3] == ["droppos"] * 3 and runs[-1].method == "scratch"
    assert not any(r.warnings for r in runs)  # seed folders are runs of their own, not extra files of seed 0
    ft = table_line(md, "FT top-1")
    assert ft[1:4] == ["71.0 ± 1.0 (n=3)", "69.0 (n=1)", "41.0 ± 1.0 (n=3)"]  # DropPos, MAE, scratch
    row = table_line(md, "FT top-1", "DropPos")
    # 71 - 41 = 30, se = sqrt(1/3 + 1/3), df = 4: 30 ± 2.2670
    assert row[3] == "+30.0 [+27.7, +32.3] beyond noise"
    assert row[4] == "+2.0 (one seed, no noise estimate)"
    assert row[6] == "classification/configs/finetune_vit_tiny_builtin.yaml; 3 epochs; 64 px; seeds 0, 1, 2"
    assert table_line(md, "FT top-1", "scratch")[3] == "reference"
    with open(tmp_path / "report" / "per_seed.csv") as f:
        per_seed = [r for r in csv.DictReader(f) if r["measure"] == "FT top-1"]
    assert sorted((r["initialisation"], r["seed"], r["value"]) for r in per_seed)[:3] == [
        ("droppos", "0", "70.000"),
        ("droppos", "1", "71.000"),
        ("droppos", "2", "72.000"),
    ]
    png = tmp_path / "report" / tables.COMPARISON_PICTURE
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_seeds_show_their_real_n(tmp_path):
    seed_run(tmp_path, "droppos", 0, 70.0)
    seed_run(tmp_path, "droppos", 2, 72.0)
    failed = tmp_path / "droppos" / "seed1"
    write_json(failed / "stage_status.json", {"finetune": {"status": "failed", "reason": "exit code 1"}})
    write_json(failed / "protocol.json", {"init": "droppos", "seed": 1, "pretrain_seed": 0, "planned_runs": 3})
    md, _ = tables.build_tables([tmp_path / "droppos"], tmp_path / "report")
    assert table_line(md, "FT top-1")[1] == "71.0 ± 1.4 (n=2 of 3 planned); 1 run(s) without a value"


def test_mixed_protocols_and_repeated_seeds_stop(tmp_path, capsys):
    seed_run(tmp_path, "mae", 0, 70.0)
    seed_run(tmp_path, "mae", 1, 71.0, epochs=5)
    with pytest.raises(tables.MetricsError) as err:
        tables.build_tables([tmp_path / "mae"], tmp_path / "report")
    msg = str(err.value)
    assert "mixes protocols" in msg and "3 epochs" in msg and "5 epochs" in msg
    assert str(tmp_path / "mae" / "seed1" / "finetune" / "classification_metrics.json") in msg
    assert tables.main([str(tmp_path / "mae"), "--out", str(tmp_path / "r")]) == 1
    assert "mixes protocols" in capsys.readouterr().err
    seed_run(tmp_path, "mae", 1, 71.0)  # same protocol now, but recorded as seed 0 twice:
    proto = json.loads((tmp_path / "mae" / "seed1" / "protocol.json").read_text())
    proto["stages"]["finetune"]["seed"] = 0
    write_json(tmp_path / "mae" / "seed1" / "protocol.json", proto)
    with pytest.raises(tables.MetricsError, match="seed 0 appears twice"):
        tables.build_tables([tmp_path / "mae"], tmp_path / "report")


def test_comparison_with_a_published_spread(tmp_path):
    for seed, v in enumerate((83.3, 83.4, 83.5)):
        seed_run(tmp_path, "mae", seed, v, arch="vit_base_patch16_224")
    md, _ = tables.build_tables([tmp_path / "mae"], tmp_path / "report")
    cell = table_line(md, "FT top-1", "MAE")[5]
    # 83.4 - 83.57 against 0.08 over 4 seeds (MAE repo): Welch interval [-0.37, +0.03]
    assert cell.startswith("83.57 (MAE repo): -0.2 [-0.4, +0.0] within noise") and "4 seeds" in cell
    assert "68.0" in md and "as listed by a benchmark aggregator; epochs not stated" in md


# --------------------------------------------------------------------------- reproduce
def test_seeds_zero_is_refused(capsys):
    assert reproduce.main(["--seeds", "0", "--dry-run"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert reproduce.main(["--pretrain-seeds", "-1", "--dry-run"]) == 2
    assert "--pretrain-seeds must be at least 1" in capsys.readouterr().err


def test_dry_run_with_two_seeds_lists_scratch_and_every_seed(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--dry-run", "--output", str(out), "--seeds", "2", "--workers", "0"]
    assert reproduce.main(args + ["--stages", "pretrain,finetune,segmentation"]) == 0
    text = capsys.readouterr().out
    heads = [line.split(" -> ")[0][2:] for line in text.splitlines() if " -> " in line]
    assert heads[:3] == ["droppos / pretrain", "mae / pretrain", "adpe / pretrain"]
    assert "scratch / pretrain" not in heads
    assert "scratch / finetune" in heads and "scratch/seed1 / finetune" in heads
    assert "adpe/seed1 / segmentation" in heads
    assert len(heads) == 3 + 2 * 4 * 2
    assert f"checkpoint=none train.output_dir={out}/scratch/seed1/finetune" in text and "train.seed=1" in text
    assert f"checkpoint={out}/mae/pretrain/backbone.pth train.output_dir={out}/mae/seed1/finetune" in text
    assert "randomness.seed=1" in text and f"--work-dir {out}/scratch/segmentation --cfg-options" in text
    assert "randomness.seed=0 model.backbone.pretrained=None" in text
    assert not out.exists()


def test_stage_table_protocols_are_recorded(tmp_path):
    profile = dataclasses.replace(demo_profile(tmp_path / "data", 0), check=False)
    stages = build_stage_table(profile, tmp_path, ["droppos", "scratch"], seeds=2, pretrain_seeds=2)
    folders = sorted({s.method for s in stages})
    assert folders == [
        "droppos",
        "droppos/pretrain_seed1",
        "droppos/pretrain_seed1/seed1",
        "droppos/seed1",
        "scratch",
        "scratch/seed1",
    ]
    probe = next(s for s in stages if s.method == "scratch" and s.name == "position_probe")
    assert probe.available == "" and probe.command[probe.command.index("--checkpoint") + 1] == "none"
    assert probe.command[probe.command.index("--random-arch") + 1] == "vit_tiny_patch8_64"
    write_protocols(stages, tmp_path, seeds=2, pretrain_seeds=2)
    proto = json.loads((tmp_path / "droppos" / "pretrain_seed1" / "seed1" / "protocol.json").read_text())
    assert proto["init"] == "droppos" and proto["planned_runs"] == 4 and proto["pretrain_seed"] == 1
    ft = proto["stages"]["finetune"]
    assert ft["seed"] == 1 and ft["image_size"] == 64 and ft["recipe"].endswith("finetune_vit_tiny_builtin.yaml")
    assert ft["checkpoint"].endswith("droppos/pretrain_seed1/pretrain/backbone.pth")
    assert json.loads((tmp_path / "scratch" / "protocol.json").read_text())["planned_runs"] == 2
    assert collect_run(tmp_path / "scratch").method == "scratch"
    with pytest.raises(ValueError):
        build_stage_table(profile, tmp_path, ["mae"], seeds=0)


def test_differences_across_protocols_are_not_judged(tmp_path):
    for seed in range(2):
        seed_run(tmp_path, "droppos", seed, 70.0 + seed, epochs=3)
        seed_run(tmp_path, "scratch", seed, 40.0 + seed, epochs=5)
    md, _ = tables.build_tables([tmp_path / "droppos", tmp_path / "scratch"], tmp_path / "report")
    assert table_line(md, "FT top-1", "DropPos")[3] == "not compared: protocols differ (3 epochs vs 5 epochs)"
