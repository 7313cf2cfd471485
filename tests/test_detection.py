"""COCO detection transfer: ViTDet backbone, weights, layer decay, configs, train + eval."""
import argparse
import json
import math
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("detectron2", reason="run tools/install_detectron2.sh")

import detection  # noqa: E402,F401  (shims before Detectron2 imports)
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.modeling.backbone.fpn import LastLevelMaxPool  # noqa: E402

from detection.checkpointer import ViTDetCheckpointer, encoder_to_vitdet  # noqa: E402
from detection.feature_pyramid import LayerNorm2d, SimpleFeaturePyramid  # noqa: E402
from detection.layer_decay import param_hyperparameters, vitdet_lr_factor, vitdet_param_groups  # noqa: E402
from detection.train_net import apply_overrides, parse_override_value  # noqa: E402
from detection.windowed_vit import ViTDetEncoder, create_vitdet_encoder  # noqa: E402
from pretrain.models.vit import create_vit  # noqa: E402
from timm.models.vision_transformer_sam import (  # noqa: E402
    get_decomposed_rel_pos_bias,
    window_partition,
    window_unpartition,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "detection" / "configs"
REFERENCE_KEYS = REPO.parent / "shared" / "reference" / "reference_keys.json"
if not REFERENCE_KEYS.is_file():
    REFERENCE_KEYS = Path("/work/shared/reference/reference_keys.json")


@lru_cache(maxsize=None)
def load_config(name: str):
    return LazyConfig.load(str(CONFIGS / name))


def small_encoder(**kw) -> ViTDetEncoder:
    args = dict(img_size=128, pretrain_img_size=64, patch_size=16, embed_dim=64, depth=4, num_heads=2,
                window_size=3, window_block_indexes=(0, 2))
    args.update(kw)
    return ViTDetEncoder(**args)


# ----------------------------------------------------------------- shims
def test_shims_cover_missing_pieces():
    from PIL import Image

    import detectron2._C as C

    assert Image.LINEAR == Image.BILINEAR
    from detectron2.evaluation import COCOEvaluator  # imports the fast evaluator module

    assert COCOEvaluator is not None
    if getattr(C, "DROPPOS_SHIM", False):
        with pytest.raises(AttributeError, match="not available"):
            C.deform_conv_forward  # noqa: B018


# -------------------------------------------------------------- backbone
def test_backbone_strides_channels_and_square_pad():
    backbone = SimpleFeaturePyramid(small_encoder(), out_channels=256, top_block=LastLevelMaxPool(), square_pad=128)
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "p2": (256, 4), "p3": (256, 8), "p4": (256, 16), "p5": (256, 32), "p6": (256, 64)}
    out = backbone(torch.randn(2, 3, 96, 112))  # padded to 128 x 128 inside
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 256, 32, 32), "p3": (2, 256, 16, 16), "p4": (2, 256, 8, 8), "p5": (2, 256, 4, 4), "p6": (2, 256, 2, 2)}
    # ViTDet's module names (so Detectron2 ViTDet checkpoints share our keys).
    names = set(backbone.state_dict())
    assert {"simfp_2.0.weight", "simfp_2.1.weight", "simfp_2.3.weight", "simfp_2.4.norm.weight",
            "simfp_3.0.weight", "simfp_4.0.norm.weight", "simfp_5.1.weight", "net.pos_embed"} <= names


def test_patch8_pyramid_keeps_strides():
    enc = small_encoder(patch_size=8, window_size=4)
    backbone = SimpleFeaturePyramid(enc, 32, scale_factors=(2.0, 1.0, 0.5, 0.25), top_block=LastLevelMaxPool())
    out = backbone(torch.randn(1, 3, 64, 64))
    assert [v.shape[-1] for v in out.values()] == [16, 8, 4, 2, 1]
    assert [s.stride for s in backbone.output_shape().values()] == [4, 8, 16, 32, 64]


