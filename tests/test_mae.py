"""MAE baseline on the shared ViT."""
import torch

from pretrain.models import MAE, create_vit
from pretrain.models.mae import normalized_pixel_targets, patchify, unpatchify


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 32, 32)
    p = patchify(x, 8)
    assert p.shape == (2, 16, 192)
    torch.testing.assert_close(unpatchify(p, 8, (4, 4)), x)
    t = normalized_pixel_targets(x, 8)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)


def test_mae_shapes_and_masked_only_loss():
    torch.manual_seed(0)
    m = MAE(create_vit("tiny", img_size=32, patch_size=8, depth=2), decoder_dim=64, decoder_depth=2, decoder_heads=4)
    assert len(m.decoder_blocks) == 2 and m.mask_token.shape == (1, 1, 64)
    imgs = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[0, 5, 10, 15], [1, 2, 3, 4]])
    out = m(imgs, masks=ids)
    assert out.outputs["pred"].shape == (2, 16, 192)
    mask = out.outputs["mask"]
    assert mask.sum() == 2 * 12 and not mask[0, 5]
    pred = out.outputs["pred"]
    pred.retain_grad()
    out.loss.backward()
    g = pred.grad.abs().sum(-1)
    assert (g[~mask] == 0).all() and (g[mask] > 0).all()


def test_default_is_reference_mae_base():
    m = MAE(create_vit("base"))
    assert len(m.decoder_blocks) == 8 and m.decoder_pred.out_features == 768
    assert len(m.state_dict()) == 254
