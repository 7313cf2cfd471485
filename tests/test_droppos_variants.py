"""The released DropPos code's ablation variants (issue 20, item 2), each off by default.

Each test shows that its option changes exactly what it claims: the position embeddings
the encoder sees, the loss it adds or the tokens it leaves out, the order of the blocks'
input, and the state-dict keys (the released model's names).
"""
from __future__ import annotations

import pytest
import torch

from pretrain.engine.config import ConfigError, load_config
from pretrain.models import MAE, DropPos, DropPosMasks, build_method, create_vit
from pretrain.models import droppos_variants as variants
from pretrain.models.pos_embed import build_sincos_pos_embed
from pretrain.weights import load_method_weights, to_reference_layout

VARIANT_KEYS = ("mask_token_type", "drop_pos_type", "pos_weight", "norm_pix_loss", "conf_ignore", "shuffle")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models on the shared 2-core machine."""


def tiny(seed: int = 0, **kw) -> DropPos:
    """ViT-Tiny (2 blocks) on 32 px, 8 px patches: N = 16 cells, V = 4 visible, 1 keeps its PE."""
    torch.manual_seed(seed)
    return DropPos(create_vit("tiny", img_size=32, patch_size=8, depth=2), decoder_dim=64, decoder_heads=4, **kw)


def encoder_input(model: DropPos, tokens: torch.Tensor, masks: DropPosMasks) -> torch.Tensor:
    """The sequence [B, 1 + V, D] the encoder's first block receives."""
    seen = {}
    hook = model.encoder.blocks[0].register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach()))
    try:
        model.forward_encoder(tokens, masks)
    finally:
        hook.remove()
    return seen["x"]


def position_embeddings_seen(model: DropPos, imgs: torch.Tensor, masks: DropPosMasks) -> torch.Tensor:
    """What each visible token got as its position embedding: encoder input minus its patch embedding."""
    tokens = model.encoder.embed_patches(imgs).detach()
    x = encoder_input(model, tokens, masks)[:, 1:]
    return x - torch.gather(tokens, 1, masks.ids_keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def true_pe(model: DropPos, ids_keep: torch.Tensor) -> torch.Tensor:
    table = model.encoder.pos_embed_patches()[0]
    return table[ids_keep]


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def optimizer_names(model: DropPos) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in model.param_groups(0.05, 1e-3, total_batch=64) for p in g["params"]}


# ------------------------------------------------------------------ defaults and config
def test_defaults_are_off_and_in_the_default_config():
    cfg = load_config(None)
    assert {k: cfg.droppos[k] for k in VARIANT_KEYS} == {
        "mask_token_type": "param", "drop_pos_type": "droppos", "pos_weight": 1.0,
        "norm_pix_loss": True, "conf_ignore": False, "shuffle": False,
    }
    m = tiny()
    assert m.mask_noise_lengths() == (16, 4)  # no extra noise: default masks unchanged
    assert "mask_pos_token" in trainable_names(m)
    assert not any(k.startswith("aux_") or k == "mask_token" for k in m.state_dict())


@pytest.mark.parametrize("override, key", [
    ("droppos.mask_token_type=learned", "droppos.mask_token_type"),
    ("droppos.drop_pos_type=mae_pos_target", "droppos.drop_pos_type"),
    ("droppos.pos_weight=-0.5", "droppos.pos_weight"),
    ("droppos.pos_weight=nan", "droppos.pos_weight"),
    ("droppos.conf_ignore=maybe", "droppos.conf_ignore"),
    ("droppos.shuffle=2", "droppos.shuffle"),
    ("droppos.norm_pix_loss=yes_please", "droppos.norm_pix_loss"),
])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("droppos_vit_tiny_builtin.yaml", [override])


