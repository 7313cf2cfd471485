"""Analysis: position probe, pictures, comparison tables and the end-to-end driver."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from analysis.pictures import main as pictures
from analysis.reproduce import main as reproduce
from analysis.tables import comparison as tables
from analysis.probes.backbone import infer_arch, load_backbone
from analysis.pictures.canvas import expected_size
from analysis.probes.position_predictions import droppos_from_checkpoint
from analysis.probes.position_probe import (
    ProbeSettings,
    chance_within1,
    dropped_positions,
    encode_with_dropped_positions,
    run_probe,
)
from analysis.reproduce.runner import run_stage
from analysis.reproduce.stages import METRICS, Stage
from classification.position_probe import cell_distance
from pretrain.engine.config import load_config
from pretrain.models import DropPos, build_method, create_vit
from pretrain.weights import encoder_state_dict, to_reference_layout


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_droppos(img: int = 48, depth: int = 4, dim: int = 96) -> DropPos:
    enc = create_vit("tiny", img_size=img, patch_size=8, depth=depth, embed_dim=dim, num_heads=3)
    return DropPos(enc, decoder_dim=64, decoder_depth=1, decoder_heads=4, attentive=False, sigma=0.0, sigma_decay=False)


def save_ours(model: DropPos, path: Path) -> Path:
    """As our pretraining checkpoints: method weights under 'model', config with the head's width."""
    torch.save(
        {
            "model": model.state_dict(),
            "method": "droppos",
            "config": {
                "method": "droppos",
                "droppos": {"decoder_heads": 4, "mask_ratio": 0.75, "pos_drop_ratio": 0.75},
            },
        },
        path,
    )
    return path


# --------------------------------------------------------------------------- probe mechanics
def test_dropped_positions_counts_and_distance():
    g = torch.Generator().manual_seed(0)
    d = dropped_positions(5, 36, 0.75, g)
    assert d.shape == (5, 36) and d.sum(1).tolist() == [27] * 5
    assert dropped_positions(2, 36, 1.0, g).all() and not dropped_positions(2, 36, 0.0, g).any()
    assert cell_distance(torch.tensor(0), torch.tensor(7), (6, 6)).item() == 1  # (0,0) vs (1,1)
    assert cell_distance(torch.tensor(0), torch.tensor(14), (6, 6)).item() == 2  # (0,0) vs (2,2)
    assert chance_within1((3, 3)) == pytest.approx((4 * 4 + 4 * 6 + 9) / 81)


def test_backbone_matches_timm_and_relpos(tmp_path):
    """The rebuilt encoder is the same network: timm weights (head, fc_norm) and a relative-position ViT."""
    import timm

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=5).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    bb = load_backbone(tmp_path / "timm.pth")
    assert bb.method == "timm" and bb.replacement == "zero" and bb.grid_size == (4, 4)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(bb.model.forward_features(x), ref.forward_features(x))
        # nothing dropped -> exactly the plain encoder's patch features
        feats = encode_with_dropped_positions(bb, x, torch.zeros(2, 16, dtype=torch.bool))
        torch.testing.assert_close(feats, ref.forward_features(x)[:, 1:])

    rel = create_vit("tiny", rel_pos=True, img_size=32, patch_size=8, depth=2).eval()
    with torch.no_grad():
        for blk in rel.blocks:
            blk.attn.rpe_k.lookup_table_weight.normal_()
    torch.save({"model": rel.state_dict()}, tmp_path / "rel.pth")
    bb = load_backbone(tmp_path / "rel.pth")
    assert infer_arch(encoder_state_dict(rel.state_dict()))["rel_pos"] is True
    with torch.no_grad():
        torch.testing.assert_close(bb.model.forward_features(x), rel.forward_features(x))


