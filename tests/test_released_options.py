"""Options that restore the released DropPos / MAE / AdPE / MMSeg behaviour (issue 19).

Each test shows that its option changes exactly what it claims: the optimizer
groups it builds, or the relative-position encoding / loss it computes.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pretrain.engine.config import ConfigError, load_config
from pretrain.models import build_method
from pretrain.models.adpe import AdPE
from pretrain.models.relpos import KeyRelPos, rel_pos_modules
from pretrain.models.vit import create_vit

ROOT = Path(__file__).resolve().parents[1]


def group_names(model: torch.nn.Module, groups: list[dict]) -> tuple[set[str], set[str], set[str]]:
    """(undecayed, decayed, adversary) parameter names of optimizer groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay, decay, adv = set(), set(), set()
    for g in groups:
        target = adv if g.get("adversary") else (no_decay if g["weight_decay"] == 0 else decay)
        target.update(names[id(p)] for p in g["params"])
    return no_decay, decay, adv


def tiny_adpe(pos: str = "abs", adversary: str = "none", seed: int = 0, **kw) -> AdPE:
    """ViT-Tiny (2 blocks) on 32 px with 8 px patches (4 x 4 grid), 1-block decoder."""
    torch.manual_seed(seed)
    enc = create_vit("tiny", rel_pos=pos == "rel", img_size=32, patch_size=8, depth=2)
    return AdPE(enc, pos=pos, adversary=adversary, decoder_dim=64, decoder_depth=1, decoder_heads=4, **kw)


# ------------------------------------------------------------------ 1. pretraining weight-decay groups
@pytest.mark.parametrize("method, tokens", [
    ("droppos", {"encoder.cls_token", "mask_pos_token"}),
    ("mae", {"encoder.cls_token", "mask_token"}),
])
def test_wd_skip_list_moves_exactly_the_no_weight_decay_names(method, tokens):
    cfg = load_config(f"{method}_vit_tiny_builtin.yaml", ["model.img_size=32"])
    assert cfg.optim.wd_skip_list is False  # default: the released rule
    model = build_method(cfg)
    released = group_names(model, model.param_groups(0.05, 1e-3, total_batch=64))
    suite = group_names(model, model.param_groups(0.05, 1e-3, total_batch=64, skip_list=True))
    # released: only biases and 1-D tensors undecayed, the tokens decayed, frozen pos_embed left out
    assert all(n.endswith(".bias") or p.ndim <= 1 for n, p in model.named_parameters() if n in released[0])
    assert tokens <= released[1] and "encoder.pos_embed" not in released[0] | released[1]
    # the suite's option moves the trainable no_weight_decay() names, and nothing else
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    moved = model.no_weight_decay() & trainable
    assert moved == tokens
    assert suite[0] == released[0] | moved and suite[1] == released[1] - moved


def test_wd_skip_list_reaches_the_optimizer_through_the_config(tmp_path):
    cfg = load_config("droppos_vit_tiny_builtin.yaml", ["optim.wd_skip_list=true"])
    assert cfg.optim.wd_skip_list is True
    with pytest.raises(ConfigError, match="wd_skip_list' must be bool"):
        load_config("droppos_vit_tiny_builtin.yaml", ["optim.wd_skip_list=maybe"])
    main_src = (ROOT / "pretrain" / "main.py").read_text()
    assert "skip_list=bool(cfg.optim.wd_skip_list)" in main_src


def test_adpe_groups_keep_the_adversary_group_and_decay_the_mask_token():
    model = tiny_adpe("rel", "embed")
    groups = model.param_groups(0.05, 1e-3, total_batch=256)
    no_decay, decay, adv = group_names(model, groups)
    assert "mask_token" in decay and "encoder.cls_token" in decay
    assert adv and all(n.endswith("adv_token") for n in adv)
    assert groups[-1]["lr"] == groups[-1]["base_lr"] == -1.5e-4 and groups[-1]["weight_decay"] == 0.0
    s_no_decay, s_decay, s_adv = group_names(model, model.param_groups(0.05, 1e-3, total_batch=256, skip_list=True))
    assert s_adv == adv and {"mask_token", "encoder.cls_token"} <= s_no_decay
    assert s_decay == decay - {"mask_token", "encoder.cls_token"}


