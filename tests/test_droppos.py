"""DropPos as FACTS.md §1: masks, smoothing, attentive weights, loss on dropped tokens only."""
import pytest
import torch

from pretrain.models import DropPos, DropPosMasks, create_vit
from pretrain.models.droppos import sigma_at, smoothing_matrix


@pytest.fixture(scope="module")
def base_model():
    return DropPos(create_vit("base"))


def tiny(**kw):
    torch.manual_seed(0)
    return DropPos(create_vit("tiny", img_size=32, patch_size=8, depth=2), decoder_dim=64, decoder_heads=4, **kw)


def test_mask_counts_at_vit_b_defaults(base_model):
    g = torch.Generator().manual_seed(0)
    masks = base_model.sample_masks(8, g)
    assert masks.ids_keep.shape == (8, 49)
    assert masks.pos_dropped.shape == (8, 49)
    assert (masks.pos_dropped.sum(1) == 37).all()  # 12 keep their PE
    assert ((~masks.pos_dropped).sum(1) == 12).all()
    for row in masks.ids_keep:  # distinct patches
        assert row.unique().numel() == 49


def test_masks_independent_per_sample_and_reproducible(base_model):
    a = base_model.sample_masks(4, torch.Generator().manual_seed(1))
    b = base_model.sample_masks(4, torch.Generator().manual_seed(1))
    assert torch.equal(a.ids_keep, b.ids_keep) and torch.equal(a.pos_dropped, b.pos_dropped)
    sets = [frozenset(r.tolist()) for r in a.ids_keep]
    assert len(set(sets)) == 4


def test_position_head_shapes(base_model):
    assert base_model.decoder_embed.out_features == 512
    assert len(base_model.decoder_blocks) == 2
    assert base_model.decoder_blocks[0].attn.num_heads == 16
    assert base_model.decoder_pred.out_features == 196
    assert base_model.mask_pos_token.shape == (1, 1, 768)


def test_smoothing_rows_sum_to_one_peak_and_spread():
    m = smoothing_matrix((14, 14), 1.0)
    torch.testing.assert_close(m.sum(1), torch.ones(196))
    assert (m.argmax(1) == torch.arange(196)).all()
    y = 5 * 14 + 5
    # true-grid neighbours (left/right/up/down) share the same weight, exp(-1) of the peak
    for j in (y - 1, y + 1, y - 14, y + 14):
        torch.testing.assert_close(m[y, j] / m[y, y], torch.tensor(torch.e ** -1))
    # cell 13 (end of a row) is not a neighbour of cell 14 (start of the next row)
    assert m[13, 14] < 1e-3 * m[13, 13]


def test_smoothing_becomes_one_hot():
    torch.testing.assert_close(smoothing_matrix((14, 14), 0.0), torch.eye(196))
    assert smoothing_matrix((14, 14), 0.05).diagonal().min() > 0.999


def test_reference_smoothing_reproduces_released_quirk():
    ref = smoothing_matrix((14, 14), 1.0, mode="reference", img_size=224)
    assert ref.shape == (196, 196)
    # built on a 16-wide grid: cells 13 and 14 count as horizontal neighbours there
    assert ref[13, 14] > 0.05
    paper = smoothing_matrix((14, 14), 1.0)
    assert not torch.allclose(ref, paper)


def test_sigma_schedule():
    assert sigma_at(0, 10, 1.0) == 1.0
    assert sigma_at(5.7, 10, 1.0) == pytest.approx(0.5)  # per epoch
    assert sigma_at(5.7, 10, 1.0, per_epoch=False) == pytest.approx(0.43)
    assert sigma_at(10, 10, 1.0) == 0.0


def test_attentive_weights_non_negative_sum_to_one():
    m = tiny()
    imgs = torch.randn(3, 3, 32, 32)
    masks = m.sample_masks(3, torch.Generator().manual_seed(0))
    tokens = m.encoder.embed_patches(imgs)
    w = m.attentive_weights(tokens, masks.ids_keep)
    assert w.shape == masks.ids_keep.shape
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(1), torch.ones(3))


@pytest.mark.parametrize("attentive", [True, False])
def test_tokens_that_kept_their_position_give_no_loss(attentive):
    """Gradient check: a kept-PE token's logits get zero gradient, dropped ones do not."""
    m = tiny(attentive=attentive)
    imgs = torch.randn(2, 3, 32, 32)
    masks = m.sample_masks(2, torch.Generator().manual_seed(3))
    tokens = m.encoder.embed_patches(imgs)
    latent = m.forward_encoder(tokens, masks)
    logits = m.forward_head(latent)
    logits.retain_grad()
    weights = masks.pos_dropped.float()
    if attentive:
        weights = weights * m.attentive_weights(tokens.detach(), masks.ids_keep)
    loss, _ = m.loss(logits, masks.ids_keep, weights)
    loss.backward()
    per_token = logits.grad.abs().sum(-1)
    assert (per_token[~masks.pos_dropped] == 0).all()
    assert (per_token[masks.pos_dropped] > 0).all()


def test_precomputed_masks_and_accuracy():
    m = tiny()
    imgs = torch.randn(2, 3, 32, 32)
    ids = torch.stack([torch.arange(4), torch.arange(4, 8)])
    dropped = torch.tensor([[True, True, False, True], [False, True, True, True]])
    out = m(imgs, masks=DropPosMasks(ids, dropped))
    assert torch.equal(out.outputs["ids_keep"], ids)
    assert out.outputs["logits"].shape == (2, 4, 16)
    assert 0.0 <= float(out.metrics["pos_acc"]) <= 1.0
    # perfect logits -> accuracy 1 and a loss equal to the target entropy floor
    perfect = torch.full((2, 4, 16), -30.0)
    perfect.scatter_(2, ids.unsqueeze(-1), 30.0)
    m.set_progress(100, 10)  # sigma decayed to 0: one-hot targets
    loss, acc = m.loss(perfect, ids, dropped.float())
    assert float(acc) == 1.0 and float(loss) < 1e-6


def test_mask_pos_token_replaces_dropped_embeddings():
    m = tiny(attentive=False)
    imgs = torch.randn(1, 3, 32, 32)
    ids = torch.arange(4).unsqueeze(0)
    keep_all = DropPosMasks(ids, torch.zeros(1, 4, dtype=torch.bool))
    drop_all = DropPosMasks(ids, torch.ones(1, 4, dtype=torch.bool))
    tokens = m.encoder.embed_patches(imgs)
    a = m.forward_encoder(tokens, keep_all)
    b = m.forward_encoder(tokens, drop_all)
    assert not torch.allclose(a, b)
    with torch.no_grad():
        m.mask_pos_token.copy_(m.encoder.pos_embed[:, 1:2])
    # with the token equal to cell 0's PE, dropping only token 0 changes nothing
    one = DropPosMasks(ids, torch.tensor([[True, False, False, False]]))
    torch.testing.assert_close(m.forward_encoder(tokens, one), a)