@pytest.mark.parametrize("size,depth,global_blocks", [("base", 12, [2, 5, 8, 11]), ("large", 24, [5, 11, 17, 23])])
def test_window_and_global_blocks(size, depth, global_blocks):
    with torch.device("meta"):
        enc = create_vitdet_encoder(size, img_size=1024, drop_path_rate=0.1)
    assert len(enc.blocks) == depth
    assert [i for i, b in enumerate(enc.blocks) if b.window_size == 0] == global_blocks
    head_dim = enc.embed_dim // enc.blocks[0].attn.num_heads
    for i, blk in enumerate(enc.blocks):
        rows = 2 * 64 - 1 if i in global_blocks else 2 * 14 - 1  # 64 x 64 grid, 14 x 14 windows
        assert blk.window_size == (0 if i in global_blocks else 14)
        assert tuple(blk.attn.rel_pos_h.shape) == (rows, head_dim) == tuple(blk.attn.rel_pos_w.shape)
    assert enc.pos_embed.shape[1] == 197 and enc.cls_token is None
    assert isinstance(enc.norm, torch.nn.Identity)  # no final norm in ViTDet


def test_rel_pos_tables_start_at_zero_and_drop_path_increases():
    enc = small_encoder(drop_path_rate=0.3)
    assert all(not b.attn.rel_pos_h.any() and not b.attn.rel_pos_w.any() for b in enc.blocks)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in enc.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)


def test_window_partition_roundtrip_with_padding():
    """timm's helpers as the blocks call them: unpartition takes (H, W) then the padded size."""
    x = torch.randn(2, 7, 10, 5)
    windows, padded = window_partition(x, 4)
    assert padded == (8, 12) and windows.shape == (2 * 2 * 3, 4, 4, 5)
    assert torch.equal(window_unpartition(windows, 4, (7, 10), padded), x)


def test_decomposed_bias_matches_brute_force():
    torch.manual_seed(0)
    h, w, c = 3, 4, 5
    q = torch.randn(2, h * w, c)  # batch and heads folded, as the attention passes it
    rel_h, rel_w = torch.randn(2 * h - 1, c), torch.randn(2 * w - 1, c)
    bias = get_decomposed_rel_pos_bias(q, rel_h, rel_w, (h, w), (h, w))
    ref = torch.zeros(2, h * w, h * w)
    for i in range(h):
        for j in range(w):
            for m in range(h):
                for n in range(w):
                    qv = q[:, i * w + j]
                    ref[:, i * w + j, m * w + n] = qv @ rel_h[i - m + h - 1] + qv @ rel_w[j - n + w - 1]
    torch.testing.assert_close(bias, ref)


def rel_table(table: torch.Tensor, side: int) -> torch.Tensor:
    """A relative table with one row per offset of ``side`` tokens (linear resize if needed)."""
    if table.shape[0] != 2 * side - 1:
        table = F.interpolate(table.t()[None], size=2 * side - 1, mode="linear")[0].t()
    return table


