"""One rule for what a weights file is: its architecture (pretrain.weights.shape), its method
(pretrain.weights.card.resolve_method) and the MMSeg names (one pair table, both directions), read
alike by the identity of a file, its card, the export targets and the analyses' backbone loader."""
from __future__ import annotations

import pytest
import torch

from analysis.probes.backbone import _read_method, infer_arch
from pretrain.models.vit import VIT_SIZES, create_vit
from pretrain.weights import CheckpointError, load_checkpoint_file, model_state, read_card
from pretrain.weights.card import build_card, resolve_method
from pretrain.weights.export import export_weights
from pretrain.weights.foreign import mmseg_mae_to_timm
from pretrain.weights.identify import identify_checkpoint
from pretrain.weights.shape import attention_heads, encoder_shape, standard_heads, standard_size
from pretrain.weights.targets import encoder_arch, mmseg_name, plan_target


def encoder(img: int = 32, patch: int = 8, **kw) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return create_vit("tiny", img_size=img, patch_size=patch, depth=2, **kw).state_dict()


def test_standard_tables_are_vit_sizes():
    for name, a in VIT_SIZES.items():
        assert standard_size(a["embed_dim"], a["depth"]) == name and standard_heads(a["embed_dim"]) == a["num_heads"]
    assert standard_size(192, 2) is None and standard_heads(96) is None


def test_a_cls_row_and_a_square_grid_agree_everywhere(tmp_path):
    enc = encoder()
    path = tmp_path / "backbone.pth"
    torch.save({"model": enc, "format": "droppos-backbone"}, path)
    ident = identify_checkpoint(path)
    card = build_card(path, load_checkpoint_file(path), enc, "backbone", "timm")
    arch = encoder_arch(enc)
    assert ident.img_size == card["img_size"] == infer_arch(enc)["img_size"] == 32
    assert arch.grid == (4, 4) and arch.cls_row is True and encoder_shape(enc).img_size == 32
    assert (ident.embed_dim, ident.depth, ident.patch_size) == (card["embed_dim"], card["depth"], card["patch_size"])


def test_a_square_table_without_cls_row_has_one_image_size_and_targets_needing_the_row_refuse(tmp_path, capsys):
    """16 rows, patch 4: a 4 x 4 grid with no cls row (timm's no_embed_class). The identity said 16 px, the
    card None: both say 16 now; the targets that copy a cls row refuse it, safetensors keeps it."""
    enc = encoder(img=16, patch=4)
    enc["pos_embed"] = enc["pos_embed"][:, 1:].clone()
    assert enc["pos_embed"].shape[1] == 16
    shape = encoder_shape(enc)
    assert (shape.grid, shape.cls_row, shape.img_size) == ((4, 4), False, 16)
    src = tmp_path / "nocls.pth"
    torch.save({"model": enc}, src)
    assert identify_checkpoint(src).img_size == 16
    assert build_card(src, load_checkpoint_file(src), enc, "backbone", "safetensors")["img_size"] == 16
    for to in ("timm", "detectron2", "mmseg", "mmseg-vit", "droppos-upernet"):
        with pytest.raises(CheckpointError, match="cls row"):
            plan_target(enc, to, str(src))
    done = export_weights(src, tmp_path / "nocls.safetensors", "safetensors")
    assert done.card["img_size"] == 16 and "image size" not in done.card.get("target_notes", {})
    assert read_card(tmp_path / "nocls.safetensors")["img_size"] == 16
    with pytest.raises(CheckpointError, match="without the cls row"):
        infer_arch(enc)


def test_a_table_of_no_square_grid_gives_no_size_anywhere(tmp_path):
    enc = encoder()
    enc["pos_embed"] = torch.randn(1, 13, 192)  # neither 1 + s*s nor s*s
    assert encoder_shape(enc).grid is None and encoder_arch(enc).grid is None
    src = tmp_path / "wide.pth"
    torch.save({"model": enc}, src)
    assert build_card(src, load_checkpoint_file(src), enc, "backbone", "safetensors")["img_size"] is None
    with pytest.raises(CheckpointError, match="13 rows"):
        identify_checkpoint(src)
    with pytest.raises(CheckpointError, match="not a square grid"):
        infer_arch(enc)


