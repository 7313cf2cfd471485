"""MAE: masked autoencoders (He et al., CVPR 2022), the first baseline.

The encoder sees only the visible patches (with their sin-cos positions); a
light decoder with its own fixed sin-cos table and a learnable mask token
reconstructs per-patch normalised pixels; MSE counts masked patches only.
State-dict keys equal the reference model's once ``encoder.`` is removed.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from .masking import gather_tokens, keep_from_noise, num_kept
from .method import MethodOutput, PretrainMethod
from .pos_embed import build_sincos_pos_embed
from . import option_checks as check
from .registry import register_method
from .vit import VisionTransformer


def patchify(imgs: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, patch*patch*C] in (row, col, channel) order (reference layout)."""
    b, c, h, w = imgs.shape
    gh, gw = h // patch, w // patch
    x = imgs.reshape(b, c, gh, patch, gw, patch)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, gh * gw, patch * patch * c)


def unpatchify(x: torch.Tensor, patch: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """Inverse of ``patchify``: [B, N, p*p*C] -> [B, C, H, W]."""
    b = x.shape[0]
    gh, gw = grid
    x = x.reshape(b, gh, gw, patch, patch, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, channels, gh * patch, gw * patch)


def normalized_pixel_targets(imgs: torch.Tensor, patch: int, norm_pix: bool = True) -> torch.Tensor:
    """Per-patch pixels, optionally normalised by each patch's mean and variance."""
    target = patchify(imgs, patch)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    return target


def masked_pixel_loss(imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, patch: int, norm_pix: bool) -> torch.Tensor:
    """Mean over masked patches of the per-patch pixel MSE (MAE's ``forward_loss``), in float32."""
    target = normalized_pixel_targets(imgs.float(), patch, norm_pix)
    per_patch = (pred.float() - target).square().mean(-1)  # [B, N]
    m = mask.float()
    return (per_patch * m).sum() / m.sum()


class PixelLoss:
    """``forward_loss`` of the pixel-reconstruction methods (MAE, MAE+ / AdPE); needs ``patch``, ``norm_pix_loss``."""

    patch: int
    norm_pix_loss: bool

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on (normalised) pixels of the masked patches: pred [B, N, p*p*3], mask [B, N] True = masked."""
        return masked_pixel_loss(imgs, pred, mask, self.patch, self.norm_pix_loss)


def build_pixel_decoder(
    owner: nn.Module,
    enc_dim: int,
    grid: tuple[int, int],
    patch: int,
    dec_dim: int = 512,
    depth: int = 8,
    heads: int = 16,
    in_chans: int = 3,
    block_fn: type[nn.Module] = Block,
) -> None:
    """Register the reference decoder's parameters on ``owner`` with their reference names."""
    norm_layer = partial(nn.LayerNorm, eps=1e-6)
    owner.decoder_embed = nn.Linear(enc_dim, dec_dim)
    owner.decoder_pos_embed = nn.Parameter(build_sincos_pos_embed(dec_dim, grid, cls_token=True), requires_grad=False)
    owner.decoder_blocks = nn.ModuleList(
        [block_fn(dec_dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
    )
    owner.decoder_norm = norm_layer(dec_dim)
    owner.decoder_pred = nn.Linear(dec_dim, patch * patch * in_chans)


@register_method("mae")
class MAE(PixelLoss, PretrainMethod):
    """Masked autoencoder around the suite's ViT.

    Args:
        encoder: the ViT.
        mask_ratio: share of patches hidden from the encoder.
        decoder_dim, decoder_depth, decoder_heads: the pixel decoder.
        norm_pix_loss: regress per-patch normalised pixels.
    """

    @classmethod
    def check_config(cls, cfg) -> None:
        """The mask ratio keeps and masks a patch on this grid."""
        check.ratio_keeping("mae.mask_ratio", cfg.mae.mask_ratio, check.grid_patches(cfg), "patches")
        check.flag("mae.norm_pix_loss", cfg.mae.norm_pix_loss)

    def __init__(
        self,
        encoder: VisionTransformer,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.patch = encoder.patch_embed.patch_size[0]
        self.num_visible = num_kept(encoder.num_patches, mask_ratio)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        build_pixel_decoder(self, encoder.embed_dim, encoder.grid_size, self.patch, decoder_dim, decoder_depth, decoder_heads)
        self.init_weights()

    def init_weights(self) -> None:
        self.init_reference(self.mask_token)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_token"}

    def forward_decoder(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """latent [B, 1 + V, D] -> pixel predictions for all N patches [B, N, p*p*3]."""
        x = self.decoder_embed(latent)
        b, _, c = x.shape
        n = self.encoder.num_patches
        # Scatter visible tokens to their places, mask tokens elsewhere.
        full = self.mask_token.to(x.dtype).expand(b, n, c).clone()
        full.scatter_(1, ids_keep.unsqueeze(-1).expand(-1, -1, c), x[:, 1:])
        x = torch.cat([x[:, :1], full], dim=1) + self.decoder_pos_embed.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:]

    def mask_noise_lengths(self) -> tuple[int]:
        return (self.encoder.num_patches,)

    def masks_from_noise(self, noise: Sequence[torch.Tensor]) -> torch.Tensor:
        """ids_keep [B, V]: the visible patches."""
        return keep_from_noise(noise[0], self.num_visible)[0]

    def forward(
        self,
        imgs: torch.Tensor,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        """imgs [B, 3, H, W], masks = ids_keep [B, V] (drawn from ``generator`` if None) -> pixel MSE."""
        b = imgs.shape[0]
        n = self.encoder.num_patches
        ids_keep = self.sample_masks(b, generator, imgs.device) if masks is None else masks
        mask = torch.ones(b, n, dtype=torch.bool, device=imgs.device).scatter_(1, ids_keep, 0)
        tokens = self.encoder.embed_patches(imgs) + self.encoder.pos_embed_patches()
        x = gather_tokens(tokens, ids_keep)
        x = torch.cat([self.encoder.cls_with_pos(b), x], dim=1)
        latent = self.encoder.forward_encoder_tokens(x)
        pred = self.forward_decoder(latent, ids_keep)
        loss = self.forward_loss(imgs, pred, mask)
        return MethodOutput(loss=loss, metrics={"loss": loss.detach()}, outputs={"pred": pred, "mask": mask})
