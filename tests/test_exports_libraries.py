"""Exports checked by the library that receives them: MMSeg's own MAE and VisionTransformer backbones,
timm strictly (or a refusal), and the converter's checks before it writes anything."""
from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_weight_formats import mmseg_mae_checkpoint  # noqa: E402

from pretrain.models.vit import create_vit
from pretrain.weights import load_encoder, read_card
from pretrain.weights.card import card_path
from tools.convert_checkpoint import main as convert

IMG, PATCH = 32, 8


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A random ViT-Tiny/8 of the suite saved as an exported backbone (no config beside it)."""
    root = tmp_path_factory.mktemp("src")
    torch.manual_seed(0)
    enc = create_vit("tiny", img_size=IMG, patch_size=PATCH)
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.05)
    path = root / "backbone.pth"
    torch.save({"model": enc.state_dict(), "format": "droppos-backbone"}, path)
    return path, enc.eval()


def suite_features(enc: torch.nn.Module, x: torch.Tensor, indices: list[int]) -> list[torch.Tensor]:
    """Patch tokens after blocks ``indices`` (no final norm), NCHW: what MMSeg's backbones return."""
    with torch.no_grad():
        return enc.forward_intermediates(x, indices=indices, norm=False, output_fmt="NCHW", intermediates_only=True)


def mmseg_backbone(kind: str, dst: Path, out_indices: list[int], eps: float | None = None):
    """MMSeg's own backbone built from the card's settings, loaded through its init_cfg Pretrained path."""
    from mmseg.models.backbones import MAE, VisionTransformer

    cfg = dict(read_card(dst)["target_config"])
    assert cfg.pop("type") == kind and cfg["norm_cfg"] == {"type": "LN", "eps": 1e-6}
    if eps is not None:
        cfg["norm_cfg"] = {"type": "LN", "eps": eps}
    cls = {"MAE": MAE, "VisionTransformer": VisionTransformer}[kind]
    model = cls(**cfg, out_indices=out_indices, init_cfg=dict(type="Pretrained", checkpoint=str(dst)))
    model.init_weights()
    model.eval()  # (MMSeg's train() returns None, so eval() does too)
    return model


@pytest.mark.parametrize("to,kind", [("mmseg", "MAE"), ("mmseg-vit", "VisionTransformer")])
def test_mmseg_export_loads_into_mmsegs_own_backbone(backbone, tmp_path, capsys, to, kind):
    """MMSeg loads with strict=False and says nothing: every parameter of its backbone must come from the
    file, and its features must be the suite encoder's."""
    pytest.importorskip("mmseg.models")
    src, enc = backbone
    dst = tmp_path / f"{to}.pth"
    assert convert([str(src), str(dst), "--to", to]) == 0
    out = capsys.readouterr().out
    assert f"load with: model.backbone=dict(type='{kind}'" in out and "norm_cfg=dict(type='LN', eps=1e-06)" in out
    assert "MMSeg settings" in read_card(dst)["target_notes"]
    model = mmseg_backbone(kind, dst, [1, 11])
    saved = torch.load(dst, weights_only=True)["state_dict"]
    own = {k for k in model.state_dict() if not k.endswith("relative_position_index")}  # a buffer MMSeg rebuilds
    assert own == set(saved)  # every parameter, nothing it would drop
    assert len(own) == (4 + 12 * 15 if kind == "MAE" else 3 + 12 * 12)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        theirs = model(x)
    ours = suite_features(enc, x, [1, 11])
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=2e-6)
    # the printed LayerNorm eps matters: MMSeg's default moves the features past that tolerance
    default_eps = mmseg_backbone(kind, dst, [11], eps=1e-5)
    with torch.no_grad():
        off = (default_eps(x)[0] - ours[1]).abs().max()
    assert off > 2e-6 and off > 4 * (theirs[1] - ours[1]).abs().max()
    # the suite reads its own export back to the same encoder
    back = load_encoder(dst)
    assert sorted(back) == sorted(enc.state_dict())


def test_an_mmseg_beit_style_encoder_keeps_its_gammas_and_tables(tmp_path, capsys):
    """MMSeg's own MAE backbone (learned layer scale and relative bias) -> the suite -> MMSeg again, unchanged;
    a target without relative bias says on screen what it will not use."""
    pytest.importorskip("mmseg.models")
    theirs = mmseg_mae_checkpoint(tmp_path / "iter_8000.pth")
    dst = tmp_path / "again.pth"
    assert convert([str(tmp_path / "iter_8000.pth"), str(dst), "--to", "mmseg"]) == 0
    model = mmseg_backbone("MAE", dst, [1])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], theirs(x)[0], rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert convert([str(tmp_path / "iter_8000.pth"), str(tmp_path / "vit.pth"), "--to", "mmseg-vit"]) == 0
    out = capsys.readouterr().out
    assert "warning: MMSeg's VisionTransformer has no place for it: the BEiT-style relative position bias" in out


