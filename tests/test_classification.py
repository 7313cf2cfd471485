"""Classification transfer: layer decay, mixup, checkpoint loading, pos_embed resizing, resume, linear probe."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from classification.evaluate import evaluate
from classification.finetune import build_loss, load_finetune_config, main as finetune_main, run as finetune_run
from classification.layer_decay import layer_decay_param_groups, lr_scale_of
from classification.linear_probe import build_probe_optimizer, load_probe_config, run as probe_run
from classification.load import PretrainedEncoder, load_pretrained, read_pretrained
from classification.model import build_classifier, needs_rel_pos
from classification.runs import use_rel_pos
from pretrain.weights import CheckpointError, atomic_torch_save, detect_format, encoder_state_dict
from pretrain.engine.config import ConfigError
from pretrain.models.pos_embed import build_sincos_pos_embed
from pretrain.models.vit import create_vit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_files import reference_state, save_reference_style  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def in_memory(state: dict) -> PretrainedEncoder:
    """What read_pretrained returns for a reference file holding ``state``, without the file."""
    enc = encoder_state_dict(state)
    return PretrainedEncoder(enc, "<memory>", detect_format(state), sorted(set(state) - set(enc)))


def tiny_backbone(path: Path, img_size: int = 32, seed: int = 0) -> dict:
    """An exported backbone.pth of a random ViT-Tiny/8 (cls row made non-zero to track it)."""
    torch.manual_seed(seed)
    enc = create_vit("tiny", img_size=img_size, patch_size=8).state_dict()
    enc["pos_embed"] = torch.randn_like(enc["pos_embed"])
    atomic_torch_save({"model": enc, "format": "droppos-backbone"}, path)
    return enc


def tiny_opts(data_root: Path, out: Path, *extra: str) -> list[str]:
    return [f"data.path={data_root / 'imagenet'}", f"train.output_dir={out}", "data.num_workers=0",
            "model.size=tiny", "model.img_size=32", "model.patch_size=8", "train.batch_size=8", "train.epochs=2",
            "train.eval_batch_size=20", "train.log_every=1", "train.tensorboard=false", "train.progress=false",
            "train.deterministic=true", *extra]


def train_losses(out_dir: Path) -> list[float]:
    rows = map(json.loads, (out_dir / "log.jsonl").read_text().splitlines())
    return [r["loss"] for r in rows if r["phase"] == "train"]


# ------------------------------------------------------------------ optimizer groups
def test_layer_decay_scales_and_no_weight_decay():
    model = build_classifier("tiny", num_classes=10, img_size=32, patch_size=8, global_pool="avg")
    L, d = len(model.blocks), 0.75
    scales = lr_scale_of(layer_decay_param_groups(model, 0.05, d), model)
    assert len(scales) == sum(p.requires_grad for p in model.parameters())
    for i in range(L):  # block i: decay ** (L + 1 - (i + 1))
        assert scales[f"blocks.{i}.attn.qkv.weight"] == (pytest.approx(d ** (L - i)), 0.05)
        assert scales[f"blocks.{i}.norm1.weight"] == (pytest.approx(d ** (L - i)), 0.0)
        assert scales[f"blocks.{i}.mlp.fc1.bias"][1] == 0.0
    for name in ("cls_token", "pos_embed", "patch_embed.proj.bias"):
        assert scales[name] == (pytest.approx(d ** (L + 1)), 0.0)
    assert scales["patch_embed.proj.weight"] == (pytest.approx(d ** (L + 1)), 0.05)
    assert scales["head.weight"] == (1.0, 0.05) and scales["head.bias"] == (1.0, 0.0)
    assert scales["fc_norm.weight"] == (1.0, 0.0) and scales["fc_norm.bias"] == (1.0, 0.0)
    frozen = build_classifier("tiny", num_classes=10, img_size=32, patch_size=8, freeze_pos_embed=True)
    assert "pos_embed" not in lr_scale_of(layer_decay_param_groups(frozen, 0.05, d), frozen)
    # token pooling keeps the final norm: MAE's rule puts it with the head (scale 1), not in the last block
    token = build_classifier("tiny", num_classes=10, img_size=32, patch_size=8, global_pool="token")
    token_scales = lr_scale_of(layer_decay_param_groups(token, 0.05, d), token)
    assert token_scales["norm.weight"] == (1.0, 0.0)
    assert token_scales["blocks.11.mlp.fc1.weight"] == (pytest.approx(d), 0.05)


def test_lars_matches_mae_rule():
    """MAE's LARS: weights get trust-ratio scaled steps, biases plain momentum SGD; no weight decay."""
    cfg = load_probe_config(None, ["optim.weight_decay=0.0"])
    from classification.model import ProbeHead

    torch.manual_seed(0)
    head = ProbeHead(8, 3)
    w0, b0 = head.fc.weight.detach().clone(), head.fc.bias.detach().clone()
    opt = build_probe_optimizer(head, cfg, lr=0.5)
    head(torch.randn(16, 8)).logsumexp(1).mean().backward()
    gw, gb = head.fc.weight.grad.clone(), head.fc.bias.grad.clone()
    opt.step()
    q = 0.001 * w0.norm() / gw.norm()
    torch.testing.assert_close(head.fc.weight.detach(), w0 - 0.5 * q * gw)
    torch.testing.assert_close(head.fc.bias.detach(), b0 - 0.5 * gb)