def reference_vitdet(enc: ViTDetEncoder, x: torch.Tensor) -> torch.Tensor:
    """ViTDet's encoder written out plainly: each window (or the whole map) gathered by slicing
    a zero-padded map, per-pair offsets indexing the relative tables (resized linearly when
    the attended side differs from theirs), softmax attention per head."""
    x = enc.patch_embed(x)
    B, H, W, C = x.shape
    x = x + enc.pos_embed_patches((H, W)).reshape(1, H, W, C)
    for blk in enc.blocks:
        attn = blk.attn
        heads, hd = attn.num_heads, C // attn.num_heads
        side_h, side_w = (blk.window_size, blk.window_size) if blk.window_size else (H, W)
        Hp, Wp = -(-H // side_h) * side_h, -(-W // side_w) * side_w
        y = x.new_zeros(B, Hp, Wp, C)
        y[:, :H, :W] = blk.norm1(x)
        rows = torch.arange(side_h).repeat_interleave(side_w)
        cols = torch.arange(side_w).repeat(side_h)
        r_h = rel_table(attn.rel_pos_h, side_h)[rows[:, None] - rows[None, :] + side_h - 1]  # [N, N, hd]
        r_w = rel_table(attn.rel_pos_w, side_w)[cols[:, None] - cols[None, :] + side_w - 1]
        out = torch.zeros_like(y)
        for r0 in range(0, Hp, side_h):
            for c0 in range(0, Wp, side_w):
                tokens = y[:, r0:r0 + side_h, c0:c0 + side_w].reshape(B, -1, C)
                q, k, v = attn.qkv(tokens).view(B, -1, 3, heads, hd).unbind(2)  # [B, N, heads, hd]
                bias = torch.einsum("bnhd,nmd->bhnm", q, r_h) + torch.einsum("bnhd,nmd->bhnm", q, r_w)
                logits = torch.einsum("bnhd,bmhd->bhnm", q, k) * hd ** -0.5 + bias
                mixed = torch.einsum("bhnm,bmhd->bnhd", logits.softmax(-1), v).reshape(B, -1, C)
                out[:, r0:r0 + side_h, c0:c0 + side_w] = attn.proj(mixed).view(B, side_h, side_w, C)
        x = x + out[:, :H, :W]
        x = x + blk.mlp(blk.norm2(x))
    return x.permute(0, 3, 1, 2)


@pytest.mark.parametrize("fused", [True, False])
def test_encoder_matches_plain_reference(fused):
    """Windows with padding (5 x 6 map in 3 x 3 windows), global blocks on tables sized for
    another grid (interpolated) and on their own grid: the same numbers as the plain version."""
    torch.manual_seed(0)
    enc = small_encoder(img_size=96).eval()  # global tables for 6 x 6
    for blk in enc.blocks:
        torch.nn.init.normal_(blk.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(blk.attn.rel_pos_w, std=0.5)
        blk.attn.fused_attn = fused
    with torch.no_grad():
        for size in ((80, 96), (96, 96)):
            x = torch.randn(2, 3, *size)
            torch.testing.assert_close(enc(x), reference_vitdet(enc, x), atol=1e-5, rtol=1e-5)


def test_fused_attention_matches_explicit_and_tables_interpolate():
    torch.manual_seed(0)
    enc = small_encoder(img_size=64).eval()  # global tables sized for 4 x 4, run on 6 x 5
    for blk in enc.blocks:
        torch.nn.init.normal_(blk.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(blk.attn.rel_pos_w, std=0.5)
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        fused = enc(x)
        for blk in enc.blocks:
            blk.attn.fused_attn = False
        explicit = enc(x)
    assert fused.shape == (2, 64, 6, 5)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-4)


def test_backward_reaches_every_parameter():
    backbone = SimpleFeaturePyramid(small_encoder(drop_path_rate=0.1), 32, top_block=LastLevelMaxPool())
    sum(v.float().pow(2).mean() for v in backbone(torch.randn(1, 3, 64, 64)).values()).backward()
    missing = [n for n, p in backbone.named_parameters() if p.grad is None]
    assert missing == []


# --------------------------------------------------------------- weights
def reference_style_checkpoint(path: Path, layout: str = "reference") -> dict:
    """A pretraining file for ViT-Tiny/8 with decoder keys and mask_pos_token: the reference
    DropPos layout (flat timm keys, `module.` prefixes, a pickled argparse.Namespace) or this
    suite's (encoder under `encoder.`)."""
    torch.manual_seed(1)
    enc = create_vit("tiny", img_size=64, patch_size=8)
    for p in enc.parameters():
        torch.nn.init.normal_(p, std=0.02)
    state = dict(enc.state_dict())
    state["mask_pos_token"] = torch.zeros(1, 1, 192)
    state["decoder_embed.weight"] = torch.randn(512, 192)
    state["decoder_blocks.0.attn.qkv.weight"] = torch.randn(1536, 512)
    state["decoder_norm.weight"] = torch.ones(512)
    state["decoder_pred.weight"] = torch.randn(64, 512)
    if layout == "reference":
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3,
                    "args": argparse.Namespace(model="droppos_vit_tiny")}, path)
    else:
        own = {(k if k.startswith("decoder") or k == "mask_pos_token" else f"encoder.{k}"): v for k, v in state.items()}
        torch.save({"model": own, "train_state": {"step": 3}}, path)
    return state


@lru_cache(maxsize=None)
def tiny_detector_config():
    return load_config("mask_rcnn_vitdet_tiny_builtin.py")


