"""The shared ViT: timm key names, sin-cos table layout, resizing, layer ids for lr decay."""

import numpy as np
import pytest
import timm
import torch

from pretrain.models.pos_embed import build_sincos_pos_embed, resize_pos_embed, sincos_2d
from pretrain.models.vit import VIT_SIZES, create_vit, vit_layer_id


def mae_numpy_table(dim: int, side: int) -> np.ndarray:
    """The MAE reference formula, written out independently: first half encodes the column."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    emb = np.concatenate([one_d(dim // 2, cols.astype(np.float64)), one_d(dim // 2, rows.astype(np.float64))], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


@pytest.mark.parametrize("size", ["tiny", "small", "base"])
def test_keys_equal_timm(size):
    ours = create_vit(size, img_size=64, patch_size=16)
    ref = timm.create_model(f"vit_{size}_patch16_224", pretrained=False, num_classes=0, img_size=64)
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x))


def test_sizes_table():
    assert VIT_SIZES["base"] == dict(embed_dim=768, depth=12, num_heads=12)
    assert VIT_SIZES["large"]["depth"] == 24 and VIT_SIZES["huge"]["patch_size"] == 14


def test_sincos_matches_reference_formula():
    table = build_sincos_pos_embed(64, (14, 14))[0].numpy()
    np.testing.assert_allclose(table, mae_numpy_table(64, 14), atol=1e-6)
    vit = create_vit("tiny")
    np.testing.assert_allclose(vit.pos_embed[0].detach().numpy(), mae_numpy_table(192, 14), atol=1e-6)
    assert not vit.pos_embed.requires_grad


def test_sincos_fractional_coordinates_are_differentiable():
    coords = torch.tensor([[2.0, 3.0]], requires_grad=True)
    emb = sincos_2d(coords, 32)
    emb.sum().backward()
    assert coords.grad is not None and torch.isfinite(coords.grad).all()
    table = build_sincos_pos_embed(32, (5, 5), cls_token=False)[0]
    torch.testing.assert_close(emb.detach()[0], table[2 * 5 + 3])


def test_resize_keeps_cls_row_and_grid():
    pe = build_sincos_pos_embed(32, (14, 14))
    pe[:, 0] = 7.0
    out = resize_pos_embed(pe, (16, 16))
    assert out.shape == (1, 1 + 256, 32)
    assert torch.equal(out[:, 0], pe[:, 0])
    same = resize_pos_embed(pe, (14, 14))
    assert same is pe


def test_drop_path_and_sdpa_forward_backward():
    vit = create_vit("tiny", img_size=32, patch_size=8, drop_path_rate=0.1)
    assert vit.blocks[0].attn.fused_attn  # F.scaled_dot_product_attention path
    out = vit.forward_features(torch.randn(2, 3, 32, 32))
    out.mean().backward()
    assert all(p.grad is not None for n, p in vit.named_parameters() if p.requires_grad)


def test_layer_id_for_lr_decay():
    """One rule for every layer-wise lr decay (fine-tuning, ViTDet, UperNet): embeddings 0,
    block i -> i + 1, the rest num_layers + 1; ``prefix`` places the ViT in a larger model."""
    model = create_vit("tiny", img_size=32, patch_size=8, num_classes=10, global_pool="token")
    ids = {name: vit_layer_id(name, 12) for name, _ in model.named_parameters()}
    assert {n for n, i in ids.items() if i == 0} == {"cls_token", "pos_embed", "patch_embed.proj.weight",
                                                     "patch_embed.proj.bias"}
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.11.mlp.fc2.bias"] == 12
    assert ids["norm.weight"] == ids["head.weight"] == 13
    assert vit_layer_id("backbone.net.blocks.3.attn.rel_pos_h", 12, prefix="backbone.net.") == 4
    assert vit_layer_id("backbone.net.pos_embed", 24, prefix="backbone.net.") == 0
    assert vit_layer_id("backbone.simfp_2.0.weight", 12, prefix="backbone.net.") == 13
    assert vit_layer_id("pos_embed", 12, prefix="backbone.") == 13  # outside the backbone