# ------------------------------------------------------------------ mixup and loss
def test_mixup_targets_are_soft_and_sum_to_one():
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    cfg = load_finetune_config("finetune_vit_base_100ep.yaml")
    mixup_fn, criterion = build_loss(cfg, num_classes=10)
    assert isinstance(criterion, SoftTargetCrossEntropy)
    np.random.seed(0)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 10
    mixed, target = mixup_fn(images.clone(), labels)
    assert mixed.shape == images.shape and target.shape == (8, 10)
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    assert (target >= 0).all() and (target.max(1).values < 1).all()  # soft: smoothing and mixing
    assert not torch.equal(mixed, images)
    off = load_finetune_config("finetune_vit_base_100ep.yaml", ["mixup.mixup=0", "mixup.cutmix=0"])
    mixup_fn, criterion = build_loss(off, num_classes=10)
    assert mixup_fn is None and isinstance(criterion, LabelSmoothingCrossEntropy) and criterion.smoothing == 0.1


def test_evaluate_counts_top1_top5():
    class Fixed(nn.Module):
        def forward(self, x):  # class scores: x[:, 0] is the predicted order
            return x

    logits = torch.tensor([[9., 8, 7, 6, 5, 4], [1, 9, 8, 7, 6, 5], [0, 1, 2, 3, 4, 9]])
    target = torch.tensor([0, 0, 5])  # hit at rank 1, miss in top 5, hit at rank 1
    stats = evaluate(Fixed(), [(logits, target)], torch.device("cpu"))
    assert stats["count"] == 3
    assert stats["top1"] == pytest.approx(200 / 3) and stats["top5"] == pytest.approx(200 / 3)
    stats = evaluate(Fixed(), [(logits, torch.tensor([1, 2, 0]))], torch.device("cpu"))  # ranks 2, 3, 6
    assert stats["top1"] == 0 and stats["top5"] == pytest.approx(200 / 3)


def test_evaluate_scores_bit_for_bit_as_its_own_topk_rule_did():
    """evaluate counts hits with scoring.topk_hits: the same numbers as the top-k rule it had (ties, C < 5)."""
    class Fixed(nn.Module):
        def forward(self, x):
            return x

    g = torch.Generator().manual_seed(0)
    for classes in (3, 5, 10):
        batches = [(torch.randint(0, 4, (17, classes), generator=g).float(),  # many ties
                    torch.randint(0, classes, (17,), generator=g)) for _ in range(3)]
        right1 = right5 = loss = 0.0
        for logits, target in batches:
            hits = logits.topk(min(5, classes), dim=1).indices.eq(target[:, None])
            right1 += float(hits[:, 0].sum().double())
            right5 += float(hits.any(dim=1).sum().double())
            loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum").double())
        stats = evaluate(Fixed(), batches, torch.device("cpu"))
        assert stats == {"top1": 100.0 * right1 / 51, "top5": 100.0 * right5 / 51, "loss": loss / 51, "count": 51}


# ------------------------------------------------------------------ loading checkpoints
@pytest.fixture(scope="module")
def vit_base_avg():
    """One ViT-B/16 classifier (average pooling) shared by the reference-format tests (building it is slow)."""
    return build_classifier("base", num_classes=10, global_pool="avg")


