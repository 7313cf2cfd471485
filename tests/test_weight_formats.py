"""Weights that travel: export to timm / safetensors / Detectron2 / MMSeg with a card, import back.

A tiny ViT (ViT-Tiny, patch 8, 64 px, 12 blocks) stands for a pretraining run folder;
every target is exported, read back and compared feature for feature.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from pretrain.weights.loading import LoadRules, load_encoder_into
from pretrain.models.vit import create_vit
from pretrain.weights.card import card_path, file_sha256
from pretrain.weights import read_card
from pretrain.weights.export import export_weights
from pretrain.weights import CheckpointError, detect_format, load_checkpoint_file, load_encoder, model_state
from tools.convert_checkpoint import main as convert

TARGETS = ["timm", "safetensors", "detectron2", "mmseg", "mmseg-vit", "droppos-upernet"]
SUFFIX = {"timm": ".pth", "safetensors": ".safetensors", "detectron2": ".pth", "mmseg": ".pth", "mmseg-vit": ".pth",
          "droppos-upernet": ".pth"}
TIMM_KW = dict(pretrained=False, num_classes=0, img_size=64, patch_size=8)


def tiny_encoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    enc = create_vit("tiny", img_size=64, patch_size=8)
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return enc.eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A pretraining run folder: checkpoint in this suite's layout, config.yaml, pretrain_metrics.json."""
    root = tmp_path_factory.mktemp("run")
    state = {f"encoder.{k}": v for k, v in tiny_encoder().state_dict().items()}
    state["mask_pos_token"] = torch.zeros(1, 1, 192)
    state["decoder_pred.weight"] = torch.randn(64, 512)
    torch.save({"model": state, "method": "droppos"}, root / "checkpoint-3.pth")
    (root / "config.yaml").write_text("method: droppos\ntrain:\n  epochs: 4\nmodel:\n  size: tiny\n")
    (root / "pretrain_metrics.json").write_text(json.dumps(
        {"task": "pretrain", "method": "droppos", "epochs": 4, "final": {"loss": 4.5, "acc": 0.25},
         "history": [{"loss": 5.0}] * 4}))
    return root