def test_every_option_builds_from_the_config():
    cfg = load_config("droppos_vit_tiny_builtin.yaml", [
        "model.img_size=32", "droppos.mask_token_type=wrong_pos", "droppos.drop_pos_type=multi_task",
        "droppos.pos_weight=0.05", "droppos.conf_ignore=true", "droppos.shuffle=true",
    ])
    m = build_method(cfg)
    options = (m.mask_token_type, m.multi_task, m.pos_weight, m.conf_ignore, m.shuffle)
    assert options == ("wrong_pos", True, 0.05, True, True)
    v = m.num_visible
    assert m.mask_noise_lengths() == (m.encoder.num_patches, v, v - m.num_pos_kept, v)
    out = m(torch.randn(2, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and {"loss_droppos", "loss_mae"} <= set(out.metrics)


# ------------------------------------------------------------------ what replaces a dropped position
def test_zeros_gives_dropped_tokens_a_zero_embedding():
    m = tiny(mask_token_type="zeros", attentive=False)
    imgs = torch.randn(2, 3, 32, 32)
    masks = m.sample_masks(2, torch.Generator().manual_seed(1))
    pe = position_embeddings_seen(m, imgs, masks)
    true = true_pe(m, masks.ids_keep)
    dropped = masks.pos_dropped
    torch.testing.assert_close(pe[~dropped], true[~dropped], atol=1e-5, rtol=0)
    torch.testing.assert_close(pe[dropped], torch.zeros_like(pe[dropped]), atol=1e-5, rtol=0)
    # no learnable replacement: mask_pos_token is kept only as the released model's (frozen, unused) key
    assert "mask_pos_token" not in trainable_names(m) | optimizer_names(m)
    before = m(imgs, masks=masks).loss
    with torch.no_grad():
        m.mask_pos_token.normal_()
    assert torch.equal(m(imgs, masks=masks).loss, before)


def test_wrong_pos_gives_each_dropped_token_a_dropped_positions_true_embedding():
    m = tiny(mask_token_type="wrong_pos", attentive=False)
    b = 64
    imgs = torch.randn(b, 3, 32, 32)
    masks = m.sample_masks(b, torch.Generator().manual_seed(2))
    pe = position_embeddings_seen(m, imgs, masks)
    true = true_pe(m, masks.ids_keep)
    moved = 0
    for i in range(b):
        d = masks.pos_dropped[i]
        torch.testing.assert_close(pe[i][~d], true[i][~d], atol=1e-5, rtol=0)  # kept tokens: own PE
        got, own = pe[i][d], true[i][d]  # [3, D] each
        match = torch.cdist(got, own).argmin(1)
        torch.testing.assert_close(got, own[match], atol=1e-5, rtol=0)  # one of the dropped cells' true PE
        assert sorted(match.tolist()) == list(range(d.sum().item()))  # ... each used once: a permutation
        moved += int((match != torch.arange(len(match))).sum())
    assert moved > 0  # the permutation moves embeddings (fixed points allowed, as the released shuffle)
    assert "mask_pos_token" not in trainable_names(m)


def test_wrong_pos_permutation_is_per_sample_and_follows_the_noise():
    pos_noise = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.4, 0.6]])
    perm_noise = torch.tensor([[0.3, 0.1, 0.2], [0.1, 0.2, 0.3]])
    src = variants.wrong_pos_sources(pos_noise, perm_noise, num_pos_kept=1)
    # sample 0: token 1 keeps; dropped in released order [3, 2, 0], permuted by argsort [1, 2, 0]
    assert src[0].tolist() == [3, 1, 0, 2]
    # sample 1: token 0 keeps; dropped [2, 3, 1] with the identity permutation
    assert src[1].tolist() == [0, 1, 2, 3]