def test_reference_checkpoint_leaves_only_head_new(tmp_path, vit_base_avg):
    state = reference_state("droppos:DropPos_mae_vit_base_patch16_dec512d2b")
    path = tmp_path / "droppos_ref.pth"
    save_reference_style(state, path)
    pretrained = read_pretrained(path)
    assert "argparse.Namespace" in pretrained.ignored_objects
    assert pretrained.format == pretrained.method == "droppos" and "mask_pos_token" in pretrained.dropped
    assert any(k.startswith("decoder_") for k in pretrained.dropped)

    model = vit_base_avg
    head_before = model.head.weight.detach().clone()
    report = load_pretrained(model, pretrained)
    assert report.new == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert set(report.skipped) == {"norm.weight", "norm.bias"}  # fc_norm replaces the final norm (MAE)
    own = model.state_dict()
    for k in ("blocks.7.attn.qkv.weight", "patch_embed.proj.weight", "pos_embed", "cls_token"):
        torch.testing.assert_close(own[k], state[k])
    torch.testing.assert_close(model.head.weight, head_before)
    assert 1e-5 < model.head.weight.std() < 3e-5  # MAE head init, std 2e-5
    assert "newly initialised (4): fc_norm.bias" in report.summary()
    report.save(tmp_path)
    saved = json.loads((tmp_path / "load_report.json").read_text())
    assert saved["format"] == "droppos" and "argparse.Namespace" in saved["ignored_objects"]


@pytest.mark.parametrize("name", ["mae:mae_vit_base_patch16_dec512d8b"])
def test_mae_reference_format_loads(tmp_path, vit_base_avg, name):
    state = reference_state(name)
    pretrained = in_memory(state)  # the file round trip is covered by the DropPos test
    assert pretrained.format == "mae"
    report = load_pretrained(vit_base_avg, pretrained)
    assert report.new == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert len(report.loaded) == 4 + 12 * 12  # cls, pos, patch proj weight + bias, 12 tensors per block
    torch.testing.assert_close(vit_base_avg.state_dict()["blocks.11.mlp.fc2.weight"], state["blocks.11.mlp.fc2.weight"])


def test_timm_vit_weights_load(tmp_path):
    import timm

    src = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "timm_vit.pth")  # flat state dict, with a 1000-class head
    pretrained = read_pretrained(tmp_path / "timm_vit.pth")
    assert pretrained.format == "timm" and {"head.weight", "head.bias"} <= set(pretrained.dropped)
    model = build_classifier("tiny", num_classes=10, img_size=32, patch_size=8, global_pool="token")
    report = load_pretrained(model, pretrained)
    assert report.new == ["head.bias", "head.weight"] and model.head.weight.shape == (10, 192)
    torch.testing.assert_close(model.state_dict()["blocks.3.mlp.fc1.weight"], src.state_dict()["blocks.3.mlp.fc1.weight"])


def test_cls_token_pooling_loads_the_final_norm(tmp_path):
    enc = tiny_backbone(tmp_path / "backbone.pth")
    model = build_classifier("tiny", num_classes=10, img_size=32, patch_size=8, global_pool="token")
    report = load_pretrained(model, tmp_path / "backbone.pth")
    assert report.new == ["head.bias", "head.weight"] and not report.skipped and report.format == "backbone"
    torch.testing.assert_close(model.state_dict()["norm.weight"], enc["norm.weight"])


def test_relative_position_backbone_builds_rel_pos_attention(tmp_path, monkeypatch):
    src = create_vit("tiny", img_size=32, patch_size=8, rel_pos=True)
    enc = {k: torch.randn_like(v) for k, v in src.state_dict().items()}
    enc["blocks.0.attn.rpe_k.adv_token"] = torch.zeros(1, 64, 1)  # AdPE adversary: dropped on load
    torch.save({"model": enc}, tmp_path / "adpe_rpe.pth")
    pretrained = read_pretrained(tmp_path / "adpe_rpe.pth")
    assert needs_rel_pos(pretrained.state) and pretrained.format == "adpe"
    cfg = load_finetune_config("finetune_vit_tiny_builtin.yaml", [f"checkpoint={tmp_path / 'adpe_rpe.pth'}"])
    assert use_rel_pos(cfg, pretrained)
    assert not use_rel_pos(load_finetune_config("finetune_vit_tiny_builtin.yaml", ["model.rel_pos=false"]), pretrained)
    model = build_classifier("tiny", num_classes=10, img_size=32, patch_size=8, rel_pos=True)
    report = load_pretrained(model, pretrained)
    assert report.new == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert "blocks.0.attn.rpe_k.adv_token" in pretrained.dropped
    key = "blocks.5.attn.rpe_k.lookup_table_weight"
    torch.testing.assert_close(model.state_dict()[key], enc[key])
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    plain = build_classifier("tiny", num_classes=10, img_size=32, patch_size=8)
    with pytest.raises(CheckpointError, match="rpe_k"):  # a plain ViT cannot take the tables
        load_pretrained(plain, pretrained)
    monkeypatch.setattr("classification.model.rel_pos_available", lambda: False)
    with pytest.raises(NotImplementedError, match="relative position attention"):
        build_classifier("tiny", num_classes=10, img_size=32, patch_size=8, rel_pos=True)


