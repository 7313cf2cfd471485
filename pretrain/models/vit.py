"""The one Vision Transformer of the suite (Dosovitskiy et al., ICLR 2021).

It subclasses timm's ``VisionTransformer`` so that parameter names are timm's
(and the reference DropPos / MAE encoders'): ``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``,
``norm`` (or ``fc_norm`` with average pooling) and ``head``. Attention runs through
``F.scaled_dot_product_attention`` (timm's fused path).

What it adds to timm:
- a fixed 2-D sin-cos position table with a zero cls row (MAE / DropPos), frozen
  during pretraining and optionally trainable when fine-tuning;
- the pieces the pretraining methods compose: ``embed_patches`` (tokens without
  position), ``pos_embed_patches`` (the table for the current grid),
  ``forward_encoder_tokens`` (blocks + final norm on any token sequence);
- the reference (MAE) weight initialisation.

Every method (DropPos, MAE, AdPE) and every transfer task (classification,
ViTDet, UperNet) builds on this class.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer

from .pos_embed import build_sincos_pos_embed, resize_pos_embed

# Standard sizes (patch 16 unless stated); widths divisible by 4 for the sin-cos table.
VIT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, patch_size=14),
}


class VisionTransformer(TimmVisionTransformer):
    """timm ViT with a fixed sin-cos position table and token-level entry points.

    Args:
        img_size: input resolution (square int or (H, W)).
        patch_size: patch side in pixels.
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads.
        num_classes: classifier outputs (0 = no head, features only).
        global_pool: 'token' (cls) or 'avg' (mean of patch tokens + fc_norm).
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        learnable_pos_embed: let the position table train (fine-tuning); the
            pretraining methods keep it fixed.
        **kwargs: passed to timm's VisionTransformer (init_values, fc_norm, ...).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        global_pool: str = "token",
        drop_path_rate: float = 0.0,
        learnable_pos_embed: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            num_classes=num_classes,
            global_pool=global_pool,
            class_token=True,
            pos_embed="learn",
            drop_path_rate=drop_path_rate,
            **kwargs,
        )
        with torch.no_grad():
            self.pos_embed.copy_(build_sincos_pos_embed(embed_dim, self.grid_size, cls_token=True))
        self.pos_embed.requires_grad_(learnable_pos_embed)

    # ------------------------------------------------------------------ shapes
    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    @property
    def num_patches(self) -> int:
        h, w = self.grid_size
        return h * w

    # ------------------------------------------------------------- init (MAE)
    def init_weights_mae(self) -> None:
        """Reference pretraining init: xavier-uniform linears and patch projection,
        normal(0.02) cls token, unit LayerNorms; the sin-cos table is rebuilt."""
        with torch.no_grad():
            self.pos_embed.copy_(build_sincos_pos_embed(self.embed_dim, self.grid_size, cls_token=True))
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(self.patch_embed.proj.bias)
            nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_norm)

    # ------------------------------------------------------- token interfaces
    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> patch tokens without position [B, N, D]."""
        return self.patch_embed(x)

    def pos_embed_patches(self, grid_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Position table of the patch rows [1, N, D] (cls row excluded), resized if needed."""
        pe = self.pos_embed
        if grid_size is not None and tuple(grid_size) != self.grid_size:
            pe = resize_pos_embed(pe, grid_size, num_prefix_tokens=1, old_grid=self.grid_size)
        return pe[:, 1:]

    def cls_with_pos(self, batch: int) -> torch.Tensor:
        """cls token plus its (zero) position row, expanded: [B, 1, D]."""
        return (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)

    def forward_encoder_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Run blocks and the final norm on an already embedded sequence [B, L, D]."""
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}


def init_linear_and_norm(m: nn.Module) -> None:
    """MAE init: xavier-uniform Linear weights, zero biases, unit LayerNorm."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        if m.weight is not None:
            nn.init.ones_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def vit_layer_id(name: str, num_layers: int, prefix: str = "") -> int:
    """Depth of a ViT parameter for layer-wise lr decay (BEiT / MAE rule), by its timm name.

    0 for the embeddings (``cls_token``, ``pos_embed``, ``patch_embed.*``), ``i + 1`` for
    ``blocks.{i}.*`` and ``num_layers + 1`` for everything else (final norm, heads, necks).
    ``prefix`` is where the ViT sits in a larger model (``"backbone.net."`` in ViTDet); a
    name outside it counts as "everything else". The lr scale is then
    ``decay ** (num_layers + 1 - layer_id)``.
    """
    if not name.startswith(prefix):
        return num_layers + 1
    name = name[len(prefix):]
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed."):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def create_vit(size: str = "base", rel_pos: bool = False, **kwargs: Any) -> VisionTransformer:
    """Build a ViT by size name ('tiny', 'small', 'base', 'large', 'huge').

    Keyword arguments override the size's defaults (e.g. ``patch_size``, ``img_size``).
    ``rel_pos=True`` gives every block contextual relative position on keys
    (``pretrain.models.relpos``, AdPE's MAE+ "rel" encoders): the same keys plus
    ``blocks.{i}.attn.rpe_k.lookup_table_weight``; the sin-cos table stays.
    """
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; choose one of {sorted(VIT_SIZES)}")
    args = dict(VIT_SIZES[size])
    if rel_pos:
        from .relpos import ContextualRelPosAttention, ContextualRelPosBlock

        args.update(block_fn=ContextualRelPosBlock, attn_layer=ContextualRelPosAttention)
    args.update(kwargs)
    return VisionTransformer(**args)