# ------------------------------------------------------------------ multi-task
def test_multi_task_loss_is_weighted_droppos_plus_an_independent_mae_loss():
    w = 0.3
    m = tiny(drop_pos_type="multi_task", pos_weight=w, attentive=False)
    imgs = torch.randn(2, 3, 32, 32)
    masks = m.sample_masks(2, torch.Generator().manual_seed(3))
    out = m(imgs, masks=masks)
    # the DropPos part: the same weights without the auxiliary decoder
    plain = tiny(attentive=False)
    plain.load_state_dict(m.state_dict(), strict=False)
    loss_pos = plain(imgs, masks=masks).loss
    # the MAE part: the MAE method's own decoder and loss, given the auxiliary weights, on the same latent
    mae = MAE(create_vit("tiny", img_size=32, patch_size=8, depth=2), decoder_dim=64, decoder_depth=2, decoder_heads=4)
    aux = {k[len("aux_"):]: v for k, v in m.state_dict().items() if k.startswith("aux_")}
    mae.load_state_dict({**aux, "mask_token": m.mask_token.detach()}, strict=False)
    latent = m.forward_encoder(m.encoder.embed_patches(imgs), masks)
    mask = torch.ones(2, 16, dtype=torch.bool).scatter_(1, masks.ids_keep, False)
    loss_mae = mae.forward_loss(imgs, mae.forward_decoder(latent, masks.ids_keep), mask)
    torch.testing.assert_close(out.metrics["loss_droppos"], loss_pos)
    torch.testing.assert_close(out.metrics["loss_mae"], loss_mae)
    torch.testing.assert_close(out.loss, w * loss_pos + loss_mae)
    out.loss.backward()
    assert m.aux_decoder_pred.weight.grad.abs().sum() > 0 and m.decoder_pred.weight.grad.abs().sum() > 0


def test_multi_task_keys_shapes_and_released_token_rule():
    m = tiny(drop_pos_type="multi_task")
    state = m.state_dict()
    extra = {k: tuple(v.shape) for k, v in state.items() if k.startswith("aux_") or k == "mask_token"}
    blocks = {k for k in extra if k.startswith("aux_decoder_blocks.")}
    assert {k.split(".")[1] for k in blocks} == {"0", "1"}  # as deep as the position head (released)
    assert {k.replace("aux_", "", 1) for k in blocks} == {k for k in state if k.startswith("decoder_blocks.")}
    assert {k: s for k, s in extra.items() if k not in blocks} == {
        "aux_decoder_embed.weight": (64, 192), "aux_decoder_embed.bias": (64,),
        "aux_decoder_pos_embed": (1, 17, 64), "mask_token": (1, 1, 64),
        "aux_decoder_norm.weight": (64,), "aux_decoder_norm.bias": (64,),
        "aux_decoder_pred.weight": (8 * 8 * 3, 64), "aux_decoder_pred.bias": (8 * 8 * 3,),
    }
    torch.testing.assert_close(state["aux_decoder_pos_embed"], build_sincos_pos_embed(64, (4, 4), cls_token=True))
    assert "aux_decoder_pos_embed" not in trainable_names(m) and "mask_token" in trainable_names(m)
    # released: the MAE mask token is trained only with mask_token_type=param
    assert "mask_token" not in trainable_names(tiny(drop_pos_type="multi_task", mask_token_type="zeros"))


@pytest.mark.parametrize("kw", [
    {}, {"mask_token_type": "zeros"}, {"mask_token_type": "wrong_pos"}, {"conf_ignore": True}, {"shuffle": True},
    {"drop_pos_type": "multi_task"}, {"drop_pos_type": "multi_task", "mask_token_type": "zeros"},
])
def test_released_layout_state_dicts_load_strictly(kw):
    """Every variant keeps the released model's keys (flat, no ``encoder.``), so its checkpoints load."""
    src, dst = tiny(seed=1, **kw), tiny(seed=2, **kw)
    released = to_reference_layout(src.state_dict())
    assert "mask_pos_token" in released and not any(k.startswith("encoder.") for k in released)
    load_method_weights(dst, released, strict=True)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    if not kw.get("drop_pos_type"):
        assert set(src.state_dict()) == set(tiny().state_dict())