@pytest.mark.parametrize("name", ["adpe_rpe_adv1:adpe_vit_base_patch16_dec512d8b"])
def test_adpe_relative_pe_reference_format_loads(tmp_path, name):
    pretrained = in_memory(reference_state(name))
    assert pretrained.format == "adpe" and "blocks.0.attn.rpe_k.adv_token" not in pretrained.state
    cfg = load_finetune_config("finetune_vit_base_relpos.yaml", ["model.rel_pos=null"])
    assert use_rel_pos(cfg, pretrained)
    report = load_pretrained(build_classifier("base", num_classes=10, global_pool="avg", rel_pos=True), pretrained)
    assert report.new == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert sum(".rpe_k.lookup_table_weight" in k for k in report.loaded) == 12


def test_pos_embed_resized_keeps_cls_row(tmp_path):
    enc = tiny_backbone(tmp_path / "backbone.pth", img_size=32)  # 4 x 4 grid
    model = build_classifier("tiny", num_classes=10, img_size=48, patch_size=8)  # 6 x 6 grid
    report = load_pretrained(model, tmp_path / "backbone.pth")
    pe = model.pos_embed.detach()
    assert pe.shape == (1, 1 + 36, 192) and "4x4 -> 6x6" in report.resized["pos_embed"]
    torch.testing.assert_close(pe[:, 0], enc["pos_embed"][:, 0])
    # a smooth table resamples smoothly: the resized sin-cos rows stay close to the table of the new grid
    enc["pos_embed"] = build_sincos_pos_embed(192, (4, 4))
    torch.save({"model": enc}, tmp_path / "sincos.pth")
    load_pretrained(model, tmp_path / "sincos.pth")
    assert model.pos_embed[:, 1:].shape == (1, 36, 192) and torch.isfinite(model.pos_embed).all()


def test_mismatches_and_nothing_matched_are_errors(tmp_path):
    tiny_backbone(tmp_path / "tiny.pth")
    small = build_classifier("small", num_classes=10, img_size=32, patch_size=8)
    with pytest.raises(CheckpointError, match=r"(?s)nothing of the encoder.*shape mismatches.*blocks\.0\.attn\.qkv\.weight"):
        load_pretrained(small, tmp_path / "tiny.pth")
    patch4 = build_classifier("tiny", num_classes=10, img_size=32, patch_size=4)  # wrong patch size
    with pytest.raises(CheckpointError, match=r"(?s)does not fit.*patch_embed\.proj\.weight: checkpoint \(192, 3, 8, 8\)"):
        load_pretrained(patch4, tmp_path / "tiny.pth")
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(5, 3, 2, 2), "blocks.0.conv.weight": torch.zeros(3)}},
               tmp_path / "alien.pth")
    with pytest.raises(CheckpointError, match="nothing of the encoder"):
        load_pretrained(small, tmp_path / "alien.pth")
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 3, 7, 7)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="no ViT encoder weights"):
        read_pretrained(tmp_path / "resnet.pth")
    enc = create_vit("tiny", img_size=32, patch_size=8).state_dict()
    torch.save({"model": {k: v for k, v in enc.items() if not k.startswith("blocks.11.")}}, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"lacks encoder weights.*blocks\.11\."):
        load_pretrained(build_classifier("tiny", num_classes=10, img_size=32, patch_size=8), tmp_path / "short.pth")