@pytest.mark.parametrize("layout", ["reference", "ours"])
def test_pretrain_checkpoint_fills_every_vit_weight(tmp_path, layout):
    state = reference_style_checkpoint(tmp_path / "droppos_tiny.pth", layout)
    model = instantiate(tiny_detector_config().model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    checkpointer = ViTDetCheckpointer(model)
    if layout == "reference":
        with pytest.warns(UserWarning, match="Namespace"):
            checkpointer.load(str(tmp_path / "droppos_tiny.pth"))
    else:
        checkpointer.load(str(tmp_path / "droppos_tiny.pth"))
    report = checkpointer.load_report
    after = model.state_dict()
    vit_keys = [k for k in after if k.startswith("backbone.net.") and ".rel_pos_" not in k]
    assert len(report["loaded"]) == len(vit_keys) == 2 + 1 + 12 * 12  # patch embed, pos embed, 12 blocks
    for key in vit_keys:
        torch.testing.assert_close(after[key], state[key[len("backbone.net."):]])
    assert sorted(report["unused"]) == ["cls_token", "norm.bias", "norm.weight"]
    new = report["new"]
    assert all(".rel_pos_" in k or not k.startswith("backbone.net.") for k in new)
    assert sum(".rel_pos_" in k for k in new) == 24
    assert {k.split(".")[0] for k in new} == {"backbone", "proposal_generator", "roi_heads"}
    assert all(torch.equal(after[k], before[k]) for k in new)  # heads untouched


def test_reference_key_names_map_onto_vitdet_b_and_l():
    if not REFERENCE_KEYS.is_file():
        pytest.skip("shared/reference/reference_keys.json not found")
    models = json.loads(REFERENCE_KEYS.read_text())["models"]
    for ref_name, size in [("droppos:DropPos_mae_vit_base_patch16_dec512d2b", "base"),
                           ("droppos:DropPos_mae_vit_large_patch16_dec512d2b", "large"),
                           ("mae:mae_vit_base_patch16_dec512d8b", "base")]:
        with torch.device("meta"):
            enc = create_vitdet_encoder(size)
        own = {f"backbone.net.{k}": v for k, v in enc.state_dict().items()}
        fake = {k: torch.empty(shape, device="meta") for k, shape in models[ref_name]}
        from pretrain.weights import encoder_state_dict

        converted, report = encoder_to_vitdet(encoder_state_dict(fake), own)
        assert set(converted) == {k for k in own if ".rel_pos_" not in k}, ref_name
        assert all(converted[k].shape == own[k].shape for k in converted)
        assert report.unused == ["cls_token", "norm.bias", "norm.weight"]


def test_pos_embed_of_other_grid_is_resized():
    target = {"backbone.net.pos_embed": torch.zeros(1, 1 + 14 * 14, 8)}
    converted, report = encoder_to_vitdet({"pos_embed": torch.randn(1, 1 + 8 * 8, 8)}, target)
    assert converted["backbone.net.pos_embed"].shape == (1, 197, 8)


# ----------------------------------------------------------- layer decay
def test_layer_decay_follows_vitdet_rule():
    model = instantiate(tiny_detector_config().model)
    groups = vitdet_param_groups(model, base_lr=1e-4, lr_decay_rate=0.7, num_layers=12)
    hp = param_hyperparameters(groups, model)
    assert len(hp) == sum(1 for p in model.parameters() if p.requires_grad)
    lr = {k: v["lr"] / 1e-4 for k, v in hp.items()}
    assert lr["backbone.net.pos_embed"] == pytest.approx(0.7 ** 13)
    assert lr["backbone.net.patch_embed.proj.weight"] == pytest.approx(0.7 ** 13)
    for i in range(12):
        for suffix in ("attn.qkv.weight", "attn.rel_pos_h", "norm1.weight", "mlp.fc2.bias"):
            assert lr[f"backbone.net.blocks.{i}.{suffix}"] == pytest.approx(0.7 ** (12 - i))
    for key in ("backbone.simfp_2.0.weight", "proposal_generator.rpn_head.conv.conv0.weight",
                "roi_heads.box_predictor.cls_score.weight", "roi_heads.mask_head.mask_fcn1.norm.weight"):
        assert lr[key] == pytest.approx(1.0)
    # weight decay 0 on nn.LayerNorm parameters and pos_embed; the optimizer's 0.1 elsewhere,
    # biases, relative tables and the pyramid/head channel LayerNorms included (as in ViTDet).
    wd = {k: v.get("weight_decay") for k, v in hp.items()}
    assert wd["backbone.net.pos_embed"] == 0.0
    assert wd["backbone.net.blocks.3.norm1.weight"] == 0.0 and wd["backbone.net.blocks.3.norm2.bias"] == 0.0
    for key in ("backbone.net.blocks.3.attn.qkv.bias", "backbone.net.blocks.3.attn.rel_pos_w",
                "backbone.simfp_3.0.norm.weight", "roi_heads.mask_head.mask_fcn1.norm.weight"):
        assert wd[key] is None
    assert vitdet_lr_factor("backbone.net.blocks.23.mlp.fc1.weight", 0.8, 24) == pytest.approx(0.8)


def test_optimizer_from_config_has_decayed_groups():
    cfg = tiny_detector_config()
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    cfg.optimizer.params.model = None
    assert isinstance(optim, torch.optim.AdamW)
    lrs = sorted({g["lr"] for g in optim.param_groups})
    decay = cfg.optimizer.params.lr_decay_rate  # the tiny recipe's own (0.8)
    assert lrs[-1] == pytest.approx(cfg.optimizer.lr) and lrs[0] == pytest.approx(cfg.optimizer.lr * decay ** 13)
    assert {g["weight_decay"] for g in optim.param_groups} == {0.0, 0.1}


# --------------------------------------------------------------- configs
def test_vitdet_b_config_numbers_and_instantiation():
    cfg = load_config("mask_rcnn_vitdet_b_100ep.py")
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads, net.patch_size) == (768, 12, 12, 16)
    assert (net.img_size, net.window_size, net.drop_path_rate, net.use_rel_pos) == (1024, 14, 0.1, True)
    assert list(net.window_block_indexes) == [0, 1, 3, 4, 6, 7, 9, 10]
    bb = cfg.model.backbone
    assert (bb.out_channels, tuple(bb.scale_factors), bb.norm, bb.square_pad) == (256, (4.0, 2.0, 1.0, 0.5), "LN", 1024)
    heads = cfg.model.roi_heads
    assert list(heads.box_head.conv_dims) == [256] * 4 and list(heads.box_head.fc_dims) == [1024]
    assert heads.box_head.conv_norm is LayerNorm2d and heads.mask_head.conv_norm is LayerNorm2d
    assert list(cfg.model.proposal_generator.head.conv_dims) == [-1, -1]
    assert cfg.model.input_format == "RGB"
    # data: LSJ 1024, scale 0.1-2.0, batch 64
    train = cfg.dataloader.train
    aug = {a._target_.__name__: a for a in train.mapper.augmentations}
    assert list(aug) == ["RandomFlip", "ResizeScale", "FixedSizeCrop"]
    assert (aug["ResizeScale"].min_scale, aug["ResizeScale"].max_scale) == (0.1, 2.0)
    assert (aug["ResizeScale"].target_height, aug["ResizeScale"].target_width) == (1024, 1024)
    assert tuple(aug["FixedSizeCrop"].crop_size) == (1024, 1024)
    assert train.total_batch_size == 64 and train.mapper.recompute_boxes
    assert cfg.dataloader.evaluator.use_fast_impl is False
    # optimizer and schedule
    opt = cfg.optimizer
    assert opt._target_ is torch.optim.AdamW
    assert (opt.lr, tuple(opt.betas), opt.weight_decay) == (1e-4, (0.9, 0.999), 0.1)
    assert (opt.params.lr_decay_rate, opt.params.num_layers, opt.params.weight_decay_norm) == (0.7, 12, 0.0)
    assert dict(opt.params.overrides) == {"pos_embed": {"weight_decay": 0.0}}
    assert cfg.train.max_iter == 184375 and cfg.train.amp.enabled
    sched = cfg.lr_multiplier
    assert list(sched.scheduler.milestones) == [163889, 177546] and list(sched.scheduler["values"]) == [1.0, 0.1, 0.01]
    assert sched.warmup_length * cfg.train.max_iter == pytest.approx(250) and sched.warmup_factor == 0.001
    mult = instantiate(sched)
    assert mult(0.0) == pytest.approx(0.001)
    assert mult(250 / 184375) == pytest.approx(1.0)
    assert mult(170000 / 184375) == pytest.approx(0.1) and mult(180000 / 184375) == pytest.approx(0.01)
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(111e6, rel=0.01)  # ViTDet: 111M