# ------------------------------------------------------------------ confidence-ignore
def test_conf_ignore_drops_exactly_the_confident_tokens():
    m = tiny(conf_ignore=True, attentive=False)
    ids = torch.tensor([[0, 5, 10, 15]])
    masks = DropPosMasks(ids, torch.tensor([[True, True, True, False]]))
    diag = torch.diagonal(m.smooth_targets)[ids[0]]  # sigma 1: the target's own-cell share, about 0.38 .. 0.60
    assert bool((diag < 0.7).all())
    # token 0: p(true) = 0.9 > diag (ignored); token 1: p(true) = 0.1 (kept);
    # token 2: p(true) just above its diag (ignored); token 3 kept its position (no loss anyway)
    p_true = torch.tensor([0.9, 0.1, float(diag[2]) + 1e-3, 0.95])
    logits = torch.empty(1, 4, 16)
    for t in range(4):
        rest = (1 - p_true[t]) / 15
        logits[0, t] = rest.log()
        logits[0, t, ids[0, t]] = p_true[t].log()
    keep = variants.unconfident(logits, ids, m.smooth_targets)
    assert keep[0].tolist() == [False, True, False, False]
    m.forward_head = lambda latent: logits  # the hand-built predictions
    out = m(torch.randn(1, 3, 32, 32), masks=masks)
    expected = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert torch.equal(out.outputs["weights"], expected)
    loss, acc = m.loss(logits, ids, expected)
    assert torch.equal(out.loss, loss) and torch.equal(out.metrics["pos_acc"], acc)
    # sigma 0 (one-hot targets, diagonal 1): only a token predicted with probability exactly 1 is ignored
    m.set_progress(100, 10)
    certain = torch.full((1, 4, 16), -200.0).scatter_(2, ids.unsqueeze(-1), 200.0)
    assert variants.unconfident(certain, ids, m.smooth_targets).tolist() == [[False] * 4]
    assert bool(variants.unconfident(logits, ids, m.smooth_targets).all())


# ------------------------------------------------------------------ shuffle
def test_shuffle_permutes_the_blocks_input_and_leaves_the_output_unchanged():
    base, shuf = tiny(attentive=False), tiny(attentive=False, shuffle=True)
    shuf.load_state_dict(base.state_dict())
    imgs = torch.randn(3, 3, 32, 32)
    masks = shuf.sample_masks(3, torch.Generator().manual_seed(4))
    assert masks.ids_shuffle is not None
    assert not torch.equal(masks.ids_shuffle, torch.arange(4).expand(3, 4))
    plain = DropPosMasks(masks.ids_keep, masks.pos_dropped)  # same masks, no shuffle

    def block_inputs(model, m):
        seen = []
        hooks = [blk.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
                 for blk in (model.encoder.blocks[0], model.decoder_blocks[0])]
        try:
            out = model(imgs, masks=m)
        finally:
            for h in hooks:
                h.remove()
        return out, seen

    out_a, (enc_a, head_a) = block_inputs(base, plain)
    out_b, (enc_b, head_b) = block_inputs(shuf, masks)
    order = masks.ids_shuffle.unsqueeze(-1)
    # the encoder's and the position head's blocks see the visible tokens in the shuffled order (cls first) ...
    torch.testing.assert_close(enc_b[:, 1:], torch.gather(enc_a[:, 1:], 1, order.expand(-1, -1, enc_a.shape[-1])))
    torch.testing.assert_close(head_b[:, 1:], torch.gather(head_a[:, 1:], 1, order.expand(-1, -1, head_a.shape[-1])),
                               atol=1e-5, rtol=1e-5)
    # ... and the predictions, restored, equal the unshuffled ones (no position anywhere in the blocks)
    torch.testing.assert_close(out_b.outputs["logits"], out_a.outputs["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_b.loss, out_a.loss, atol=1e-6, rtol=1e-6)


def test_shuffle_order_restores():
    noise = torch.rand(5, 7, generator=torch.Generator().manual_seed(5))
    ids_shuffle, ids_restore = variants.shuffle_order(noise)
    x = torch.randn(5, 7, 3)
    shuffled = torch.gather(x, 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, 3))
    assert torch.equal(torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, 3)), x)