# ------------------------------------------------------------------ configs
def test_recipes_follow_the_paper_numbers():
    b = load_finetune_config("finetune_vit_base_100ep.yaml")
    assert (b.model.size, b.train.epochs, b.optim.warmup_epochs, b.model.drop_path) == ("base", 100, 5, 0.1)
    assert (b.optim.blr, b.optim.layer_decay, b.optim.weight_decay, b.optim.min_lr) == (1e-3, 0.75, 0.05, 1e-6)
    assert list(b.optim.betas) == [0.9, 0.999] and b.model.global_pool == "avg" and b.model.head_init_std == 2e-5
    assert b.aug.auto_augment == "rand-m9-mstd0.5-inc1" and (b.aug.reprob, b.aug.remode) == (0.25, "pixel")
    assert (b.mixup.mixup, b.mixup.cutmix, b.mixup.switch_prob, b.mixup.smoothing) == (0.8, 1.0, 0.5, 0.1)
    assert b.data.crop_pct == 0.875 and not b.model.freeze_pos_embed
    assert b.train.batch_size * 8 == 1024
    large = load_finetune_config("finetune_vit_large_50ep.yaml")
    assert (large.model.size, large.train.epochs, large.optim.layer_decay, large.model.drop_path) == ("large", 50, 0.75, 0.2)
    assert load_finetune_config("finetune_vit_base_relpos.yaml").optim.layer_decay == 0.65
    p = load_probe_config("linear_probe_vit_base.yaml")
    assert (p.optim.name, p.optim.blr, p.optim.weight_decay, p.train.epochs, p.optim.warmup_epochs) == ("lars", 0.1, 0.0, 90, 10)
    assert p.train.batch_size * 8 == 16384 and p.model.global_pool == "token" and not p.probe.cache_features
    assert load_probe_config("linear_probe_vit_large.yaml").model.size == "large"
    assert load_probe_config("linear_probe_vit_tiny_builtin.yaml").probe.cache_features
    with pytest.raises(ConfigError, match="did you mean 'optim.layer_decay'"):
        load_finetune_config(None, ["optim.layer_decy=0.6"])
    with pytest.raises(ConfigError, match="global_pool"):
        load_probe_config(None, ["model.global_pool=max"])
    assert finetune_main(["--config", "finetune_vit_tiny_builtin.yaml", "mixup.cutmx=1"]) == 2


# ------------------------------------------------------------------ runs
def test_finetune_resumes_to_the_same_next_losses(small_builtin, tmp_path):
    """Full recipe path (RandAugment, erasing, mixup/cutmix, drop path, EMA): stop after 5 steps, resume, same losses."""
    tiny_backbone(tmp_path / "backbone.pth")
    opts = ("data.limit=48", f"checkpoint={tmp_path / 'backbone.pth'}", "aug.auto_augment=rand-m9-mstd0.5-inc1",
            "aug.reprob=0.25", "mixup.mixup=0.8", "mixup.cutmix=1.0", "ema.enabled=true", "ema.decay=0.9")
    full = tmp_path / "full"
    m_full = finetune_run(load_finetune_config("finetune_vit_tiny_builtin.yaml", tiny_opts(small_builtin, full, *opts)))
    part = tmp_path / "part"
    finetune_run(load_finetune_config("finetune_vit_tiny_builtin.yaml",
                                      tiny_opts(small_builtin, part, *opts, "train.max_steps=5", "train.save_every_steps=5")))
    assert (part / "checkpoint-00000005.pth").is_file()
    m_part = finetune_run(load_finetune_config("finetune_vit_tiny_builtin.yaml", tiny_opts(small_builtin, part, *opts)))
    a, b = train_losses(full), train_losses(part)
    assert len(a) == len(b) == 12
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)
    assert m_part["resumed_from"].endswith("checkpoint-00000005.pth")
    assert m_part["top1"] == pytest.approx(m_full["top1"]) and m_part["ema_top1"] if "ema_top1" in m_part else True
    metrics = json.loads((full / "classification_metrics.json").read_text())
    assert metrics["task"] == "finetune" and metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert metrics["arch"] == "vit_tiny_patch8_32" and metrics["checkpoint"].endswith("backbone.pth")
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 100 and metrics["best_top1"] >= metrics["top1"]
    assert all("top1" in h and "ema_top1" in h for h in metrics["history"])
    for name in ("config.yaml", "load_report.json", "best.pth", "log.jsonl"):
        assert (full / name).is_file(), name
    best = torch.load(full / "best.pth", weights_only=True)
    assert best["top1"] == metrics["best_top1"] and "head.weight" in best["model"]