# ------------------------------------------------------------------ timm: strict, or refused
def test_a_detector_import_written_for_timm_loads_strictly_and_says_what_was_filled(tmp_path, capsys):
    from test_weight_formats import tiny_encoder

    enc = tiny_encoder().state_dict()
    det = {f"backbone.net.{k}": v for k, v in enc.items() if k not in ("cls_token", "norm.weight", "norm.bias")}
    det.update({f"backbone.net.blocks.{i}.attn.rel_pos_h": torch.zeros(15, 64) for i in range(12)})  # untrained
    torch.save({"model": det}, tmp_path / "model_final.pth")
    dst = tmp_path / "timm.pth"
    assert convert([str(tmp_path / "model_final.pth"), str(dst), "--check-timm", "vit_tiny_patch16_224"]) == 0
    out = capsys.readouterr().out
    assert "warning: the source has no cls token" in out and "warning: the source has no final norm" in out
    assert "note: dropped: all-zero relative tables (exact)" in out and "loaded strictly into timm" in out
    assert "img_size=64, patch_size=8" in out  # the sizes timm must be given, or it resamples silently
    timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0, img_size=64, patch_size=8,
                      pretrained_strict=True, pretrained_cfg_overlay=dict(file=str(dst), num_classes=0))
    det["backbone.net.blocks.3.attn.rel_pos_h"] = torch.randn(15, 64)  # learned: timm has no place for it
    torch.save({"model": det}, tmp_path / "model_final.pth")
    assert convert([str(tmp_path / "model_final.pth"), str(tmp_path / "t2.pth")]) == 1
    err = capsys.readouterr().err
    assert "timm's VisionTransformer has no place for the decomposed relative position tables" in err
    assert not (tmp_path / "t2.pth").exists() and not card_path(tmp_path / "t2.pth").exists()