def test_mask_pos_token_read_beside_backbone(tmp_path):
    model = tiny_droppos(img=32, depth=1)
    save_ours(model, tmp_path / "checkpoint-00000010.pth")
    torch.save({"model": encoder_state_dict(model.state_dict()), "method": "droppos"}, tmp_path / "backbone.pth")
    bb = load_backbone(tmp_path / "backbone.pth")
    assert bb.replacement == "mask_pos_token" and any("checkpoint-00000010.pth" in n for n in bb.notes)
    torch.testing.assert_close(bb.position_token, model.mask_pos_token.detach())
    assert load_backbone(tmp_path / "backbone.pth", replacement="zero").position_token.abs().sum() == 0
    bb64 = load_backbone(tmp_path / "backbone.pth", img_size=64)
    assert bb64.grid_size == (8, 8) and bb64.model.pos_embed.shape[1] == 65
    # the reference code's layout: flat keys, DDP prefix, an argparse Namespace pickled beside
    import argparse

    flat = {"module." + k: v for k, v in to_reference_layout(model.state_dict()).items()}
    (tmp_path / "ref").mkdir()
    torch.save({"model": flat, "args": argparse.Namespace(blr=1.5e-4), "epoch": 199}, tmp_path / "ref" / "x.pth")
    ref = load_backbone(tmp_path / "ref" / "x.pth")
    assert ref.method == "droppos" and ref.source_format == "droppos" and ref.replacement == "mask_pos_token"
    assert any("argparse.Namespace" in n for n in ref.notes)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(ref.model.forward_features(x), bb.model.forward_features(x))


# --------------------------------------------------------------------------- probe acceptance
def write_noise_folder(root: Path, per_split: dict[str, int], size: int = 54, seed: int = 0) -> Path:
    """An ImageFolder of i.i.d. uniform noise: no spatial structure at all.

    ``size`` is the eval transform's resize target, so the pixels are not resampled."""
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
                    root / split / cls / f"{i}.png"
                )
    return root


def test_probe_of_a_random_network_for_the_scratch_baseline(tmp_path, capsys):
    """``--checkpoint none --random-arch``: a seeded random ViT, the same probe, its own label and format."""
    from analysis.probes.position_probe import main as probe_main

    data = write_noise_folder(tmp_path / "noise", {"train": 20, "val": 8}, size=32)
    settings = ProbeSettings(epochs=2, num_workers=0)
    a = run_probe("none", data, [0.75], settings, verbose=False, random_arch="vit_tiny_patch8_32")
    b = run_probe("none", data, [0.75], settings, verbose=False, random_arch="vit_tiny_patch8_32")
    assert a["method"] == "scratch" and a["format"] == "random-init" and a["grid"] == [4, 4]
    assert a["results"] == b["results"]  # the seed decides the random network
    assert probe_main(["--checkpoint", "none", "--data", str(data)]) == 2
    assert "--random-arch" in capsys.readouterr().err
    with pytest.raises(ValueError, match="random-arch"):
        run_probe("none", data, [0.75], settings, verbose=False, random_arch="vit_huge")


def test_probe_at_chance_on_noise_with_every_position_dropped(tmp_path):
    data = write_noise_folder(tmp_path / "noise", {"train": 100, "val": 20})
    ckpt = save_ours(tiny_droppos(img=48, depth=2), tmp_path / "droppos_init.pth")
    settings = ProbeSettings(epochs=15, num_workers=0)
    m = run_probe(ckpt, data, [1.0, 0.0], settings, output=tmp_path / "out", verbose=False)
    written = json.loads((tmp_path / "out" / "position_probe_metrics.json").read_text())
    assert written["task"] == "position_probe" and written["replacement"] == "mask_pos_token"
    assert written["checkpoint"] == str(ckpt)
    none, all_given = m["results"]
    n = 36
    assert none["chance"] == pytest.approx(1 / n) and none["num_val_tokens"] == 40 * n
    # No position anywhere and no structure in the pixels: held-out accuracy is chance (1/36 = 2.8%,
    # binomial sd 0.6% on 1440 tokens); the head may overfit the training tokens, never the val ones.
    assert abs(none["top1"] - 1 / n) < 0.025
    assert abs(none["within1"] - none["chance_within1"]) < 0.06
    # Control: with the positions given, the same probe on the same features reads them off
    # (measured 0.12: the noise dominates a random network's features, but the position shows).
    assert all_given["probed"].startswith("all") and all_given["top1"] > 3 / n