def test_linear_probe_cached_and_augmented(small_builtin, tmp_path):
    enc = tiny_backbone(tmp_path / "backbone.pth")
    out = tmp_path / "cached"
    cfg = load_probe_config("linear_probe_vit_tiny_builtin.yaml", tiny_opts(
        small_builtin, out, f"checkpoint={tmp_path / 'backbone.pth'}", "train.epochs=4", "train.eval_every=2",
        "train.batch_size=30", "optim.warmup_epochs=1", "optim.lr=10.0"))
    metrics = probe_run(cfg)
    assert metrics["task"] == "linear_probe" and metrics["cache_features"] and metrics["epochs"] == 4
    assert [("top1" in h) for h in metrics["history"]] == [False, True, False, True]
    saved = json.loads((out / "classification_metrics.json").read_text())
    assert saved["top1"] == metrics["top1"] and saved["checkpoint"].endswith("backbone.pth")
    assert json.loads((out / "load_report.json").read_text())["new"] == ["head.bias", "head.weight"]
    assert set(torch.load(out / "best.pth", weights_only=True)["head"]) >= {"fc.weight", "bn.running_mean"}
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]

    out = tmp_path / "augmented"  # MAE protocol: augmented images through the frozen encoder each step
    cfg = load_probe_config("linear_probe_vit_tiny_builtin.yaml", tiny_opts(
        small_builtin, out, f"checkpoint={tmp_path / 'backbone.pth'}", "probe.cache_features=false",
        "model.global_pool=avg", "train.max_steps=3", "data.limit=40"))
    metrics = probe_run(cfg)
    assert not metrics["cache_features"] and metrics["steps"] == 3 and "top1" in metrics
    new = json.loads((out / "load_report.json").read_text())["new"]
    assert new == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert enc["blocks.0.attn.qkv.weight"].shape == (576, 192)


def test_linear_probe_gets_pretrainings_resume_guarantees(small_builtin, tmp_path, capsys):
    """The shared run skeleton: a corrupt newest checkpoint is moved aside, the log is cut back to the
    checkpoint, a resume from an earlier file discards the newer timeline, and the losses equal an
    uninterrupted run's."""
    tiny_backbone(tmp_path / "backbone.pth")
    opts = (f"checkpoint={tmp_path / 'backbone.pth'}", "probe.cache_features=true", "data.limit=48",
            "train.save_every_steps=2", "train.keep_checkpoints=3")
    full = tmp_path / "full"
    probe_run(load_probe_config("linear_probe_vit_tiny_builtin.yaml", tiny_opts(small_builtin, full, *opts)))
    part = tmp_path / "part"
    probe_run(load_probe_config("linear_probe_vit_tiny_builtin.yaml",
                                tiny_opts(small_builtin, part, *opts, "train.max_steps=6")))
    (part / "checkpoint-00000006.pth").write_bytes(b"not a checkpoint")  # a write cut short
    (part / ".checkpoint-00000008.pth.tmp123").write_bytes(b"partial")  # a killed writer's temp file
    saved = tmp_path / "checkpoint-00000004.pth"
    saved.write_bytes((part / "checkpoint-00000004.pth").read_bytes())
    capsys.readouterr()
    m = probe_run(load_probe_config("linear_probe_vit_tiny_builtin.yaml", tiny_opts(small_builtin, part, *opts)))
    out = capsys.readouterr().out
    assert "skipping unusable checkpoint" in out and (part / "checkpoint-00000006.pth.corrupt").is_file()
    assert not (part / ".checkpoint-00000008.pth.tmp123").exists()
    assert m["resumed_from"].endswith("checkpoint-00000004.pth") and re.search(r"dropped \d+ records after step 4", out)
    torch.testing.assert_close(torch.tensor(train_losses(part)), torch.tensor(train_losses(full)), rtol=1e-5, atol=1e-6)
    # an explicit resume from an earlier checkpoint: the later ones belong to another timeline
    again = probe_run(load_probe_config("linear_probe_vit_tiny_builtin.yaml", tiny_opts(
        small_builtin, part, *opts, f"train.resume={saved}")))
    assert again["resumed_from"] == str(saved)
    assert any(p.name.endswith(".discarded") for p in part.iterdir())
    torch.testing.assert_close(torch.tensor(train_losses(part)), torch.tensor(train_losses(full)), rtol=1e-5, atol=1e-6)


def test_cli_reports_a_missing_checkpoint(small_builtin, tmp_path, capsys):
    from classification.linear_probe import main as probe_main

    opts = tiny_opts(small_builtin, tmp_path / "run", f"checkpoint={tmp_path / 'missing.pth'}")
    assert probe_main(["--config", "linear_probe_vit_tiny_builtin.yaml", *opts]) == 1
    assert "checkpoint file not found" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.yaml").is_file()