def test_vitdet_l_config_edits_the_base():
    cfg = load_config("mask_rcnn_vitdet_l_100ep.py")
    net = cfg.model.backbone.net
    assert (net.embed_dim, net.depth, net.num_heads, net.drop_path_rate) == (1024, 24, 16, 0.4)
    assert [i for i in range(24) if i not in net.window_block_indexes] == [5, 11, 17, 23]
    assert (cfg.optimizer.params.lr_decay_rate, cfg.optimizer.params.num_layers) == (0.8, 24)
    assert cfg.train.max_iter == 184375 and cfg.dataloader.train.total_batch_size == 64
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(331e6, rel=0.01)  # ViTDet: 331M


def test_overrides_parse_values():
    assert parse_override_value("1e-4") == 1e-4 and parse_override_value("[0, 1]") == [0, 1]
    assert parse_override_value("true") is True and parse_override_value("null") is None
    assert parse_override_value("/a/b.pth") == "/a/b.pth"
    cfg = LazyConfig.load(str(CONFIGS / "mask_rcnn_vitdet_tiny_builtin.py"))
    apply_overrides(cfg, ["train.max_iter=7", "model.backbone.net.depth=3", "optimizer.lr=3e-4"])
    assert (cfg.train.max_iter, cfg.model.backbone.net.depth, cfg.optimizer.lr) == (7, 3, 3e-4)
    with pytest.raises(KeyError):
        apply_overrides(cfg, ["train.max_iter.x=1"])