# ------------------------------------------------------------------ 2. clipping in the DropPos recipes
@pytest.mark.parametrize("recipe", ["droppos_vit_base_200ep", "droppos_vit_base_800ep", "droppos_vit_large_800ep"])
def test_droppos_recipes_clip_each_tensor_at_5(recipe):
    cfg = load_config(f"{recipe}.yaml")
    assert (cfg.optim.clip_grad, cfg.optim.clip_mode) == (5.0, "per_tensor")
    assert load_config(None).optim.clip_grad is None  # the default config does not clip


# ------------------------------------------------------------------ 5. AdPE rel / embed
def fixed_batch(model: AdPE, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(2, 3, 32, 32, generator=g)
    return imgs, model.sample_masks(2, generator=g)


def randomize(model: AdPE, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rpe in rel_pos_modules(model):
            rpe.lookup_table_weight.copy_(torch.randn(rpe.lookup_table_weight.shape, generator=g) * 0.3)
            rpe.adv_token.copy_(torch.randn(rpe.adv_token.shape, generator=g))


def loss_and_adv_grad(model: AdPE, imgs: torch.Tensor, masks: torch.Tensor) -> tuple[float, float]:
    model.zero_grad()
    out = model(imgs, masks=masks)
    out.loss.backward()
    grad = torch.cat([p.grad.flatten() for _, p in model.adversarial_parameters()])
    return out.loss.item(), grad.abs().max().item()


@pytest.mark.parametrize("impl, cancels", [("released", True), ("suite", False)])
def test_rel_embed_released_adversary_cancels_in_the_softmax(impl, cancels, one_thread):
    model = tiny_adpe("rel", "embed", rel_adversary_impl=impl).eval()
    assert all(r.released == (impl == "released") for r in rel_pos_modules(model))
    randomize(model)
    imgs, masks = fixed_batch(model)
    loss, grad = loss_and_adv_grad(model, imgs, masks)
    with torch.no_grad():
        for _, p in model.adversarial_parameters():
            p.zero_()
    zero_loss, _ = loss_and_adv_grad(model, imgs, masks)
    if cancels:  # released: the adversary has no effect, its gradient is round-off
        assert zero_loss == pytest.approx(loss, rel=1e-6, abs=1e-7) and grad < 1e-6
    else:  # suite: the cls key is left out, so the adversary acts
        assert abs(zero_loss - loss) > 1e-4 and grad > 1e-4


# ------------------------------------------------------------------ 6. AdPE rel / coord
def g_index(x: float) -> float:
    """iRPE's unrounded piecewise index for r = 1.9 (alpha 1.9, beta 3.8, gamma 15.2), by hand."""
    a, b, c = 1.9, 3.8, 15.2
    if abs(x) <= a:
        return x
    return math.copysign(min(b, a + math.log(abs(x) / a) / math.log(c / a) * (b - a)), x)


def hand_released_bias(dr: float, dc: float) -> float:
    """Value of the table V[r, c] = 7 r + c bilinearly read at the released index.

    grid_sample(align_corners=False) maps a normalised x to pixel ((x + 1) * 7 - 1) / 2;
    the row offset is passed as x, i.e. indexes the COLUMN axis (transposed).
    """
    col_pix = ((g_index(dr) / 3.8 + 1) * 7 - 1) / 2
    row_pix = ((g_index(dc) / 3.8 + 1) * 7 - 1) / 2
    return 7 * row_pix + col_pix  # V is linear, so bilinear reading is exact inside the view


def test_rel_coord_released_read_matches_a_hand_computed_case():
    grid = (4, 2)  # row offsets up to 3: the log branch of g is used
    rpe = KeyRelPos(head_dim=2, num_heads=1)
    rpe.enable_adversary("coord", released=True)
    with torch.no_grad():
        rpe.lookup_table_weight.zero_()
        rpe.lookup_table_weight[0, 0] = torch.arange(50, dtype=torch.float32)  # bucket k holds k
        rpe.adv_shift.copy_(torch.tensor([0.5, -0.25]))  # (row, col)
    length = 1 + grid[0] * grid[1]
    q = torch.zeros(1, 1, length, 2)
    q[..., 0] = 1.0
    query_mask = torch.zeros(1, length, dtype=torch.bool)
    query_mask[0, 3] = True  # one masked patch row (token 3 = patch 2 = cell (1, 0))
    bias = rpe(q, grid, query_mask)[0, 0]
    cells = [(r, c) for r in range(grid[0]) for c in range(grid[1])]
    for i, (ri, ci) in enumerate(cells, start=1):
        shift = (0.5, -0.25) if i == 3 else (0.0, 0.0)
        for j, (rj, cj) in enumerate(cells, start=1):
            want = hand_released_bias(ri - rj + shift[0], ci - cj + shift[1])
            assert bias[i, j].item() == pytest.approx(want, abs=1e-4), (i, j)
    assert torch.all(bias[0] == 49) and torch.all(bias[:, 0] == 49)  # cls bucket for the cls row / column
    # even at zero shift it is not the integer-bucket encoding (bucket (dr+3)*7 + (dc+3))
    assert bias[1, 3].item() == pytest.approx(hand_released_bias(-1, 0)) != (-1 + 3) * 7 + 3


def test_rel_coord_released_option_only_changes_the_coord_adversary(one_thread):
    suite = tiny_adpe("rel", "coord").eval()
    released = tiny_adpe("rel", "coord", rel_adversary_impl="released").eval()
    plain = tiny_adpe("rel", "none").eval()
    for m in (suite, released, plain):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for rpe in rel_pos_modules(m):
                rpe.lookup_table_weight.copy_(torch.randn(rpe.lookup_table_weight.shape, generator=g) * 0.3)
    imgs, masks = fixed_batch(plain)
    with torch.no_grad():
        base, s0, r0 = (m(imgs, masks=masks).loss.item() for m in (plain, suite, released))
    assert s0 == pytest.approx(base, abs=1e-6)  # suite at zero shift: MAE+ with relative PE
    assert abs(r0 - base) > 1e-5  # released at zero shift: the grid_sample read differs
    out = released(imgs, masks=masks)
    out.loss.backward()
    assert all(r.adv_shift.grad is not None and r.adv_shift.grad.abs().sum() > 0 for r in rel_pos_modules(released))


def test_rel_adversary_impl_config_key():
    assert load_config(None).adpe.rel_adversary_impl == "suite"
    cfg = load_config("adpe_vit_tiny_builtin.yaml", ["adpe.pos=rel", "adpe.adversary=embed", "adpe.rel_adversary_impl=released"])
    assert all(r.released for r in rel_pos_modules(build_method(cfg)))
    with pytest.raises(ConfigError, match="rel_adversary_impl"):
        load_config("adpe_vit_tiny_builtin.yaml", ["adpe.rel_adversary_impl=paper"])


# ------------------------------------------------------------------ 4. fine-tuning recipes
def test_droppos_vit_large_finetune_uses_drop_path_0_1():
    from classification.finetune import load_finetune_config

    assert load_finetune_config("finetune_droppos_vit_large_50ep.yaml").model.drop_path == 0.1
    assert load_finetune_config("finetune_vit_large_50ep.yaml").model.drop_path == 0.2  # MAE's value


# ------------------------------------------------------------------ 7. MMSeg layer decay
def test_mmseg_no_decay_rule_decays_the_tables():
    pytest.importorskip("mmseg.models", reason="needs mmcv (full) + mmsegmentation")
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(str(ROOT / "segmentation" / "configs" / "upernet_vit-tiny_1xb8-400it_builtin-ade-128x128.py"))
    cfg.model.backbone.update(depth=2, out_indices=None)
    cfg.optim_wrapper.type = "OptimWrapper"
    cfg.optim_wrapper.pop("loss_scale", None)
    model = MODELS.build(cfg.model)
    wd = cfg.optim_wrapper.optimizer.weight_decay
    decays = {}
    for rule in ("suite", "mmseg"):
        cfg.optim_wrapper.paramwise_cfg = dict(num_layers=2, decay_rate=0.65, no_decay_rule=rule)
        wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        decays[rule] = {n: g["weight_decay"] for g in wrapper.optimizer.param_groups for n in g["param_names"]}
    tables = {n for n in decays["suite"] if n in ("backbone.pos_embed", "backbone.cls_token")
              or n.endswith("relative_position_bias_table")}
    assert {"backbone.pos_embed", "backbone.cls_token"} <= tables and any("relative_position" in n for n in tables)
    assert all(decays["suite"][n] == 0.0 and decays["mmseg"][n] == wd for n in tables)
    assert {n: v for n, v in decays["suite"].items() if n not in tables} == {
        n: v for n, v in decays["mmseg"].items() if n not in tables}  # nothing else moves
    cfg.optim_wrapper.paramwise_cfg = dict(num_layers=2, decay_rate=0.65, no_decay_rule="timm")
    with pytest.raises(ValueError, match="no_decay_rule"):
        build_optim_wrapper(model, cfg.optim_wrapper)