def test_heads_from_the_bias_table_the_source_the_width_or_said_to_be_guessed(tmp_path):
    enc = encoder(embed_dim=96, num_heads=3)  # no standard width
    assert attention_heads(enc) == (1, "guessed: width 96 / 64 channels a head (the source does not say)")
    assert attention_heads(enc, 3)[0] == 3 and attention_heads(encoder())[0] == 3
    beit = dict(enc, **{"blocks.0.attn.relative_position_bias_table": torch.zeros(52, 4)})
    assert attention_heads(beit, 3) == (4, "the relative bias table")
    plain = tmp_path / "plain"
    plain.mkdir()
    torch.save({"model": enc}, plain / "w.pth")
    done = export_weights(plain / "w.pth", plain / "w.mmseg.pth", "mmseg")
    assert done.card["target_config"]["num_heads"] == 1 and done.card["num_heads_from"].startswith("guessed")
    assert "num_heads=1 guessed" in done.card["target_notes"]["num_heads"]
    told = tmp_path / "told"
    told.mkdir()
    torch.save({"model": enc, "arch": {"num_heads": 3}}, told / "w.pth")
    done = export_weights(told / "w.pth", told / "w.mmseg.pth", "mmseg")
    assert done.card["target_config"]["num_heads"] == 3 and done.card["num_heads"] == 3
    assert "num_heads" not in done.card.get("target_notes", {})
    again = export_weights(told / "w.mmseg.pth", told / "again.pth", "mmseg-vit")  # the card carries the heads
    assert again.card["target_config"]["num_heads"] == 3
    timm_file = export_weights(told / "w.pth", told / "w.timm.pth", "timm")  # no standard size: heads named
    assert "num_heads=3" in timm_file.load_with and "num_heads" not in timm_file.card.get("target_notes", {})


def test_the_method_and_where_it_was_read(tmp_path):
    enc = {f"encoder.{k}": v for k, v in encoder().items()}
    droppos = {**enc, "mask_pos_token": torch.zeros(1, 1, 192)}
    assert resolve_method({"method": "mae"}, "ours", droppos) == ("mae", "checkpoint")
    assert resolve_method({"card": {"method": "adpe"}}, "ours", droppos) == ("adpe", "card")
    assert resolve_method({"config": {"method": "mae"}}, "ours", droppos) == ("mae", "config")
    assert resolve_method({}, "ours", droppos, metrics={"method": "adpe"}) == ("adpe", "metrics")
    assert resolve_method({}, "droppos", {}) == ("droppos", "layout")  # the layout, not 'config'
    assert resolve_method({}, "ours", droppos) == ("droppos", "keys")
    assert resolve_method({"method": "unknown", "card": {"method": "unknown"}}, "backbone", enc) == (None, None)
    # the card, the identity and the analyses' loader agree, and the card says where
    src = tmp_path / "droppos_released.pth"
    state = {**encoder(), "mask_pos_token": droppos["mask_pos_token"]}  # the released DropPos layout
    torch.save({"model": state}, src)
    ckpt = load_checkpoint_file(src)
    flat = model_state(ckpt, src)
    card = build_card(src, ckpt, encoder(), "droppos", "timm", flat)
    assert (card["method"], card["method_from"]) == ("droppos", "layout")
    assert identify_checkpoint(src).method == _read_method(ckpt, flat)[0] == "droppos"
    assert _read_method({}, encoder()) == ("unknown", "backbone")


def test_mmseg_names_both_ways_from_one_table():
    enc = encoder()
    enc.update({f"blocks.{i}.ls{j}.gamma": torch.ones(192) * 0.5 for i in range(2) for j in (1, 2)})
    for vit in (False, True):
        named = {mmseg_name(k, vit=vit): v for k, v in enc.items()}
        assert len(named) == len(enc)
        back = mmseg_mae_to_timm(named)
        assert set(back) == set(enc) and all(torch.equal(back[k], enc[k]) for k in enc)
    assert mmseg_name("blocks.0.attn.proj.weight", vit=True) == "layers.0.attn.attn.out_proj.weight"
    assert mmseg_name("blocks.0.mlp.fc1.bias") == "layers.0.ffn.layers.0.0.bias"
    assert mmseg_name("norm.weight") == "ln1.weight" and mmseg_name("patch_embed.proj.bias") == "patch_embed.projection.bias"