def timm_features(encoder: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    model = timm.create_model("vit_tiny_patch16_224", **TIMM_KW).eval()
    model.load_state_dict(encoder, strict=True)
    with torch.no_grad():
        return model.forward_features(x)


@pytest.mark.parametrize("to", TARGETS)
def test_round_trip_gives_the_same_features_and_keeps_the_card(run_dir, tmp_path, to):
    src = run_dir / "checkpoint-3.pth"
    dst = tmp_path / f"backbone{SUFFIX[to]}"
    done = export_weights(src, dst, to)
    assert done.source_format == "ours" and done.files == [dst, card_path(dst)]
    back = load_encoder(dst)
    assert sorted(back) == sorted(done.encoder)
    x = torch.randn(2, 3, 64, 64)
    tol = 1e-5 if to == "mmseg-vit" else 0  # its patch bias travels in the position table: (x + b) + p vs x + (p + b)
    torch.testing.assert_close(timm_features(back, x), timm_features(done.encoder, x), rtol=tol, atol=tol)
    card = json.loads(card_path(dst).read_text())
    assert read_card(dst) == card == done.card
    assert card["method"] == "droppos" and card["epochs"] == 4 and card["recipe"].endswith("config.yaml")
    assert (card["img_size"], card["patch_size"], card["depth"]) == (64, 8, 12)
    assert card["position_embedding"] == "absolute"
    assert card["source"] == {"file": src.name, "sha256": file_sha256(src), "format": "ours"}
    assert card["metrics"]["final"] == {"loss": 4.5, "acc": 0.25} and "history" not in card["metrics"]
    # converting the export again keeps the card and records the hop
    again = export_weights(dst, tmp_path / "again.safetensors", "safetensors")
    assert again.card["source"] == card["source"] and again.card["converted_from"]["file"] == dst.name
    torch.testing.assert_close(again.encoder, back, rtol=0, atol=0)


def test_timm_export_loads_through_timms_pretrained_file(run_dir, tmp_path):
    enc = export_weights(run_dir / "checkpoint-3.pth", tmp_path / "b.pth", "timm").encoder
    export_weights(run_dir / "checkpoint-3.pth", tmp_path / "b.safetensors", "safetensors")
    x = torch.randn(1, 3, 64, 64)
    for dst in (tmp_path / "b.pth", tmp_path / "b.safetensors"):
        model = timm.create_model(
            "vit_tiny_patch16_224", pretrained=True, num_classes=0, img_size=64, patch_size=8,
            pretrained_strict=True, pretrained_cfg_overlay=dict(file=str(dst), num_classes=0)).eval()
        with torch.no_grad():
            torch.testing.assert_close(model.forward_features(x), timm_features(enc, x), rtol=0, atol=0)
    assert convert([str(run_dir / "checkpoint-3.pth"), str(tmp_path / "c.pth"), "--check-timm",
                    "vit_tiny_patch16_224"]) == 0


def test_detectron2_export_fits_the_suites_vitdet(run_dir, tmp_path):
    pytest.importorskip("detectron2")
    from detection.checkpointer import encoder_to_vitdet, is_detectron2_state
    from detection.windowed_vit import create_vitdet_encoder

    dst = tmp_path / "model_final.pth"
    export_weights(run_dir / "checkpoint-3.pth", dst, "detectron2")
    saved = torch.load(dst, weights_only=True)
    vitdet = create_vitdet_encoder("tiny", img_size=128, pretrain_img_size=64, patch_size=8, window_size=4)
    own = {f"backbone.net.{k}": v for k, v in vitdet.state_dict().items()}
    assert set(saved["model"]) <= set(own)  # zero unexpected backbone keys
    assert all(saved["model"][k].shape == own[k].shape for k in saved["model"])
    assert not is_detectron2_state(saved["model"])  # a backbone alone takes the encoder path
    assert detect_format(model_state(load_checkpoint_file(dst)), dst) == "detectron2"
    converted, report = encoder_to_vitdet(load_encoder(dst), own, str(dst))
    assert report.unexpected == [] and report.mismatched == {}
    assert sorted(report.skipped) == ["cls_token", "norm.bias", "norm.weight"]
    assert set(converted) == {k for k in own if ".rel_pos_" not in k}


def test_upernet_export_fits_the_suites_upernet_backbone(run_dir, tmp_path):
    pytest.importorskip("mmseg.models")
    from segmentation.backbone import DropPosViT

    dst = tmp_path / "iter_160000.pth"
    export_weights(run_dir / "checkpoint-3.pth", dst, "droppos-upernet")
    saved = torch.load(dst, weights_only=True)
    holder = torch.nn.Module()
    holder.backbone = DropPosViT(arch="tiny", img_size=64, patch_size=8, out_indices=(11,))
    result = holder.load_state_dict(saved["state_dict"], strict=False)  # what MMEngine's load_checkpoint does
    assert result.unexpected_keys == []
    assert all(k.endswith(("gamma", "relative_position_bias_table")) for k in result.missing_keys)
    assert detect_format(model_state(load_checkpoint_file(dst)), dst) == "mmengine"


def mmseg_mae_checkpoint(path: Path):
    """MMSegmentation's own MAE backbone (2 layers, layer scale, random q/v biases and relative tables)
    saved the way an MMEngine ``iter_*.pth`` holds a segmentor."""
    from mmseg.models.backbones import MAE

    torch.manual_seed(0)
    theirs = MAE(img_size=64, patch_size=8, embed_dims=192, num_layers=2, num_heads=3, out_indices=[1],
                 init_values=0.5)
    theirs.eval()  # (MMSeg's train() returns None)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.05)
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": {
        **{f"backbone.{k}": v for k, v in theirs.state_dict().items()},
        "decode_head.conv_seg.weight": torch.zeros(3)}}, path)
    return theirs


