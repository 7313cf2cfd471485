"""AdPE / MAE+: relative position (iRPE), adversarial positions in four modes, the min-max step,
reference checkpoint keys, recipes and a short run through the pretraining entry point."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from pretrain.weights import check_compatible, encoder_state_dict, to_method_layout, to_reference_layout
from pretrain.engine.config import CONFIG_DIR, load_config
from pretrain.engine.optim import build_adamw
from pretrain.engine.schedule import set_learning_rate
from pretrain.main import run
from pretrain.models import build_method
from pretrain.models import create_vit
from pretrain.engine.run import total_batch_and_lr
from pretrain.models.adpe import AdPE, is_adversarial
from pretrain.models.pos_embed import grid_coords, sincos_2d
from pretrain.models.relpos import (
    KeyRelPos,
    PiecewiseIndex,
    ContextualRelPosBlock,
    bucket_ids_2d,
    grid_offsets,
    num_rel_buckets,
    pad_skip,
    rel_pos_modules,
)

REF = Path("/work/shared/reference/reference_keys.json")
if not REF.is_file():  # CI clones the repository with shared/ beside it
    REF = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "reference_keys.json"
VARIANTS = {  # reference model -> (pos, adversary)
    "adpe_ape_adv1": ("abs", "embed"),
    "adpe_ape_adv2": ("abs", "coord"),
    "adpe_rpe_adv1": ("rel", "embed"),
    "adpe_rpe_adv2": ("rel", "coord"),
}


def tiny(pos: str = "abs", adversary: str = "none", seed: int = 0, **kw) -> AdPE:
    """ViT-Tiny (2 blocks) on 32 px with 8 px patches (4 x 4 grid), 1-block decoder."""
    torch.manual_seed(seed)
    enc = create_vit("tiny", rel_pos=pos == "rel", img_size=32, patch_size=8, depth=2)
    return AdPE(enc, pos=pos, adversary=adversary, decoder_dim=64, decoder_depth=1, decoder_heads=4, **kw)


def randomize_tables(model: nn.Module, std: float = 0.3, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rpe in rel_pos_modules(model):
            rpe.lookup_table_weight.copy_(torch.randn(rpe.lookup_table_weight.shape, generator=g) * std)


def batch(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- iRPE bucketing
def test_piecewise_buckets_are_irpe_defaults():
    index = PiecewiseIndex.from_ratio()
    assert (index.alpha, index.beta, index.gamma) == pytest.approx((1.9, 3.8, 15.2))
    assert index.side == 7 and num_rel_buckets() == 50
    offsets = torch.arange(-13, 14)
    expect = [-3] * 10 + [-2, -2, -1, 0, 1, 2, 2] + [3] * 10
    assert index.bucket(offsets).tolist() == expect
    far = index.continuous(torch.tensor([13.0]))
    assert far.item() == pytest.approx(1.9 + math.log(13 / 1.9) / math.log(8) * 1.9, rel=1e-6)
    ids = bucket_ids_2d((14, 14))  # cls + 196 patches
    assert ids.shape == (197, 197)
    assert (ids[0] == 49).all() and (ids[:, 0] == 49).all()
    assert (ids.diagonal()[1:] == 24).all()  # zero offset: (3, 3) on the 7 x 7 product grid
    assert ids[1:, 1:].unique().tolist() == list(range(49))
    assert ((ids[1:, 1:] + ids[1:, 1:].T) == 48).all()  # b(-d) mirrors b(d)


def test_rel_vit_fused_attention_matches_explicit_path():
    vit = create_vit("tiny", rel_pos=True, img_size=32, patch_size=8, depth=2)
    assert vit.blocks[0].attn.rpe_k.lookup_table_weight.shape == (1, 64, 50)
    randomize_tables(vit)
    x = batch(2)
    fused = vit.forward_features(x)
    g_fused = torch.autograd.grad(fused.square().sum(), vit.blocks[0].attn.rpe_k.lookup_table_weight)[0]
    for blk in vit.blocks:
        blk.attn.fused_attn = False
    explicit = vit.forward_features(x)
    g_explicit = torch.autograd.grad(explicit.square().sum(), vit.blocks[0].attn.rpe_k.lookup_table_weight)[0]
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_fused, g_explicit, atol=1e-4, rtol=1e-4)
    assert g_fused.abs().sum() > 0


# --------------------------------------------------------------------------- relative adversaries
def rpe_pair(mode: str) -> tuple[KeyRelPos, KeyRelPos]:
    plain = KeyRelPos(head_dim=8, num_heads=2)
    randomize_tables(plain)
    adv = copy.deepcopy(plain)
    adv.enable_adversary(mode)
    return plain, adv


@pytest.mark.parametrize("mode", ["embed", "coord"])
def test_rel_adversary_at_zero_equals_plain(mode):
    plain, adv = rpe_pair(mode)
    q = torch.randn(3, 2, 17, 8)
    qmask = torch.rand(3, 17) < 0.5
    qmask[:, 0] = False
    assert torch.equal(adv(q, (4, 4), qmask), plain(q, (4, 4)))
    # the same holds for a whole model: zero adversary == MAE+ with the same weights
    ref = tiny("rel", "none")
    model = tiny("rel", mode)
    randomize_tables(ref)
    model.load_state_dict(ref.state_dict(), strict=False)
    mask = ref.sample_masks(4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(batch(), mask).loss, ref(batch(), mask).loss, atol=0, rtol=0)


def test_rel_coord_shift_interpolates_buckets_and_gets_gradients():
    plain, adv = rpe_pair("coord")
    q = torch.randn(2, 2, 17, 8)
    qmask = torch.zeros(2, 17, dtype=torch.bool)
    qmask[:, 5:11] = True
    table = torch.matmul(q, plain.lookup_table_weight)

    def plain_shifted(dr: float, dc: float) -> torch.Tensor:
        ids = plain.index.product_bucket(grid_offsets((4, 4)) + torch.tensor([dr, dc]))
        return KeyRelPos._lookup(table, pad_skip(ids, 1, 49))

    with torch.no_grad():
        adv.adv_shift.copy_(torch.tensor([1.0, -2.0]))
    out = adv(q, (4, 4), qmask)
    rows = qmask[:, None, :, None]
    torch.testing.assert_close(out, torch.where(rows, plain_shifted(1, -2), plain(q, (4, 4))))
    with torch.no_grad():
        adv.adv_shift.copy_(torch.tensor([0.25, 0.5]))
    out = adv(q, (4, 4), qmask)
    bilinear = (0.75 * 0.5 * plain_shifted(0, 0) + 0.25 * 0.5 * plain_shifted(1, 0)
                + 0.75 * 0.5 * plain_shifted(0, 1) + 0.25 * 0.5 * plain_shifted(1, 1))
    torch.testing.assert_close(out, torch.where(rows, bilinear, plain(q, (4, 4))), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:, :, 0], plain(q, (4, 4))[:, :, 0])  # cls row untouched
    grad = torch.autograd.grad((out * torch.randn_like(out)).sum(), adv.adv_shift)[0]
    assert (grad.abs() > 0).all()


def test_rel_embed_adds_query_times_vector_on_spatial_keys():
    plain, adv = rpe_pair("embed")
    with torch.no_grad():
        adv.adv_token.normal_()
    q = torch.randn(2, 2, 17, 8)
    qmask = torch.zeros(2, 17, dtype=torch.bool)
    qmask[:, 3:9] = True
    delta = adv(q, (4, 4), qmask) - plain(q, (4, 4))
    qa = torch.matmul(q, adv.adv_token)  # [B, H, L, 1]
    expect = torch.where(qmask[:, None, :, None], qa.expand(-1, -1, -1, 17), torch.zeros(()))
    expect[..., 0] = 0  # the cls key keeps its bucket: a row-constant term would cancel in the softmax
    torch.testing.assert_close(delta, expect, atol=1e-5, rtol=1e-5)
    model = tiny("rel", "embed")
    randomize_tables(model)
    model(batch(), model.sample_masks(4, torch.Generator().manual_seed(0))).loss.backward()
    grads = [p.grad for n, p in model.adversarial_parameters()]
    assert len(grads) == 3 and all(g is not None and g.abs().sum() > 0 for g in grads)


# --------------------------------------------------------------------------- absolute adversaries
def test_abs_coord_zero_shift_is_the_sincos_table_and_gradients_reach_the_shift():
    model = tiny("abs", "coord")
    assert model.adv_token.shape == (2,) and model.mask_token.shape == (1, 1, 192)
    torch.testing.assert_close(model.shifted_pos_embed(), model.encoder.pos_embed_patches(), atol=1e-7, rtol=0)
    with torch.no_grad():
        model.adv_token.copy_(torch.tensor([0.5, -1.0]))  # x (col) +0.5, y (row) -1
    expect = sincos_2d(grid_coords((4, 4), dtype=torch.float64) + torch.tensor([-1.0, 0.5], dtype=torch.float64), 192)
    torch.testing.assert_close(model.shifted_pos_embed()[0], expect.float())
    model.adv_token.data.zero_()
    ref = tiny("abs", "none")
    ref.load_state_dict({k: v for k, v in model.state_dict().items() if k != "adv_token"})
    mask = model.sample_masks(4, torch.Generator().manual_seed(0))
    out = model(batch(), mask)
    torch.testing.assert_close(out.loss, ref(batch(), mask).loss, atol=1e-6, rtol=0)
    out.loss.backward()
    assert (model.adv_token.grad.abs() > 0).all()


def test_abs_embed_adversary_replaces_the_mask_token():
    model = tiny("abs", "embed")
    assert not hasattr(model, "mask_token") and model.adv_token.shape == (1, 1, 192)
    imgs = batch(2)
    mask = model.sample_masks(2, torch.Generator().manual_seed(0))
    x = model.embed(imgs, mask)[:, 1:]  # [B, N, D]
    pe = model.encoder.pos_embed_patches()
    torch.testing.assert_close(x[mask], (model.adv_token + pe).expand(2, -1, -1)[mask])
    torch.testing.assert_close(x[~mask], (model.encoder.embed_patches(imgs) + pe)[~mask])


# --------------------------------------------------------------------------- the min-max step
def loss_at(model: AdPE, state: dict, imgs: torch.Tensor, mask: torch.Tensor) -> float:
    model.load_state_dict(state)
    with torch.no_grad():
        return model(imgs, mask).loss.item()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_one_step_descends_on_the_model_and_ascends_on_the_adversary(name):
    pos, adversary = VARIANTS[name]
    model = tiny(pos, adversary)
    randomize_tables(model)
    with torch.no_grad():  # start the shifts inside a cell, where the interpolated loss is smooth
        for n, p in model.adversarial_parameters():
            if p.shape == (2,):
                p.copy_(torch.tensor([0.3, -0.6]))
    imgs, mask = batch(), model.sample_masks(4, torch.Generator().manual_seed(0))
    adv_lr = 0.05 if adversary == "coord" else 0.01
    model.adv_lr = adv_lr
    opt = build_adamw(model.param_groups(0.0, 1e-4, total_batch=256), lr=1e-4, betas=(0.9, 0.95), fused=False)
    assert opt.param_groups[-1]["lr"] == -adv_lr
    before = copy.deepcopy(model.state_dict())
    out = model(imgs, mask)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.adversarial_parameters()}
    opt.step()
    after = copy.deepcopy(model.state_dict())
    adv_keys = set(grads)
    for n, g in grads.items():  # Adam's first step is lr * sign(grad): ascent moves along the gradient
        moved = after[n] - before[n]
        assert (torch.sign(moved) == torch.sign(g)).all() and g.abs().sum() > 0, n
    l0 = out.loss.item()
    l_adv = loss_at(model, {**before, **{k: after[k] for k in adv_keys}}, imgs, mask)
    l_model = loss_at(model, {**after, **{k: before[k] for k in adv_keys}}, imgs, mask)
    assert l_adv > l0 > l_model, (l_adv, l0, l_model)


@pytest.mark.parametrize("kind", ["l2", "linf"])
@pytest.mark.parametrize("name", ["adpe_ape_adv1", "adpe_rpe_adv2"])
def test_projection_keeps_each_adversarial_tensor_in_its_ball(kind, name):
    pos, adversary = VARIANTS[name]
    model = tiny(pos, adversary, projection=kind, eps=0.5)
    params = model.adversarial_parameters()
    with torch.no_grad():
        for i, (_, p) in enumerate(params):
            p.copy_(torch.randn(p.shape) * (3.0 if i % 2 == 0 else 0.01))
    inside = {n: p.detach().clone() for i, (n, p) in enumerate(params) if i % 2 == 1}
    model.after_optimizer_step()
    for n, p in params:
        size = torch.linalg.vector_norm(p) if kind == "l2" else p.abs().max()
        assert size <= 0.5 + 1e-6, (n, size)
        if n in inside:
            assert torch.equal(p, inside[n])  # already inside: untouched
    big = params[0][1]
    if kind == "l2":
        assert torch.linalg.vector_norm(big).item() == pytest.approx(0.5, rel=1e-5)


def test_param_groups_give_the_adversary_a_negative_scheduled_lr():
    model = tiny("rel", "coord")
    model.adv_lr = 2e-3
    groups = model.param_groups(0.05, 1e-3, total_batch=256)
    adv = groups[-1]
    assert adv["lr"] == adv["base_lr"] == -2e-3 and adv["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in adv["params"]) == sorted(n for n, _ in model.adversarial_parameters())
    assert all(not is_adversarial(names[id(p)]) for g in groups[:-1] for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)
    assert "encoder.blocks.0.attn.rpe_k.no_shift" in model.state_dict()
    assert not any(n.endswith("no_shift") for n, _ in model.named_parameters())
    opt = build_adamw(groups, lr=1e-3, fused=False)
    main = set_learning_rate(opt, 0.5, 1e-3, warmup_epochs=1, total_epochs=10)
    assert main == pytest.approx(5e-4) and opt.param_groups[-1]["lr"] == pytest.approx(-1e-3)
    set_learning_rate(opt, 5.5, 1e-3, warmup_epochs=1, total_epochs=10)
    assert opt.param_groups[-1]["lr"] == pytest.approx(-2e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    cfg = load_config("adpe_vit_tiny_builtin.yaml", ["train.batch_size=64", "train.accum_iter=2"])
    total_batch, _ = total_batch_and_lr(cfg, world=1)
    assert build_method(cfg).adversary_lr(total_batch) == pytest.approx(1.5e-3 * 128 / 256)
    assert tiny("abs", "none").param_groups(0.05, 1e-3, total_batch=256)[-1]["weight_decay"] == 0.05  # MAE+: 2 groups


# --------------------------------------------------------------------------- checkpoints
def reference_state(name: str) -> dict:
    if not REF.is_file():
        pytest.skip("shared/reference/reference_keys.json not available")
    models = json.loads(REF.read_text())["models"]
    shapes = dict(models[f"{name}:adpe_vit_base_patch16_dec512d8b"])
    state = {k: torch.zeros(s) for k, s in shapes.items()}
    g = torch.Generator().manual_seed(0)
    for k in state:  # distinct values where they matter
        if is_adversarial(k) or "rpe_k" in k or k in ("mask_token", "cls_token"):
            state[k] = torch.randn(shapes[k], generator=g)
    return state


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_reference_adpe_checkpoints_load_strictly(name):
    pos, adversary = VARIANTS[name]
    state = reference_state(name)
    with torch.device("meta"):  # keys and shapes only: no ViT-B allocation or init
        model = AdPE(create_vit("base", rel_pos=pos == "rel"), pos=pos, adversary=adversary)
    own = {k: tuple(v.shape) for k, v in to_reference_layout(model.state_dict()).items()}
    assert own == {k: tuple(v.shape) for k, v in state.items()}
    method_state = to_method_layout(state)
    check_compatible(model, method_state, name)
    model.load_state_dict(method_state, strict=True, assign=True)
    for k, v in state.items():
        if is_adversarial(k):
            own_key = k if k in model.state_dict() else "encoder." + k
            assert torch.equal(model.state_dict()[own_key], v)


def test_rel_encoder_loads_into_create_vit_strictly():
    model = tiny("rel", "coord")
    randomize_tables(model)
    enc = encoder_state_dict(model.state_dict())
    assert not any(k.endswith(("adv_shift", "no_shift", "adv_token")) for k in enc)
    assert "blocks.1.attn.rpe_k.lookup_table_weight" in enc
    vit = create_vit("tiny", rel_pos=True, img_size=32, patch_size=8, depth=2)
    vit.load_state_dict(enc, strict=True)
    torch.testing.assert_close(vit.forward_features(batch(2)), model.encoder.forward_features(batch(2)))
    # the released relative-position AdPE checkpoint's encoder part, for fine-tuning
    ref = encoder_state_dict(reference_state("adpe_rpe_adv2"))
    with torch.device("meta"):
        base = create_vit("base", rel_pos=True)
    base.load_state_dict(ref, strict=True, assign=True)
    assert isinstance(base.blocks[0], ContextualRelPosBlock)
    assert torch.equal(base.blocks[3].attn.rpe_k.lookup_table_weight, ref["blocks.3.attn.rpe_k.lookup_table_weight"])


# --------------------------------------------------------------------------- recipes and entry point
def test_recipes_hold_the_public_numbers():
    recipes = sorted(CONFIG_DIR.glob("adpe_*.yaml")) + sorted(CONFIG_DIR.glob("maeplus_*.yaml"))
    assert len(recipes) == 16
    for path in recipes:
        cfg = load_config(path.name)
        assert cfg.method == "adpe" and cfg.adpe.mask_ratio == 0.75, path.name
        if "builtin" in path.name:
            continue
        a = cfg.adpe
        assert (cfg.model.img_size, cfg.model.patch_size, a.num_crops, list(a.crop_scale)) == (112, 16, 4, [0.08, 1.0])
        assert cfg.optim.blr == a.adv_blr == 1.5e-4 and cfg.optim.weight_decay == 0.05
        assert cfg.train.batch_size * cfg.train.accum_iter * 8 == 4096
        assert cfg.train.epochs in (400, 1600) and cfg.optim.warmup_epochs == (20 if cfg.train.epochs == 400 else 40)
        expect_adv = "none" if path.name.startswith("maeplus") else ("coord" if "coord" in path.name else "embed")
        assert (a.pos, a.adversary) == ("rel" if "_rel_" in path.name else "abs", expect_adv), path.name
    model = build_method(load_config("adpe_vit_tiny_builtin.yaml"))
    assert isinstance(model, AdPE) and model.rel and model.adversary == "coord"
    assert isinstance(model.decoder_blocks[0], ContextualRelPosBlock)


def test_short_adpe_run_through_the_entry_point(small_builtin, tmp_path):
    cfg = load_config("adpe_vit_tiny_builtin.yaml", [
        f"data.path={small_builtin / 'imagenet'}", f"train.output_dir={tmp_path}", "data.num_workers=0",
        "data.limit=6", "train.batch_size=2", "train.epochs=1", "train.log_every=1", "optim.warmup_epochs=0",
        "train.tensorboard=false", "train.progress=false",
    ])
    metrics = run(cfg)
    final = metrics["final"]
    assert metrics["steps"] == 3 and math.isfinite(final["loss"]) and final["adv_norm"] > 0
    backbone = torch.load(tmp_path / "backbone.pth", weights_only=True)["model"]
    create_vit("tiny", rel_pos=True, img_size=32, patch_size=8).load_state_dict(backbone, strict=True)


# --------------------------------------------------------------------------- masks from per-sample noise
class _IndexDataset(torch.utils.data.Dataset):
    """Sample ``i`` is its own index: the masks a batch row gets can be traced to the sample."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, key):
        index, _ = key
        return torch.tensor(index), 0


