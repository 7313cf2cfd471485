"""Checkpoints in and out: reference formats key for key, safe loading, export to timm."""
import sys
from pathlib import Path

import pytest
import timm
import torch

from pretrain.weights import (
    CheckpointError,
    atomic_torch_save,
    detect_format,
    load_checkpoint_file,
    load_encoder,
    load_method_weights,
    model_state,
)
from pretrain.weights.export import export_backbone
from pretrain.models import DropPos, MAE, create_vit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_files import reference_state, save_reference_style  # noqa: E402


@pytest.mark.parametrize("name,builder", [
    ("droppos:DropPos_mae_vit_base_patch16_dec512d2b", lambda: DropPos(create_vit("base"))),
    ("droppos:DropPos_mae_vit_large_patch16_dec512d2b", lambda: DropPos(create_vit("large"))),
    ("mae:mae_vit_base_patch16_dec512d8b", lambda: MAE(create_vit("base"))),
])
def test_reference_checkpoints_load_strictly(tmp_path, name, builder):
    state = reference_state(name)
    path = tmp_path / "ref.pth"
    save_reference_style(state, path)
    model = builder()
    with pytest.warns(UserWarning, match="argparse.Namespace"):
        load_method_weights(model, path, strict=True)
    own = model.state_dict()
    key = "encoder.blocks.3.attn.qkv.weight"
    torch.testing.assert_close(own[key], state["blocks.3.attn.qkv.weight"])
    torch.testing.assert_close(own["decoder_pred.weight"], state["decoder_pred.weight"])


def test_detect_format():
    assert detect_format(reference_state("droppos:DropPos_mae_vit_base_patch16_dec512d2b")) == "droppos"
    assert detect_format(reference_state("mae:mae_vit_base_patch16_dec512d8b")) == "mae"
    assert detect_format(reference_state("adpe_ape_adv1:adpe_vit_base_patch16_dec512d8b")) == "adpe"
    assert detect_format(DropPos(create_vit("tiny", img_size=32, patch_size=8, depth=1)).state_dict()) == "ours"


def test_exported_backbone_loads_into_timm_strictly(tmp_path):
    state = reference_state("droppos:DropPos_mae_vit_base_patch16_dec512d2b")
    src = tmp_path / "ref.pth"
    save_reference_style(state, src)
    with pytest.warns(UserWarning):
        enc = export_backbone(src, tmp_path / "backbone.pth")
    assert "mask_pos_token" not in enc and not any(k.startswith("decoder") for k in enc)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    saved = torch.load(tmp_path / "backbone.pth", weights_only=True)["model"]
    vit.load_state_dict(saved, strict=True)


def test_our_method_checkpoint_exports_to_timm(tmp_path):
    model = DropPos(create_vit("tiny", img_size=32, patch_size=8))
    atomic_torch_save({"model": model.state_dict()}, tmp_path / "ours.pth")
    enc = load_encoder(tmp_path / "ours.pth")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8)
    vit.load_state_dict(enc, strict=True)


def test_wrong_architecture_lists_mismatched_keys(tmp_path):
    small = DropPos(create_vit("small", img_size=32, patch_size=8, depth=2), decoder_dim=64, decoder_heads=4)
    path = tmp_path / "small.pth"
    atomic_torch_save({"model": small.state_dict()}, path)
    tiny = DropPos(create_vit("tiny", img_size=32, patch_size=8, depth=2), decoder_dim=64, decoder_heads=4)
    with pytest.raises(CheckpointError) as err:
        load_method_weights(tiny, path)
    msg = str(err.value)
    assert str(path) in msg and "encoder.cls_token" in msg and "(1, 1, 384)" in msg


def test_corrupt_and_missing_files_are_named(tmp_path):
    good = tmp_path / "good.pth"
    atomic_torch_save({"model": {"patch_embed.proj.weight": torch.zeros(1)}}, good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_checkpoint_file(bad)
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_checkpoint_file(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="no ViT encoder weights"):
        load_encoder(good)


def test_model_state_unwraps_common_layouts():
    t = {"a": torch.zeros(1)}
    assert model_state({"state_dict": {"module.a": torch.zeros(1)}}) .keys() == t.keys()
    assert model_state(t).keys() == t.keys()