@pytest.fixture(scope="module")
def trained_droppos(tmp_path_factory, small_builtin):
    """A tiny DropPos trained for a few hundred steps on the built-in data, and its untrained twin."""
    from pretrain.data.imagefolder import ImageFolderDataset
    from pretrain.data.transforms import build_pretrain_transform

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("droppos_run")
    torch.manual_seed(0)
    model = tiny_droppos()
    save_ours(model, out / "init.pth")
    ds = ImageFolderDataset(
        small_builtin / "imagenet", "train", transform=build_pretrain_transform(48, scale=(0.35, 1.0))
    )
    loader = torch.utils.data.DataLoader(
        ds, batch_size=40, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    step = 0
    while step < 200:
        for x, _ in loader:
            loss = model(x, generator=gen).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == 200:
                break
    save_ours(model.eval(), out / "checkpoint-00000200.pth")
    torch.set_num_threads(before)
    return {"init": out / "init.pth", "trained": out / "checkpoint-00000200.pth", "data": small_builtin}


def test_probe_well_above_chance_for_trained_droppos(trained_droppos, tmp_path):
    settings = ProbeSettings(epochs=20, num_workers=0)
    res = {
        k: run_probe(trained_droppos[k], trained_droppos["data"], [0.75], settings, verbose=False)["results"][0]
        for k in ("init", "trained")
    }
    chance = res["trained"]["chance"]
    assert chance == pytest.approx(1 / 36)
    # Measured: trained 0.154 top-1 vs 0.108 for the same network untrained (chance 0.028).
    assert res["trained"]["top1"] > 4 * chance
    assert res["trained"]["top1"] > res["init"]["top1"] + 0.02
    assert res["trained"]["within1"] > res["init"]["within1"]


# --------------------------------------------------------------------------- pictures
def assert_png(path: Path, kind: str) -> None:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == expected_size(kind)
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas


def test_pictures_are_valid_pngs(trained_droppos, tmp_path):
    ckpt, data = trained_droppos["trained"], trained_droppos["data"]
    # the position head of a standard-size ViT (what a pretraining config describes), rebuilt by the registry
    torch.manual_seed(0)
    std = DropPos(create_vit("tiny", img_size=32, patch_size=8), decoder_dim=64, decoder_depth=1, decoder_heads=4)
    std_ckpt = save_ours(std, tmp_path / "checkpoint-00000001.pth")
    assert_png(pictures.positions_picture(std_ckpt, tmp_path, data=data, mode="head", label="head"), "positions")
    # a ViT of no standard size: auto falls back to the probe
    assert_png(pictures.positions_picture(ckpt, tmp_path, data=data, probe_epochs=5, label="auto"), "positions")
    assert_png(
        pictures.positions_picture(ckpt, tmp_path, data=data, mode="probe", probe_epochs=5, label="probe"), "positions"
    )
    assert_png(pictures.attention_picture(ckpt, tmp_path, data=data), "attention")
    assert_png(pictures.plot_smoothing_targets(tmp_path / "smooth.png"), "smoothing")
    probe = {
        "task": "position_probe",
        "label": "x",
        "results": [
            {"drop_ratio": r, "top1": 0.5 - 0.3 * r, "within1": 0.8 - 0.3 * r, "chance": 1 / 36} for r in (0, 0.5, 1)
        ],
    }
    assert_png(pictures.plot_probe_curves([probe, dict(probe, label="y")], tmp_path / "curves.png"), "curves")
    # CLI
    assert pictures.main(["smoothing", "--out", str(tmp_path / "cli"), "--grid", "8", "--img-size", "64"]) == 0
    assert_png(tmp_path / "cli" / "smoothing_targets.png", "smoothing")


def test_droppos_head_rebuilt_from_the_run_config(tmp_path):
    """A pretraining checkpoint's DropPos comes back through the registry with the run's own settings."""
    overrides = ["droppos.decoder_dim=64", "droppos.decoder_heads=4", "droppos.mask_ratio=0.5", "droppos.sigma=0.5"]
    cfg = load_config("droppos_vit_tiny_builtin.yaml", overrides + ["droppos.smoothing=reference"])
    torch.manual_seed(0)
    model = build_method(cfg)
    path = tmp_path / "checkpoint-00000003.pth"
    torch.save({"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True)}, path)
    rebuilt = droppos_from_checkpoint(path, load_backbone(path))
    assert rebuilt.decoder_blocks[0].attn.num_heads == 4 and rebuilt.mask_ratio == 0.5
    assert (rebuilt.sigma0, rebuilt.smoothing) == (0.5, "reference")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value)


# --------------------------------------------------------------------------- tables
def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def make_run(root: Path, method: str, top1: float, probe: float = 0.2, with_seg: bool = True) -> Path:
    run = root / method
    write_json(
        run / "pretrain" / "pretrain_metrics.json",
        {
            "task": "pretrain",
            "method": method,
            "arch": "vit_tiny_patch8_64",
            "epochs": 6,
            "extra_key": [1, 2],
            "final": {"loss": 1.2345, "pos_acc": 0.1},
            "cost": {"gpu_hours": 0.0, "cpu_minutes": 2.5},
        },
    )
    write_json(run / "finetune" / "classification_metrics.json", {"task": "finetune", "top1": top1, "top5": 99.0})
    write_json(run / "linear_probe" / "classification_metrics.json", {"task": "linear_probe", "top1": top1 - 10})
    write_json(
        run / "detection" / "detection_metrics.json", {"task": "coco_detection", "bbox_AP": 12.5, "segm_AP": None}
    )
    if with_seg:
        write_json(run / "segmentation" / "segmentation_metrics.json", {"task": "ade20k_segmentation", "mIoU": 33.3})
    write_json(
        run / "position_probe" / "position_probe_metrics.json",
        {
            "task": "position_probe",
            "grid": [8, 8],
            "replacement": "zero",
            "results": [{"drop_ratio": 0.75, "top1": probe, "within1": 0.5, "chance": 1 / 64}],
        },
    )
    return run


def test_tables_three_methods_side_by_side(tmp_path):
    runs = [
        make_run(tmp_path, "droppos", 71.0, 0.3),
        make_run(tmp_path, "mae", 70.0, 0.1),
        make_run(tmp_path, "adpe", 69.5, 0.12, with_seg=False),
    ]
    write_json(
        runs[2] / "stage_status.json",
        {"segmentation": {"status": "skipped", "reason": "not available: mmseg not installed"}},
    )
    md, found = tables.build_tables([runs[1], runs[2], runs[0]], tmp_path / "report")
    assert [r.method for r in found] == ["droppos", "mae", "adpe"]
    header = next(line for line in md.splitlines() if line.startswith("| measure"))
    assert header.index("DropPos (this suite)") < header.index("MAE (this suite)") < header.index("AdPE (this suite)")
    ft = next(line for line in md.splitlines() if line.startswith("| FT top-1"))
    cells = [c.strip() for c in ft.strip("|").split("|")]
    assert cells[1:4] == ["71.0 (n=1)", "70.0 (n=1)", "69.5 (n=1)"]
    assert cells[4] == "84.2" and cells[5] == "83.6"  # paper headline ViT-B: DropPos 800 ep, MAE 1600 ep
    miou = next(line for line in md.splitlines() if line.startswith("| ADE mIoU"))
    assert "33.3" in miou and "skipped" in miou and "MAE +2.6" in miou and "48.1" in miou
    assert "2.5 min (CPU)" in md and "30.0 (n=1)" in md
    assert "83.0" in md and "85.8" in md and "50.3" in md and "51.6" in md  # paper rows
    import csv

    with open(tmp_path / "report" / "side_by_side.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:4] == ["DropPos (this suite)", "MAE (this suite)", "AdPE (this suite)"]
    for name in ("results.csv", "position_probe.csv", "paper_numbers.csv", "stages.csv", "tables.md"):
        assert (tmp_path / "report" / name).is_file()


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("finetune/classification_metrics.json", {"task": "finetune", "top5": 90.0}, "'top1' is missing"),
        ("finetune/classification_metrics.json", {"task": "finetune", "top1": "high"}, "'top1' must be"),
        ("finetune/classification_metrics.json", {"task": "coco_detection", "top1": 1.0}, "does not belong"),
        ("detection/detection_metrics.json", "{not json", "not valid JSON"),
        (
            "pretrain/pretrain_metrics.json",
            {"task": "pretrain", "method": "mae", "epochs": 1, "cost": {"cpu_minutes": 1}},
            "'cost.gpu_hours' is missing",
        ),
        (
            "position_probe/position_probe_metrics.json",
            {"task": "position_probe", "results": [{"drop_ratio": 0.75}]},
            "results[0].top1",
        ),
    ],
)
def test_tables_fail_clearly_on_malformed_file(tmp_path, capsys, name, content, needle):
    run = make_run(tmp_path, "droppos", 70.0)
    bad = write_json(run / name, content)
    with pytest.raises(tables.MetricsError) as err:
        tables.build_tables([run], tmp_path / "report")
    assert str(bad) in str(err.value) and needle in str(err.value)
    assert tables.main([str(run), "--out", str(tmp_path / "r2")]) == 1
    assert str(bad) in capsys.readouterr().err


# --------------------------------------------------------------------------- reproduce
def stub(
    method: str,
    name: str,
    out: Path,
    metrics: dict | None,
    available: str = "",
    fail: bool = False,
    needs: list[Path] = (),
) -> Stage:
    """A stage whose process writes ``metrics`` (after a short nap, so that ordering matters) or fails."""
    path = out / method / name / METRICS[name]
    if fail:
        code = "import sys; print('boom'); sys.exit(3)"
    else:
        code = (
            f"import json, pathlib, time; time.sleep(0.3); p = pathlib.Path({str(path)!r}); "
            f"p.parent.mkdir(parents=True, exist_ok=True); p.write_text(json.dumps({metrics!r}))"
        )
    return Stage(method, name, [sys.executable, "-c", code], path, needs=list(needs), available=available)


def test_reproduce_runs_stages_skips_done_and_reports(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_stages(args, out, methods, profile):
        calls.append(methods)
        stages = []
        for m, top1 in zip(methods, (71.0, 70.0, 69.0)):
            pre = stub(
                m,
                "pretrain",
                out,
                {
                    "task": "pretrain",
                    "method": m,
                    "arch": "vit_tiny_patch8_64",
                    "epochs": 1,
                    "final": {"loss": 1.0},
                    "cost": {"gpu_hours": 0, "cpu_minutes": 0.1},
                },
            )
            stages.append(pre)
            # needs the pretraining output: with 2 jobs it must wait for its pretraining stage
            stages.append(stub(m, "finetune", out, {"task": "finetune", "top1": top1}, needs=[pre.metrics]))
            stages.append(stub(m, "segmentation", out, None, available="mmseg not installed"))
            stages.append(
                stub(
                    m,
                    "detection",
                    out,
                    {"task": "coco_detection", "bbox_AP": 10.0, "segm_AP": None},
                    fail=(m == "adpe"),
                )
            )
        return stages

    monkeypatch.setattr(reproduce, "build_stages", fake_stages)
    monkeypatch.setattr(reproduce, "prepare_data", lambda root: None)
    out = tmp_path / "demo"
    rc = reproduce.main(["--output", str(out), "--no-pictures", "--jobs", "2"])
    assert rc == 1  # the failing stage is reported, the rest still ran
    log = capsys.readouterr().out
    assert "droppos/pretrain: done in" in log and "skipped (not available: mmseg not installed)" in log
    assert "adpe/detection: FAILED" in log and "boom" in log
    report = (out / "report.md").read_text()
    assert "| run | pretrain | finetune |" in report and "\n| droppos | done" in report
    assert "skipped (not available: mmseg not installed)" in report and "failed (exit code 3" in report
    assert "DropPos (this suite)" in report and "71.0" in report
    status = json.loads((out / "mae" / "stage_status.json").read_text())
    assert status["finetune"]["status"] == "done" and status["segmentation"]["status"] == "skipped"
    assert status["pretrain"]["wall_seconds"] > 0 and "cpu_seconds" in status["pretrain"]
    # re-run: finished stages are not run again
    first = (out / "droppos" / "finetune" / "classification_metrics.json").stat().st_mtime_ns
    reproduce.main(["--output", str(out), "--no-pictures", "--methods", "droppos,mae"])
    log = capsys.readouterr().out
    assert "droppos/finetune: done before" in log and "running" not in log
    assert (out / "droppos" / "finetune" / "classification_metrics.json").stat().st_mtime_ns == first


def test_reproduce_paper_profile_prints_launcher_commands(tmp_path, capsys):
    rc = reproduce.main(
        [
            "--profile",
            "vit_b_200ep",
            "--output",
            str(tmp_path / "b200"),
            "--imagenet",
            "/in1k",
            "--gpus",
            "4",
            "--nnodes",
            "2",
            "--node-rank",
            "1",
            "--master-addr",
            "10.0.0.1",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert (
        "torchrun --nproc_per_node=4 --nnodes=2 --node_rank=1 --master_addr=10.0.0.1 --master_port=29500 "
        "-m pretrain.main --config pretrain/configs/droppos_vit_base_200ep.yaml"
    ) in text
    assert "mae_vit_base_800ep.yaml" in text and "train.epochs=200" in text
    assert (
        "-m classification.finetune --config classification/configs/finetune_vit_base_relpos.yaml" in text
    )  # AdPE rel
    assert "python -m detection.train_net --num-gpus 4 --num-machines 2 --machine-rank 1" in text
    assert "mask_rcnn_vitdet_b_100ep.py" in text
    assert (
        "segmentation/train.py segmentation/configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py --launcher pytorch"
        in text
    )
    assert "-m analysis.position_probe" in text and "--data /in1k" in text
    assert not (tmp_path / "b200").exists()  # printing only
    assert reproduce.main(["--profile", "demo", "--methods", "droppos,bogus"]) == 2


def test_reproduce_demo_dry_run_lists_every_stage(tmp_path, capsys):
    """The demo's table (the same builder as the paper profiles): 11 stages x 3 methods + 9 of scratch, stage by stage."""
    out = tmp_path / "demo"
    assert reproduce.main(["--dry-run", "--output", str(out), "--detection-iters", "30", "--workers", "0"]) == 0
    text = capsys.readouterr().out
    heads = [line.split(" -> ")[0] for line in text.splitlines() if " -> " in line]
    assert heads[:4] == ["# droppos / pretrain", "# mae / pretrain", "# adpe / pretrain", "# droppos / finetune"]
    assert len(heads) == 42 and heads[-1] == "# scratch / robustness"  # robustness of scratch's fine-tuning too
    assert "# adpe / finetuned_probe" in heads and "# scratch / lowshot" in heads
    assert "# droppos / finetuned_probe" in heads and "# scratch / finetuned_probe" not in heads
    assert "pretrain/configs/adpe_vit_tiny_builtin.yaml" in text and "train.epochs=3" in text
    assert "data.builtin=true data.num_workers=0 train.progress=false train.tensorboard=false" in text
    assert "train.max_iter=30 " in text and "'lr_multiplier.scheduler.milestones=[26, 28]'" in text
    assert "--img-size 64 --num-workers 0 --train-images 400" in text
    assert "train_dataloader.dataset.data_root=data/builtin/ade20k/ADEChallengeData2016" in text
    assert not out.exists()


def test_stage_timeout_and_missing_input_are_reported(tmp_path, capsys):
    out = tmp_path / "o"
    slow = Stage(
        "mae",
        "finetune",
        [sys.executable, "-c", "import time; print('start', flush=True); time.sleep(60)"],
        out / "mae" / "finetune" / "classification_metrics.json",
    )
    rec = run_stage(slow, out, timeout=1.0)
    assert rec["status"] == "failed" and "stage-timeout" in rec["reason"] and rec["wall_seconds"] < 30
    assert "start" in (out / "mae" / "logs" / "finetune.log").read_text()
    needy = Stage(
        "mae",
        "detection",
        [sys.executable, "-c", "pass"],
        out / "mae" / "detection" / "x.json",
        needs=[out / "mae" / "pretrain" / "backbone.pth"],
    )
    rec = run_stage(needy, out)
    assert rec["status"] == "skipped" and "backbone.pth" in rec["reason"]


def test_monitor_curves_of_the_runs_that_pretrained_one_helper(tmp_path):
    """The report and the ablation report draw the monitor curves through one helper: the run folders with a
    pretraining metrics file, each with its transfer stages' top-1 as markers."""
    from analysis.layout import METRICS
    from analysis.pictures.monitor_curves import final_transfer, plot_run_curves, pretrained_runs
    from analysis.reproduce.report import make_pictures

    out = tmp_path / "out"
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "pos_acc": 0.1 * e, "monitor": {"knn_top1": 10.0 * e}}
               for e in range(3)]
    (out / "mae" / "pretrain").mkdir(parents=True)
    (out / "mae" / "pretrain" / METRICS["pretrain"]).write_text(json.dumps({"task": "pretrain", "history": history}))
    (out / "mae" / "finetune").mkdir()
    (out / "mae" / "finetune" / METRICS["finetune"]).write_text(json.dumps({"task": "finetune", "top1": 42.0}))
    (out / "mine" / "knn").mkdir(parents=True)  # an --init row: no pretraining
    runs = pretrained_runs([("mae", out / "mae"), ("mine", out / "mine")])
    assert runs == [("mae", out / "mae" / "pretrain")] and final_transfer(out / "mae") == {"finetune": 42.0}
    assert plot_run_curves(runs, tmp_path / "curves.png").stat().st_size > 0
    made = dict(make_pictures(out, tmp_path / "data", ["mae", "mine"]))
    assert any(path.name == "monitor_curves.png" and path.is_file() for path in made.values())