def test_safetensors_with_check_timm_refuses_what_timm_needs_changed_before_writing(tmp_path, capsys):
    """A safetensors file keeps the weights as they are: a source timm needs filled is refused, nothing written."""
    from test_weight_formats import tiny_encoder

    enc = tiny_encoder().state_dict()
    torch.save({"model": {f"backbone.net.{k}": v for k, v in enc.items() if k != "cls_token"}}, tmp_path / "det.pth")
    dst = tmp_path / "det.safetensors"
    assert convert([str(tmp_path / "det.pth"), str(dst), "--to", "safetensors", "--check-timm",
                    "vit_tiny_patch16_224"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "a safetensors file keeps the weights as they are, and timm needs them changed" in err
    assert "export --to timm for timm" in err
    assert not dst.exists() and not card_path(dst).exists() and not list(tmp_path.glob(".det*"))
    assert convert([str(tmp_path / "det.pth"), str(dst), "--to", "safetensors"]) == 0  # without the check: as it is


def test_an_mmseg_beit_import_with_check_timm_is_one_line_and_its_card_has_the_size(tmp_path, capsys):
    """A BEiT encoder has no absolute table: --check-timm gave a KeyError traceback, the card img_size null."""
    pytest.importorskip("mmseg.models")
    from mmseg.models.backbones import BEiT

    torch.manual_seed(0)
    beit = BEiT(img_size=64, patch_size=8, embed_dims=192, num_layers=2, num_heads=3, out_indices=[1], init_values=0.5)
    with torch.no_grad():
        for p in beit.parameters():
            p.normal_(0, 0.05)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in beit.state_dict().items()}}, tmp_path / "beit.pth")
    for to in ("timm", "safetensors"):
        dst = tmp_path / f"out.{to}"
        assert convert([str(tmp_path / "beit.pth"), str(dst), "--to", to, "--check-timm", "vit_tiny_patch16_224"]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "Traceback" not in err and "KeyError" not in err
        assert not dst.exists() and not list(tmp_path.glob(".out*"))
    dst = tmp_path / "beit.safetensors"
    assert convert([str(tmp_path / "beit.pth"), str(dst), "--to", "safetensors"]) == 0
    card = read_card(dst)
    assert card["img_size"] == 64 and card["relative_position"] == ["bias table (BEiT / MMSeg)"]


def test_tokens_and_grids_a_target_cannot_hold_are_refused_or_said(backbone, tmp_path, capsys):
    pytest.importorskip("mmseg.models")
    src, enc = backbone
    state = dict(enc.state_dict())
    state["dist_token"] = torch.randn(1, 1, 192)
    torch.save({"model": state}, tmp_path / "deit.pth")
    assert convert([str(tmp_path / "deit.pth"), str(tmp_path / "a.pth")]) == 1
    assert "a distillation token (DeiT) (dist_token)" in capsys.readouterr().err
    assert convert([str(tmp_path / "deit.pth"), str(tmp_path / "b.pth"), "--to", "mmseg"]) == 0
    assert "warning: MMSeg's MAE backbone has no place for it: a distillation token" in capsys.readouterr().out
    wide = dict(enc.state_dict())
    wide["pos_embed"] = torch.randn(1, 1 + 2 * 6, 192)  # a 2 x 6 grid: not square
    torch.save({"model": wide}, tmp_path / "wide.pth")
    for to in ("timm", "mmseg", "detectron2"):
        assert convert([str(tmp_path / "wide.pth"), str(tmp_path / f"w.{to}"), "--to", to]) == 1
        assert "square" in capsys.readouterr().err
    assert convert([str(tmp_path / "wide.pth"), str(tmp_path / "w.safetensors"), "--to", "safetensors"]) == 0
    assert "note: image size: the position table's 13 rows are not a cls row plus a square grid" in capsys.readouterr().out
    assert read_card(tmp_path / "w.safetensors")["img_size"] is None


# ------------------------------------------------------------------ checks before any write
def test_checks_come_before_any_write(backbone, tmp_path, capsys):
    src, _ = backbone
    dst = tmp_path / "b.pth"
    assert convert([str(src), str(dst), "--to", "mmseg", "--check-timm", "vit_tiny_patch16_224"]) == 2
    assert "--check-timm needs --to timm" in capsys.readouterr().err and not dst.exists()
    assert convert([str(src), str(dst), "--check-timm", "vit_small_patch16_224"]) == 1  # fails in timm
    assert "does not load strictly into timm vit_small_patch16_224" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no file, no card, no staging folder
    assert convert([str(src), str(dst)]) == 0
    before = dst.read_bytes()
    assert convert([str(src), str(dst), "--to", "safetensors"]) == 1
    assert f"{dst} exists; pass --overwrite" in capsys.readouterr().err and dst.read_bytes() == before
    assert convert([str(src), str(dst), "--overwrite"]) == 0
    # never onto the source or its card
    source_card = card_path(src)
    source_card.write_text('{"method": "mae"}')
    for target in (src, source_card):
        assert convert([str(src), str(target), "--overwrite"]) == 1
        assert "would overwrite its source" in capsys.readouterr().err
    assert json.loads(source_card.read_text()) == {"method": "mae"}
    source_card.unlink()
    assert load_encoder(src)["pos_embed"].dtype == torch.float32


@pytest.mark.parametrize("failure", ["folder", "read_only", "file_as_folder"])
def test_write_failures_are_one_line_and_leave_nothing(backbone, tmp_path, capsys, monkeypatch, failure):
    src, _ = backbone
    dst = tmp_path / "out" / "b.pth"
    if failure == "folder":
        dst.mkdir(parents=True)
        expected = f"{dst} is a folder"
    elif failure == "file_as_folder":
        (tmp_path / "out").write_text("a file")
        expected = f"{tmp_path / 'out'} is a file, not a folder"
    else:  # running as root ignores chmod: make the file system say it
        real = os.replace

        def read_only(a, b):
            if Path(b).parent == dst.parent or Path(a).parent.name.startswith(".b.pth.export"):
                raise OSError(errno.EROFS, "Read-only file system")
            return real(a, b)

        monkeypatch.setattr(os, "replace", read_only)
        expected = f"could not write {dst}: Read-only file system"
    for to in ("timm", "safetensors", "mmseg"):
        assert convert([str(src), str(dst), "--to", to]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"error: {err[7:]}" and "\n" not in err and expected in err, err
    if failure == "read_only":
        assert sorted(p.name for p in dst.parent.iterdir()) == []


def test_card_reads_the_method_from_the_weights_without_a_config(tmp_path):
    from test_weight_formats import tiny_encoder

    enc = {f"encoder.{k}": v for k, v in tiny_encoder().state_dict().items()}
    cases = {"droppos": {"mask_pos_token": torch.zeros(1, 1, 192)},
             "mae": {"mask_token": torch.zeros(1, 1, 512), "decoder_pred.weight": torch.zeros(192, 512)},
             "adpe": {"encoder.blocks.0.attn.rpe_k.adv_shift": torch.zeros(2)}}
    for method, extra in cases.items():
        folder = tmp_path / method
        folder.mkdir()
        torch.save({"model": {**enc, **extra}}, folder / "weights.pth")  # no config.yaml, no method entry
        assert convert([str(folder / "weights.pth"), str(folder / "b.pth")]) == 0
        card = read_card(folder / "b.pth")
        assert card["method"] == method and card["method_from"].startswith("keys"), card


def test_the_suites_upernet_load_report_is_clean_for_its_own_exports(backbone, tmp_path):
    """The final norm of an MAE-recipe export is skipped with its reason, not reported as 2 unexpected keys."""
    pytest.importorskip("mmseg.models")
    from segmentation.backbone import DropPosViT

    src, _ = backbone
    for to in ("timm", "droppos-upernet", "mmseg"):
        dst = tmp_path / f"{to}.pth"
        assert convert([str(src), str(dst), "--to", to]) == 0
        model = DropPosViT(arch="tiny", img_size=IMG, patch_size=PATCH, out_indices=(11,), pretrained=str(dst))
        model.init_weights()
        report = model.load_report
        assert report.unexpected == [] and report.mismatched == {}, (to, report.summary())
        assert sorted(report.skipped) == ["norm.bias", "norm.weight"]
        assert "unexpected 0" in report.summary() and "no final norm" in report.summary()
