"""ADE20K UperNet transfer: backbone, layer decay, weight loading, configs, a tiny run.

Everything runs on CPU with tiny ViTs and small inputs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mmseg.models", reason="needs mmcv (full) + mmsegmentation: tools/install_mmcv.sh")

from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from mmseg.utils import register_all_modules  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pretrain.models.pos_embed import build_sincos_pos_embed, resize_pos_embed  # noqa: E402
from pretrain.models.vit import create_vit, vit_layer_id  # noqa: E402
from segmentation.backbone import DropPosViT  # noqa: E402
from segmentation.pretrained import load_encoder_weights  # noqa: E402
from segmentation.rel_pos_attention import relative_position_index, table_for_grid  # noqa: E402

register_all_modules(init_default_scope=True)

CONFIGS = ROOT / "segmentation" / "configs"
BASE_CFG = CONFIGS / "upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py"
LARGE_CFG = CONFIGS / "upernet_vit-l16_8xb2-amp-160k_ade20k-512x512.py"
TINY_CFG = CONFIGS / "upernet_vit-tiny_1xb8-400it_builtin-ade-128x128.py"
TINY_P8_CFG = CONFIGS / "upernet_vit-tiny-p8_1xb8-400it_builtin-ade-64x64.py"
REFERENCE_KEYS = Path("/work/shared/reference/reference_keys.json")


def tiny_cfg(depth: int = 4, **backbone) -> Config:
    """The CPU recipe with an even smaller backbone; SyncBN -> BN so it builds without a Runner."""
    cfg = Config.fromfile(str(TINY_CFG))
    cfg.model.backbone.update(depth=depth, out_indices=None, **backbone)  # quarters of the depth
    return cfg


def build_segmentor(cfg: Config) -> torch.nn.Module:
    return MODELS.build(cfg.model)


# ----------------------------------------------------------------- backbone


@pytest.mark.parametrize("config, size", [(TINY_CFG, 128), (TINY_P8_CFG, 64)])
def test_neck_levels_have_strides_4_8_16_32(config, size):
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.update(depth=4, out_indices=(0, 1, 2, 3))
    model = build_segmentor(cfg).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        levels = model.backbone(x)
        assert [tuple(f.shape) for f in levels] == [(2, 192, 8, 8)] * 4  # patch-stride maps
        feats = model.extract_feat(x)  # backbone + Feature2Pyramid
        logits = model.encode_decode(x, [dict(img_shape=(size, size))] * 2)
    assert [tuple(f.shape) for f in feats] == [(2, 192, size // s, size // s) for s in (4, 8, 16, 32)]
    assert tuple(logits.shape) == (2, 12, size, size)


def test_every_config_resolves():
    names = sorted(p.name for p in CONFIGS.glob("*.py"))
    assert len(names) == 6
    for name in names:
        cfg = Config.fromfile(str(CONFIGS / name))
        assert cfg.model.backbone.type == "DropPosViT" and cfg.default_scope == "mmseg"


def test_every_parameter_gets_a_gradient():
    """DDP without find_unused_parameters needs this: no dead final norm, no unused block."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    model = build_segmentor(tiny_cfg(depth=2)).train()
    samples = []
    for _ in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 12, (1, 64, 64)))
        samples.append(s)
    losses = model.loss(torch.randn(2, 3, 64, 64), samples)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []


def test_backbone_any_input_size_and_outputs():
    vit = DropPosViT(arch="tiny", depth=4, img_size=64, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = vit(torch.randn(1, 3, 100, 150))  # not multiples of 16 and larger than the 4x4 grid
    assert [tuple(o.shape) for o in outs] == [(1, 192, 7, 10)] * 2
    assert all(torch.isfinite(o).all() for o in outs)
    blk = vit.blocks[0]
    assert blk.ls1.gamma.eq(1.0).all() and blk.ls2.gamma.eq(1.0).all()  # layer scale init 1.0
    assert blk.attn.relative_position_bias_table.shape == ((2 * 4 - 1) ** 2 + 3, 3)
    assert blk.attn.relative_position_bias_table.eq(0).all()
    assert [round(getattr(b.drop_path1, "drop_prob", 0.0), 4) for b in vit.blocks] == [0.0, 0.0333, 0.0667, 0.1]
    assert not hasattr(vit.norm, "weight")  # no unused final norm (DDP would complain)
    assert vit.pos_embed.requires_grad and vit.pos_embed.shape == (1, 1 + 16, 192)


def test_default_out_indices_follow_mmseg():
    from segmentation.backbone import default_out_indices

    assert default_out_indices("base", 12) == (3, 5, 7, 11)
    assert default_out_indices("large", 24) == (7, 11, 15, 23)
    assert default_out_indices("tiny", 4) == (0, 1, 2, 3)


def test_zero_rel_pos_table_is_plain_attention_and_fused_matches_explicit():
    torch.manual_seed(0)
    with_rel = DropPosViT(arch="tiny", depth=2, img_size=64, out_indices=(1,), drop_path_rate=0.0).eval()
    plain = DropPosViT(arch="tiny", depth=2, img_size=64, out_indices=(1,), drop_path_rate=0.0, use_rel_pos=False)
    missing, unexpected = plain.eval().load_state_dict(with_rel.state_dict(), strict=False)
    assert missing == [] and all("relative_position_bias_table" in k for k in unexpected)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(with_rel(x)[0], plain(x)[0])  # zero table == no bias
        for blk in with_rel.blocks:
            blk.attn.relative_position_bias_table.normal_(std=0.5)
        fused = with_rel(x)[0]
        for blk in with_rel.blocks:
            blk.attn.fused_attn = False
        torch.testing.assert_close(with_rel(x)[0], fused, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(fused, plain(x)[0])


def test_relative_index_and_table_resizing():
    idx = relative_position_index((2, 3))
    assert idx.shape == (7, 7)
    num_rel = 3 * 5
    assert idx[0, 1:].eq(num_rel).all() and idx[1:, 0].eq(num_rel + 1).all() and idx[0, 0] == num_rel + 2
    assert idx[1, 1] == idx[6, 6] == (2 - 1) * 5 + (3 - 1)  # zero offset is the centre row
    table = torch.randn(num_rel + 3, 2)
    small = table_for_grid(table, (2, 3), (1, 2))  # sub-grid: centred sub-block, cls rows kept
    assert small.shape == (1 * 3 + 3, 2)
    torch.testing.assert_close(small[1], table[(2 - 1) * 5 + (3 - 1)])
    assert table_for_grid(table, (2, 3), (4, 4)).shape == (7 * 7 + 3, 2)


# -------------------------------------------------------------- layer decay


def test_layer_decay_scales_and_no_weight_decay():
    cfg = tiny_cfg(depth=4)
    cfg.optim_wrapper.type = "OptimWrapper"
    cfg.optim_wrapper.pop("loss_scale")
    cfg.optim_wrapper.paramwise_cfg = dict(num_layers=4, decay_rate=0.65)
    model = build_segmentor(cfg)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lr, wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    seen = {}
    for group in wrapper.optimizer.param_groups:
        for name in group["param_names"]:
            seen[name] = (group["lr"], group["weight_decay"])
    assert set(seen) == {n for n, p in model.named_parameters() if p.requires_grad}
    for i in range(4):
        assert seen[f"backbone.blocks.{i}.attn.qkv.weight"] == pytest.approx((lr * 0.65 ** (4 - i), wd))
        assert seen[f"backbone.blocks.{i}.mlp.fc1.bias"] == pytest.approx((lr * 0.65 ** (4 - i), 0.0))
        for name in ("ls1.gamma", "ls2.gamma", "norm1.weight", "attn.relative_position_bias_table"):
            assert seen[f"backbone.blocks.{i}.{name}"][1] == 0.0, name
    for name in ("backbone.pos_embed", "backbone.cls_token"):
        assert seen[name] == pytest.approx((lr * 0.65 ** 5, 0.0))
    assert seen["backbone.patch_embed.proj.weight"] == pytest.approx((lr * 0.65 ** 5, wd))
    assert seen["decode_head.conv_seg.weight"] == pytest.approx((lr, wd))
    assert seen["neck.upsample_4x.0.weight"] == pytest.approx((lr, wd))
    assert seen["decode_head.conv_seg.bias"] == pytest.approx((lr, 0.0))
    assert vit_layer_id("backbone.blocks.11.attn.qkv.weight", 12, prefix="backbone.") == 12
    assert vit_layer_id("auxiliary_head.conv_seg.weight", 12, prefix="backbone.") == 13


# ---------------------------------------------------------- pretrained weights


def _reference_state(vit_state: dict[str, torch.Tensor], grid: int, dim: int) -> dict[str, torch.Tensor]:
    """A DropPos reference pretraining state: encoder (224 px grid) + decoder + mask_pos_token."""
    state = {k: torch.randn_like(v) for k, v in vit_state.items() if not k.startswith(("head", "fc_norm"))}
    state["pos_embed"] = build_sincos_pos_embed(dim, (grid, grid), cls_token=True)
    state["mask_pos_token"] = torch.randn(1, 1, dim)
    state["decoder_embed.weight"] = torch.randn(32, dim)
    state["decoder_pred.weight"] = torch.randn(grid * grid, 32)
    return state


def test_reference_checkpoint_fills_every_vit_weight(tmp_path):
    enc = create_vit("tiny", depth=4, img_size=224)
    ref = _reference_state(enc.state_dict(), 14, 192)
    path = tmp_path / "droppos_tiny.pth"
    torch.save({"model": {f"module.{k}": v for k, v in ref.items()}, "args": argparse.Namespace(lr=1.0)}, path)

    cfg = tiny_cfg(depth=4, pretrained=str(path))
    model = build_segmentor(cfg)
    model.init_weights()
    report = model.backbone.load_report
    own = model.backbone.state_dict()
    new = {k for k in own if k not in report.loaded}
    assert new and all(k.endswith(("ls1.gamma", "ls2.gamma", "relative_position_bias_table")) for k in new)
    assert report.unexpected == [] and sorted(report.skipped) == ["norm.bias", "norm.weight"]  # no final norm (MAE recipe)
    for key in report.loaded:
        expected = ref[key] if key != "pos_embed" else resize_pos_embed(ref[key], (8, 8), num_prefix_tokens=1)
        torch.testing.assert_close(own[key], expected, msg=key)
    assert len(report.loaded) == len([k for k in ref if k in own])
    # neck and heads stay new: nothing outside the backbone has a checkpoint name
    assert not any(k.startswith(("decoder", "mask_pos")) for k in report.loaded)


@pytest.mark.skipif(not REFERENCE_KEYS.is_file(), reason="reference key list not present")
def test_reference_vit_b_keys_map_onto_the_vit_b_backbone():
    refs = json.loads(REFERENCE_KEYS.read_text())["models"]
    shapes = dict(refs["droppos:DropPos_mae_vit_base_patch16_dec512d2b"])
    state = {k: torch.zeros(s) for k, s in shapes.items()}
    from pretrain.weights import encoder_state_dict

    vit = DropPosViT(arch="base", img_size=512)
    report = load_encoder_weights(vit, encoder_state_dict(state), vit.grid_size)
    encoder_keys = [k for k in shapes if not k.startswith("decoder") and k != "mask_pos_token"]
    assert sorted(report.loaded + list(report.skipped)) == sorted(encoder_keys)
    assert report.unexpected == [] and sorted(report.skipped) == ["norm.bias", "norm.weight"]
    assert all(k.endswith(("gamma", "relative_position_bias_table")) for k in report.new)
    assert len(report.new) == 12 * 3
    assert report.resized == {"pos_embed": "grid 14x14 -> 32x32 (bicubic, cls row kept)"}


def test_nothing_matching_is_an_error():
    vit = DropPosViT(arch="tiny", depth=2, img_size=64)
    with pytest.raises(RuntimeError, match="no transformer block weight"):
        load_encoder_weights(vit, {"layers.0.ffn.weight": torch.zeros(3)}, vit.grid_size)


# ------------------------------------------------------------------- configs


def test_vit_b_config_resolves_to_the_recipe():
    cfg = Config.fromfile(str(BASE_CFG))
    bb = cfg.model.backbone
    assert (bb.type, bb.arch, bb.img_size, bb.patch_size) == ("DropPosViT", "base", 512, 16)
    assert tuple(bb.out_indices) == (3, 5, 7, 11)
    assert (bb.drop_path_rate, bb.init_values, bb.use_rel_pos) == (0.1, 1.0, True)
    assert cfg.model.neck.type == "Feature2Pyramid" and cfg.model.neck.rescales == [4, 2, 1, 0.5]
    assert cfg.model.neck.embed_dim == 768
    head, aux = cfg.model.decode_head, cfg.model.auxiliary_head
    assert (head.type, head.channels, head.in_channels, head.num_classes) == ("UPerHead", 768, [768] * 4, 150)
    assert (aux.type, aux.in_channels, aux.in_index, aux.loss_decode.loss_weight) == ("FCNHead", 768, 2, 0.4)
    assert cfg.model.test_cfg == dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    assert cfg.model.data_preprocessor.size == (512, 512)
    ow = cfg.optim_wrapper
    assert ow.type == "AmpOptimWrapper" and ow.constructor == "ViTLayerDecayOptimizerConstructor"
    assert ow.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert ow.paramwise_cfg == dict(num_layers=12, decay_rate=0.65)
    warm, poly = cfg.param_scheduler
    assert (warm.type, warm.begin, warm.end, warm.by_epoch) == ("LinearLR", 0, 1500, False)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end, poly.by_epoch) == (
        "PolyLR", 1.0, 0.0, 1500, 160000, False)
    assert cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size * 8 == 16
    ds = cfg.train_dataloader.dataset
    assert ds.type == "ADE20KDataset" and ds.reduce_zero_label
    crop = [t for t in ds.pipeline if t.type == "RandomCrop"][0]
    assert crop.crop_size == (512, 512)
    assert "segmentation.backbone" in cfg.custom_imports.imports and not cfg.custom_imports.allow_failed_imports


def test_vit_l_and_multiscale_configs():
    large = Config.fromfile(str(LARGE_CFG))
    assert large.model.backbone.arch == "large" and tuple(large.model.backbone.out_indices) == (7, 11, 15, 23)
    assert large.model.decode_head.in_channels == [1024] * 4 and large.model.neck.embed_dim == 1024
    assert large.optim_wrapper.paramwise_cfg.num_layers == 24
    for path in (CONFIGS / "upernet_vit-b16_8xb2-amp-160k_ade20k-512x512-ms.py",
                 CONFIGS / "upernet_vit-l16_8xb2-amp-160k_ade20k-512x512-ms.py"):
        ms = Config.fromfile(str(path))
        single = Config.fromfile(str(path).replace("-ms.py", ".py"))
        assert ms.tta_model.type == "SegTTAModel"
        tta = ms.test_dataloader.dataset.pipeline[1]
        assert tta.type == "TestTimeAug" and len(tta.transforms[0]) == 6 and len(tta.transforms[1]) == 2
        assert ms.val_dataloader.dataset.pipeline == single.val_dataloader.dataset.pipeline  # training untouched
        assert ms.model == single.model and ms.optim_wrapper == single.optim_wrapper


# ---------------------------------------------------------- tiny train + eval


def make_ade_folder(root: Path, n_train: int = 4, n_val: int = 2) -> Path:
    """ADEChallengeData2016-style folder: jpg images, uint8 png labels (0 unlabelled, 1 sky, 2 ground, 3 box)."""
    rng = np.random.default_rng(0)
    base = root / "ADEChallengeData2016"
    for split, n in (("training", n_train), ("validation", n_val)):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            h, w = 64 + 8 * (i % 3), 96
            label = np.ones((h, w), np.uint8)
            horizon = int(rng.integers(h // 3, 2 * h // 3))
            label[horizon:] = 2
            y, x = int(rng.integers(4, h - 28)), int(rng.integers(4, w - 28))
            label[y:y + 24, x:x + 24] = 0
            label[y + 1:y + 23, x + 1:x + 23] = 3
            colours = np.array([[0, 0, 0], [110, 160, 230], [90, 140, 60], [220, 40, 40]], np.uint8)
            img = colours[label] + rng.integers(0, 20, (h, w, 3)).astype(np.uint8)
            Image.fromarray(img).save(base / "images" / split / f"ADE_{split}_{i:08d}.jpg", quality=95)
            Image.fromarray(label).save(base / "annotations" / split / f"ADE_{split}_{i:08d}.png")
    return base


def test_tiny_train_then_eval_writes_miou(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_ade_folder(tmp_path / "ade")
    from segmentation import test as seg_test
    from segmentation import train as seg_train

    opts = {
        "model.backbone.depth": 2,
        "model.backbone.out_indices": (0, 0, 1, 1),
        "model.decode_head.num_classes": 3,
        "model.auxiliary_head.num_classes": 3,
        "train_dataloader.batch_size": 2,
        "train_dataloader.num_workers": 0,
        "train_dataloader.persistent_workers": False,
        "train_dataloader.dataset.data_root": str(data),
        "train_dataloader.dataset.metainfo.classes": ("sky", "ground", "box"),
        "train_dataloader.dataset.metainfo.palette": [[0, 0, 255], [0, 255, 0], [255, 0, 0]],
        "val_dataloader.num_workers": 0,
        "val_dataloader.persistent_workers": False,
        "val_dataloader.dataset.data_root": str(data),
        "val_dataloader.dataset.metainfo.classes": ("sky", "ground", "box"),
        "val_dataloader.dataset.metainfo.palette": [[0, 0, 255], [0, 255, 0], [255, 0, 0]],
        # 64 px crops and windows keep it fast; the slide test still takes two windows per image
        "model.backbone.img_size": 64,
        "model.data_preprocessor.size": (64, 64),
        "model.test_cfg.crop_size": (64, 64),
        "model.test_cfg.stride": (48, 48),
        "train_dataloader.dataset.pipeline.2.scale": (256, 64),
        "train_dataloader.dataset.pipeline.3.crop_size": (64, 64),
        "val_dataloader.dataset.pipeline.1.scale": (256, 64),
        "train_cfg.max_iters": 2,
        "train_cfg.val_interval": 2,
        "param_scheduler": [dict(type="ConstantLR", factor=1.0, by_epoch=False)],
        "default_hooks.checkpoint.interval": 2,
        "default_hooks.logger.interval": 1,
    }
    work = tmp_path / "work"
    args = seg_train.get_args_parser().parse_args([str(TINY_CFG), "--work-dir", str(work)])
    args.cfg_options = opts
    seg_train.main(args)
    metrics = json.loads((work / "segmentation_metrics.json").read_text())
    assert metrics["task"] == "ade20k_segmentation" and metrics["iterations"] == 2 and metrics["split"] == "val"
    assert 0.0 <= metrics["mIoU"] <= 100.0 and 0.0 <= metrics["aAcc"] <= 100.0
    assert metrics["config"].endswith(TINY_CFG.name)
    assert (work / "iter_2.pth").is_file()

    # resume from the work dir's latest checkpoint (weights-only loading of MMEngine's own files)
    args = seg_train.get_args_parser().parse_args([str(TINY_CFG), "--work-dir", str(work), "--resume"])
    args.cfg_options = {**opts, "train_cfg.max_iters": 3, "train_cfg.val_interval": 3,
                        "default_hooks.checkpoint.interval": 3}
    seg_train.main(args)
    assert json.loads((work / "segmentation_metrics.json").read_text())["iterations"] == 3
    logs = sorted(work.glob("*/*.log"))
    assert len(logs) == 2 and "resumed epoch: 0, iter: 2" in logs[-1].read_text()
    # each run's scalars in its own log folder (MMEngine hands a second Runner the first one's visualizer by name)
    scalars = [json.loads(line) for line in (logs[-1].parent / "vis_data" / "scalars.json").read_text().splitlines()]
    assert [r["iter"] for r in scalars if "loss" in r] == [3]
    assert all(r["step"] <= 2 for r in map(json.loads, (logs[0].parent / "vis_data" / "scalars.json").read_text().splitlines()))

    test_work = tmp_path / "test"
    targs = seg_test.get_args_parser().parse_args(
        [str(TINY_CFG), str(work / "iter_3.pth"), "--work-dir", str(test_work)])
    targs.cfg_options = {k: v for k, v in opts.items() if not k.startswith(("train", "param", "default"))}
    targs.cfg_options.update({k.replace("val_", "test_"): v for k, v in opts.items() if k.startswith("val_")})
    results = seg_test.main(targs)
    tested = json.loads((test_work / "segmentation_metrics.json").read_text())
    assert tested["split"] == "test" and tested["iterations"] == 3
    assert tested["mIoU"] == pytest.approx(results["mIoU"])
    assert tested["mIoU"] == pytest.approx(json.loads((work / "segmentation_metrics.json").read_text())["mIoU"])

    # multi-scale + flip test (what the -ms configs do), through SegTTAModel
    targs.tta = True
    targs.work_dir = str(tmp_path / "test_ms")
    ms = seg_test.main(targs)
    assert 0.0 <= ms["mIoU"] <= 100.0
    assert json.loads((tmp_path / "test_ms" / "segmentation_metrics.json").read_text())["split"] == "test"


def test_train_refuses_bad_ade_folder_before_building_runner(tmp_path, monkeypatch):
    """A label value beyond the class count is reported with its file name, before any training."""
    from pretrain.data.validate import DatasetError
    from segmentation import runner_setup
    from segmentation import train as seg_train

    data = make_ade_folder(tmp_path / "ade")
    bad = sorted((data / "annotations" / "validation").glob("*.png"))[0]
    label = np.asarray(Image.open(bad)).copy()
    label[0, 0] = 7  # 3 classes: allowed 0..3 and 255
    Image.fromarray(label).save(bad)
    monkeypatch.setattr(runner_setup, "Runner", None)  # building a Runner would fail loudly
    args = seg_train.get_args_parser().parse_args([str(TINY_CFG), "--work-dir", str(tmp_path / "w")])
    args.cfg_options = {
        "model.decode_head.num_classes": 3,
        "train_dataloader.dataset.data_root": str(data),
        "val_dataloader.dataset.data_root": str(data),
    }
    with pytest.raises(DatasetError) as err:
        seg_train.main(args)
    assert bad.name in str(err.value) and "[7]" in str(err.value)
    # the clean copy passes, with both splits counted
    label[0, 0] = 1
    Image.fromarray(label).save(bad)
    cfg = runner_setup.load_config(str(TINY_CFG), args.cfg_options)
    summary = runner_setup.check_ade20k_data(cfg, ("train_dataloader", "val_dataloader"), "full")
    assert summary[str(data)]["training"] == 4 and summary[str(data)]["validation"] == 2