def test_mmsegs_own_mae_backbone_keys_import_with_identical_features(tmp_path):
    pytest.importorskip("mmseg.models")
    from segmentation.backbone import DropPosViT

    path = tmp_path / "iter_8000.pth"
    theirs = mmseg_mae_checkpoint(path)
    assert detect_format(model_state(load_checkpoint_file(path)), path) == "mmseg-mae"
    enc = load_encoder(path)
    assert "blocks.1.attn.qkv.bias" in enc and "blocks.0.ls2.gamma" in enc and "blocks.0.mlp.fc1.weight" in enc
    assert not any(k.startswith("decode_head") or "relative_position_index" in k for k in enc)
    ours = DropPosViT(arch="tiny", depth=2, img_size=64, patch_size=8, out_indices=(1,), drop_path_rate=0.0).eval()
    report = load_encoder_into(ours, enc, LoadRules(strict=True, allowed_new=frozenset()), str(path))
    assert report.unexpected == [] and report.new == []
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x)[0], rtol=1e-4, atol=1e-5)


def test_a_segmentor_exported_for_detectron2_folds_layer_scale_and_keeps_its_tables(tmp_path):
    pytest.importorskip("mmseg.models")
    pytest.importorskip("detectron2")
    from detection.windowed_vit import create_vitdet_encoder
    from segmentation.backbone import DropPosViT

    theirs = mmseg_mae_checkpoint(tmp_path / "iter_8000.pth")
    done = export_weights(tmp_path / "iter_8000.pth", tmp_path / "det.pth", "detectron2")
    assert done.source_format == "mmseg-mae"
    assert "layer scale folded" in done.card["target_notes"]
    assert any("BEiT-style" in k for k in done.card["target_notes"])
    saved = torch.load(tmp_path / "det.pth", weights_only=True)
    vitdet = create_vitdet_encoder("tiny", depth=2, img_size=64, pretrain_img_size=64, patch_size=8,
                                   window_size=4, window_block_indexes=(0,))
    own = {f"backbone.net.{k}" for k in vitdet.state_dict()}
    assert set(saved["model"]) <= own  # zero unexpected backbone keys
    back = load_encoder(tmp_path / "det.pth")  # folded weights + the tables kept aside
    plain = DropPosViT(arch="tiny", depth=2, img_size=64, patch_size=8, out_indices=(1,), drop_path_rate=0.0,
                       init_values=None).eval()
    load_encoder_into(plain, back, LoadRules(strict=True, allowed_new=frozenset()), "det.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], theirs(x)[0], rtol=1e-4, atol=1e-5)


def test_vitdet_checkpointer_reads_a_detectron2_export(run_dir, tmp_path):
    pytest.importorskip("detectron2")
    import detection  # noqa: F401  (shims)
    from detectron2.config import LazyConfig, instantiate

    from detection.checkpointer import ViTDetCheckpointer

    dst = tmp_path / "model_final.pth"
    enc = export_weights(run_dir / "checkpoint-3.pth", dst, "detectron2").encoder
    cfg = LazyConfig.load(str(Path(__file__).resolve().parents[1] / "detection/configs/mask_rcnn_vitdet_tiny_builtin.py"))
    model = instantiate(cfg.model)
    checkpointer = ViTDetCheckpointer(model)
    checkpointer.load(str(dst))
    report = checkpointer.load_report
    assert report["unexpected"] == [] and report["mismatched"] == {}
    assert sorted(report["skipped"]) == ["cls_token", "norm.bias", "norm.weight"]
    after = model.state_dict()
    torch.testing.assert_close(after["backbone.net.blocks.7.mlp.fc1.weight"], enc["blocks.7.mlp.fc1.weight"])


def test_a_vitdet_detector_checkpoint_imports_into_the_plain_vit(tmp_path):
    """ViTDet's model_final.pth: no cls token, no final norm, decomposed relative tables."""
    enc = tiny_encoder(1).state_dict()
    state = {f"backbone.net.{k}": v for k, v in enc.items() if k not in ("cls_token", "norm.weight", "norm.bias")}
    for i in range(12):
        state[f"backbone.net.blocks.{i}.attn.rel_pos_h"] = torch.zeros(15, 64)
    state["backbone.simfp_2.0.weight"] = torch.zeros(1)
    state["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(81, 1024)
    path = tmp_path / "model_final.pth"
    torch.save({"model": state, "iteration": 90000}, path)
    imported = load_encoder(path)
    assert "blocks.3.attn.rel_pos_h" in imported and not any(k.startswith("roi_heads") for k in imported)
    assert convert([str(path), str(tmp_path / "det_backbone.safetensors"), "--to", "safetensors"]) == 0
    card = read_card(tmp_path / "det_backbone.safetensors")
    assert card["source"]["format"] == "detectron2" and card["position_embedding"] == "relative"
    assert card["relative_position"] == ["decomposed (ViTDet rel_pos_h/w)"]
    skip = {"blocks.*.attn.rel_pos_*": "decomposed relative tables (ViTDet): the plain ViT has none"}
    with pytest.raises(CheckpointError, match=r"model_final\.pth would leave encoder weights at their initialisation"):
        load_encoder_into(tiny_encoder(), imported, LoadRules(skip=skip), str(path))
    model = tiny_encoder()
    report = load_encoder_into(model, imported, LoadRules(skip=skip, partial=("cls_token", "norm.*")), str(path))
    assert report.partial == ["cls_token", "norm.bias", "norm.weight"]
    assert len(report.skipped) == 12 and "partial load asked for" in report.summary()
    torch.testing.assert_close(model.state_dict()["blocks.5.mlp.fc2.weight"], enc["blocks.5.mlp.fc2.weight"])


def test_the_refusal_rule_names_the_keys_left_at_init():
    enc = {k: v for k, v in tiny_encoder().state_dict().items() if not k.startswith("blocks.11.")}
    with pytest.raises(CheckpointError, match=r"blocks\.11\.\*"):
        load_encoder_into(tiny_encoder(), enc, LoadRules(), "part.pth")
    report = load_encoder_into(tiny_encoder(), enc, LoadRules(partial=("blocks.11.*",)), "part.pth")
    assert len(report.partial) == 12


# ------------------------------------------------------------------ bad input
def test_bad_inputs_stop_with_the_file_and_the_reason(run_dir, tmp_path, capsys):
    src = run_dir / "checkpoint-3.pth"
    # wrong architecture
    export_weights(src, tmp_path / "tiny.pth", "timm")
    small = create_vit("small", img_size=64, patch_size=8)
    with pytest.raises(CheckpointError, match=r"(?s)tiny\.pth.*shape mismatches"):
        load_encoder_into(small, load_encoder(tmp_path / "tiny.pth"), LoadRules(strict=True), str(tmp_path / "tiny.pth"))
    assert convert([str(src), str(tmp_path / "t2.pth"), "--check-timm", "vit_small_patch16_224"]) == 1
    assert "t2.pth does not load strictly into timm vit_small_patch16_224" in capsys.readouterr().err
    # truncated files, both kinds
    for name, to in (("cut.pth", "timm"), ("cut.safetensors", "safetensors")):
        export_weights(src, tmp_path / name, to)
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        assert convert([str(tmp_path / name), str(tmp_path / "out.pth")]) == 1
        err = capsys.readouterr().err
        assert name in err and "truncated" in err
    # safetensors without a card (timm's own files): read by its key layout like a state dict
    from safetensors.torch import save_file

    bare = tiny_encoder().state_dict()
    save_file({k: v.contiguous() for k, v in bare.items()}, str(tmp_path / "bare.safetensors"))
    assert convert([str(tmp_path / "bare.safetensors"), str(tmp_path / "bare_out.pth")]) == 0
    capsys.readouterr()
    assert torch.equal(torch.load(tmp_path / "bare_out.pth")["model"]["blocks.0.attn.qkv.weight"],
                       bare["blocks.0.attn.qkv.weight"])
    # ... but a file with no ViT in it is still refused
    save_file({"weight": torch.zeros(3, 3)}, str(tmp_path / "noise.safetensors"))
    assert convert([str(tmp_path / "noise.safetensors"), str(tmp_path / "out.pth")]) == 1
    assert "noise.safetensors" in capsys.readouterr().err and not (tmp_path / "out.pth").exists()
    # ambiguous source format: a detector's backbone and a flat encoder in one file
    enc = tiny_encoder().state_dict()
    mixed = {**enc, **{f"backbone.net.{k}": v for k, v in enc.items()}}
    torch.save({"model": mixed}, tmp_path / "mixed.pth")
    assert convert([str(tmp_path / "mixed.pth"), str(tmp_path / "out.pth"), "--to", "mmseg"]) == 1
    err = capsys.readouterr().err
    assert "mixed.pth" in err and "ambiguous source format" in err and "detectron2" in err
    assert not (tmp_path / "out.pth").exists()


# ------------------------------------------------------------ fine-tuned backbones for the analyses
def test_analysis_reads_a_detector_and_a_segmentor_backbone(run_dir, tmp_path):
    from analysis.probes.backbone import load_backbone

    enc = tiny_encoder().state_dict()
    det = {f"backbone.net.{k}": v for k, v in enc.items() if k not in ("cls_token", "norm.weight", "norm.bias")}
    det.update({f"backbone.net.blocks.{i}.attn.rel_pos_h": torch.zeros(15, 64) for i in range(12)})
    det["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(81, 1024)
    torch.save({"model": det, "iteration": 10}, tmp_path / "model_final.pth")
    bb = load_backbone(tmp_path / "model_final.pth")
    assert bb.source_format == "detectron2" and bb.grid_size == (8, 8)
    assert any("decomposed relative tables" in n for n in bb.notes)
    assert any("left at initialisation: cls_token, norm.weight, norm.bias" in n for n in bb.notes)
    torch.testing.assert_close(bb.model.state_dict()["blocks.4.attn.qkv.weight"], enc["blocks.4.attn.qkv.weight"])
    # an export keeps the method on its card, and the cls token / norm travel with it
    for to, layout in (("droppos-upernet", "mmengine"), ("mmseg", "mmseg-mae"), ("mmseg-vit", "mmseg-mae")):
        export_weights(run_dir / "checkpoint-3.pth", tmp_path / f"{to}.pth", to)
        bb = load_backbone(tmp_path / f"{to}.pth")
        assert bb.method == "droppos" and bb.source_format == layout
        assert not any("left at initialisation" in n for n in bb.notes)


def test_pretrained_versus_finetuned_probe_rows(run_dir, small_builtin, tmp_path, capsys):
    from analysis.probes.finetuned_probe import main as finetuned_probe

    export_weights(run_dir / "checkpoint-3.pth", tmp_path / "det.pth", "detectron2")
    det = torch.load(tmp_path / "det.pth", weights_only=True)["model"]  # a "fine-tuned" detector: heads, no extras
    det["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(3, 8)
    torch.save({"model": det}, tmp_path / "model_final.pth")
    cls = {k: v for k, v in tiny_encoder(2).state_dict().items()}
    cls["head.weight"], cls["head.bias"] = torch.zeros(10, 192), torch.zeros(10)
    torch.save({"model": cls}, tmp_path / "classifier.pth")
    out = tmp_path / "probe"
    rc = finetuned_probe(["--pretrained", str(run_dir / "checkpoint-3.pth"), "--data", str(small_builtin),
                          "--finetuned", f"classification={tmp_path / 'classifier.pth'}",
                          "--finetuned", f"detection={tmp_path / 'model_final.pth'}",
                          "--sweep", "0.75", "--epochs", "2", "--num-workers", "0", "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "finetuned_probe_metrics.json").read_text())
    assert [r["label"] for r in metrics["rows"]] == ["pretrained", "classification", "detection"]
    assert [r["format"] for r in metrics["rows"]] == ["ours", "timm", "detectron2"]
    table = (out / "finetuned_probe.md").read_text()
    assert "| detection | detectron2 |" in table and "left at initialisation: cls_token" in table