# ---------------------------------------------------------- train + eval
@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory) -> Path:
    from pretrain.data.synthetic import make_builtin_dataset

    root = tmp_path_factory.mktemp("builtin_coco")
    make_builtin_dataset(root, seed=0, formats=("coco",), coco_train=6, coco_val=3, coco_size=(64, 80))
    return root


def run_train_net(*argv: str) -> dict:
    from detectron2.engine import default_argument_parser

    from detection.train_net import main

    return main(default_argument_parser().parse_args(list(argv)))


def test_train_resume_then_evaluate(tiny_coco, tmp_path):
    """2 iterations, resume to 3 (optimizer + iteration restored from a weights-only load),
    then --eval-only on the final checkpoint: every run writes box and mask AP."""
    out = tmp_path / "run"
    tiny = [
        f"dataloader.train.dataset.names.root={tiny_coco}",
        f"dataloader.test.dataset.names.root={tiny_coco}",
        f"dataloader.evaluator.dataset_name.root={tiny_coco}",
        "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
        "dataloader.train.total_batch_size=2",
        "model.backbone.net.depth=3", "model.backbone.net.window_block_indexes=[0,1]",
        "model.backbone.net.img_size=64", "model.backbone.square_pad=64", "optimizer.params.num_layers=3",
        "train.log_period=1", f"train.output_dir={out}",
    ]
    config = str(CONFIGS / "mask_rcnn_vitdet_tiny_builtin.py")
    first = run_train_net("--config-file", config, *tiny, "train.max_iter=2")
    assert first["iterations"] == 2
    record = run_train_net("--config-file", config, "--resume", *tiny, "train.max_iter=3")
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 2" in log
    saved = json.loads((out / "detection_metrics.json").read_text())
    assert saved["task"] == "coco_detection" and saved["iterations"] == 3
    for task in ("bbox", "segm"):
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            assert f"{task}_{key}" in saved
        assert task in saved["results"]
    assert (out / "config.yaml").is_file() and (out / "model_final.pth").is_file()
    assert (out / "metrics.json").is_file()  # Detectron2's own progress log
    ckpt = torch.load(out / "model_final.pth", weights_only=True)  # plain tensors and numbers only
    assert ckpt["iteration"] == 2 and isinstance(ckpt["trainer"]["optimizer"]["param_groups"][0]["betas"], tuple)
    again = run_train_net("--config-file", config, "--eval-only", *tiny[:-1], f"train.output_dir={tmp_path / 'eval'}",
                          f"train.init_checkpoint={out / 'model_final.pth'}")
    assert again["iterations"] == 3
    for key in ("bbox_AP", "segm_AP"):
        a, b = record[key], again[key]
        assert (a is None and b is None) or math.isclose(a, b, abs_tol=1e-6)


def test_install_script_is_idempotent():
    env = dict(os.environ, PY=sys.executable)
    res = subprocess.run(["bash", str(REPO / "tools" / "install_detectron2.sh")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "already importable" in res.stderr
