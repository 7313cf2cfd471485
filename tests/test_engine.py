"""The pretraining engine: configs, schedule, accumulation, resume."""
import json

import pytest
import torch

from pretrain.engine.config import ConfigError, load_config
from pretrain.engine.schedule import warmup_cosine
from pretrain.main import main, run
from pretrain.models import build_method


def tiny_cfg(data_root, out, *extra):
    return load_config("droppos_vit_tiny_builtin.yaml", [
        f"data.path={data_root / 'imagenet'}", f"train.output_dir={out}", "data.num_workers=0",
        "model.img_size=32", "train.batch_size=8", "train.epochs=2", "train.log_every=1",
        "train.tensorboard=false", "train.progress=false", "train.deterministic=true", *extra,
    ])


def losses(out_dir):
    return [r["loss"] for r in map(json.loads, (out_dir / "log.jsonl").read_text().splitlines()) if r["phase"] == "train"]


# ------------------------------------------------------------------ configs
def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'droppos.pos_drop_ration'.*did you mean 'droppos.pos_drop_ratio'"):
        load_config("droppos_vit_tiny_builtin.yaml", ["droppos.pos_drop_ration=0.5"])


def test_unknown_key_in_recipe_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"'train.epoch' in .*bad.yaml.*'train.epochs'"):
        load_config(str(bad))


@pytest.mark.parametrize("override,match", [
    ("train.epochs=abc", "train.epochs' must be int"),
    ("droppos.mask_ratio=1.0", "strictly between 0 and 1"),
    ("droppos.pos_drop_ratio=0", "strictly between 0 and 1"),
    ("model.img_size=65", "multiple of model.patch_size"),
    ("method=simclr", "method"),
])
def test_bad_values_rejected_before_work(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("droppos_vit_tiny_builtin.yaml", [override])


def test_cli_reports_config_error(capsys):
    assert main(["--config", "droppos_vit_tiny_builtin.yaml", "optim.blrr=1"]) == 2
    assert "did you mean 'optim.blr'" in capsys.readouterr().err


def test_paper_recipes_resolve():
    cfg = load_config("droppos_vit_base_200ep.yaml")
    assert (cfg.method, cfg.model.size, cfg.train.epochs, cfg.optim.warmup_epochs) == ("droppos", "base", 200, 10)
    assert cfg.droppos.mask_ratio == 0.75 and cfg.droppos.pos_drop_ratio == 0.75 and cfg.droppos.tau == 0.1
    assert list(cfg.optim.betas) == [0.9, 0.95] and cfg.optim.blr == 1.5e-4
    assert cfg.train.batch_size * cfg.train.accum_iter * 8 == 4096
    large = load_config("droppos_vit_large_800ep.yaml")
    assert (large.model.size, large.train.epochs, large.optim.warmup_epochs) == ("large", 800, 40)
    mae = load_config("mae_vit_base_800ep.yaml")
    assert mae.method == "mae" and mae.mae.decoder_depth == 8 and mae.mae.norm_pix_loss


def test_schedule_warmup_then_cosine():
    assert warmup_cosine(0.0, 1.0, 10, 100) == 0.0
    assert warmup_cosine(5.0, 1.0, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(10.0, 1.0, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55.0, 1.0, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100.0, 1.0, 10, 100, floor=0.1) == pytest.approx(0.1)


def test_weight_decay_groups():
    """Default: the released rule (tokens decayed); optim.wd_skip_list=true: the suite's exemption."""
    cfg = load_config("droppos_vit_tiny_builtin.yaml", ["model.img_size=32"])
    assert cfg.optim.wd_skip_list is False
    model = build_method(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    for skip_list, tokens_decayed in ((False, True), (True, False)):
        groups = model.param_groups(0.05, 1e-3, total_batch=64, skip_list=skip_list)
        no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
        decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        tokens = {"mask_pos_token", "encoder.cls_token"}
        assert tokens <= (decay if tokens_decayed else no_decay)
        assert all(n.endswith(".bias") or "norm" in n or n in tokens for n in no_decay)
        assert "encoder.blocks.0.attn.qkv.weight" in decay and "decoder_pred.weight" in decay
        assert "encoder.pos_embed" not in decay | no_decay  # frozen


# ------------------------------------------------------------------ training
def test_resume_reproduces_next_losses(small_builtin, tmp_path):
    """Stop after 5 steps, resume: the following losses equal an uninterrupted run's."""
    full = tmp_path / "full"
    opts = ("data.limit=48",)
    run(tiny_cfg(small_builtin, full, *opts))
    part = tmp_path / "part"
    run(tiny_cfg(small_builtin, part, *opts, "train.max_steps=5", "train.save_every_steps=5"))
    assert (part / "checkpoint-00000005.pth").is_file()
    run(tiny_cfg(small_builtin, part, *opts))  # resume=auto picks the step-5 checkpoint
    a, b = losses(full), losses(part)
    assert len(a) == len(b) == 12
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)
    metrics = json.loads((part / "pretrain_metrics.json").read_text())
    assert metrics["resumed_from"].endswith("checkpoint-00000005.pth") and metrics["steps"] == 12
    # cost: the epochs' wall time from the saved history, so the run before the resume counts too
    assert metrics["cost"]["cpu_minutes"] == pytest.approx(sum(h["seconds"] for h in metrics["history"]) / 60)
    assert metrics["cost"]["cpu_minutes"] > 0 and metrics["cost"]["gpu_hours"] == 0
    assert (part / "config.yaml").is_file() and (part / "backbone.pth").is_file()


def test_gradient_accumulation_really_accumulates(small_builtin, tmp_path):
    """Two half batches with loss / 2 accumulate the gradient of the full batch."""
    torch.manual_seed(0)
    cfg = tiny_cfg(small_builtin, tmp_path, "droppos.attentive=false")
    m1 = build_method(cfg)
    m2 = build_method(cfg)
    m2.load_state_dict(m1.state_dict())
    imgs = torch.randn(16, 3, 32, 32)
    masks = m1.sample_masks(16, torch.Generator().manual_seed(0))
    m1(imgs, masks=masks).loss.backward()
    from pretrain.models import DropPosMasks

    for sl in (slice(0, 8), slice(8, 16)):
        part = DropPosMasks(masks.ids_keep[sl], masks.pos_dropped[sl])
        (m2(imgs[sl], masks=part).loss / 2).backward()
    # equal weight sums per half (same number of dropped tokens), so the mean of the halves is the full mean
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        if p1.grad is not None:
            torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_droppos_learns_positions(small_builtin, tmp_path):
    """A few epochs on the built-in data push position accuracy above chance (1/16 on a 4 x 4 grid)."""
    out = tmp_path / "learn"
    metrics = run(tiny_cfg(small_builtin, out, "train.epochs=5", "optim.blr=5e-3", "droppos.attentive=false"))
    first, last = metrics["history"][0], metrics["final"]
    assert last["pos_acc"] > 2 / 16 and last["loss"] < first["loss"]