def _masks_by_sample(method, world: int, batch: int, epoch: int = 1) -> dict[int, torch.Tensor]:
    """Run the training pipeline's sampler / noise / masks_from_noise path as ``world`` ranks."""
    from pretrain.engine.mask_noise import MaskNoiseDataset
    from pretrain.engine.sampler import ResumableSampler

    keyed = MaskNoiseDataset(_IndexDataset(), seed=7, lengths=method.mask_noise_lengths(), copies=method.num_crops)
    out: dict[int, torch.Tensor] = {}
    for rank in range(world):
        sampler = ResumableSampler(keyed, num_replicas=world, rank=rank, shuffle=True, seed=7)
        sampler.set_epoch(epoch)
        for indices, _, *noise in torch.utils.data.DataLoader(keyed, batch_size=batch, sampler=sampler):
            masks = method.masks_from_noise([n.flatten(0, 1) for n in noise])  # [B * crops, N]
            for row, index in enumerate(indices.tolist()):
                out[index] = masks[row * method.num_crops:(row + 1) * method.num_crops]
    return out


def test_adpe_masks_come_from_per_sample_noise_independent_of_world_size():
    cfg = load_config("adpe_vit_tiny_builtin.yaml")
    method = build_method(cfg)
    assert method.num_crops == int(cfg.adpe.num_crops) > 1
    one = _masks_by_sample(method, world=1, batch=8)
    two = _masks_by_sample(method, world=2, batch=4)
    assert sorted(one) == sorted(two) == list(range(24))
    for index in one:
        assert torch.equal(one[index], two[index]), index
        assert one[index].shape == (method.num_crops, method.encoder.num_patches)
        assert (one[index].sum(-1) == method.encoder.num_patches - method.num_visible).all()
    crops = one[0]
    assert not torch.equal(crops[0], crops[1])  # each crop its own mask
    other_epoch = _masks_by_sample(method, world=1, batch=8, epoch=2)
    assert any(not torch.equal(one[i], other_epoch[i]) for i in one)
