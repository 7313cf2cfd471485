"""The suite's ViT run as a plain single-scale detection backbone (ViTDet, Li et al., ECCV 2022).

ViTDet ("Exploring Plain Vision Transformer Backbones for Object Detection") keeps the
pretrained ViT unchanged except for:
- windowed self-attention (non-overlapping windows, padded to a multiple of the window
  size) in most blocks and global attention in a few (ViT-B: 2, 5, 8, 11; ViT-L: 5, 11, 17,
  23), so that 1024 px inputs (a 64 x 64 grid) stay affordable;
- decomposed relative position biases (MViTv2) in every block, zero-initialised, with
  tables of ``2 * window - 1`` rows for window blocks and ``2 * grid - 1`` for global ones
  (linearly interpolated when the attended size differs);
- the pretrained absolute position table (224 px, cls row included) resized bicubically to
  the input grid at every forward;
- no cls token and no final norm.

The encoder subclasses ``pretrain.models.vit.VisionTransformer`` (itself timm's), with timm
``Block``/``Attention`` subclasses, so parameter names are the pretraining ones and a
timm-named encoder state dict loads by name (``patch_embed.proj``, ``pos_embed``,
``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``); only
``blocks.{i}.attn.rel_pos_{h,w}`` are new. Tokens travel as ``[B, H, W, C]`` maps.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from timm.models.vision_transformer_sam import get_decomposed_rel_pos_bias, window_partition, window_unpartition
from torch.utils.checkpoint import checkpoint

from pretrain.models.vit import VIT_SIZES, VisionTransformer

# ViTDet's global-attention blocks per depth (every 4th of 12, every 6th of 24 / 32).
GLOBAL_BLOCKS: dict[int, tuple[int, ...]] = {
    12: (2, 5, 8, 11),
    24: (5, 11, 17, 23),
    32: (7, 15, 23, 31),
}


class DecomposedRelPosAttention(Attention):
    """timm ``Attention`` on a [B, H, W, C] map with optional decomposed relative positions.

    Keeps timm's parameter names (``qkv``, ``proj``) and adds ``rel_pos_h`` / ``rel_pos_w``
    (``init_rel_pos``). The bias, ``<q_ij, R_h[i - m]> + <q_ij, R_w[j - n]>`` with the
    unscaled query (tables linearly resized when the map is not the size they were made
    for), is timm's SAM / ViTDet ``get_decomposed_rel_pos_bias``; the fused path passes it
    to ``F.scaled_dot_product_attention`` as an additive mask.
    """

    def __init__(self, dim: int, num_heads: int = 8, **kwargs: Any) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.register_parameter("rel_pos_h", None)
        self.register_parameter("rel_pos_w", None)

    def init_rel_pos(self, size: tuple[int, int]) -> None:
        """Create zero-initialised tables for attention over an ``size`` (H, W) token map."""
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * size[0] - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * size[1] - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        n = h * w
        x = x.reshape(b, n, -1)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, N, C]
        q, k = self.q_norm(q), self.k_norm(k)
        bias = None
        if self.rel_pos_h is not None:  # timm's helper wants the heads in the batch: [B * heads, N, C]
            bias = get_decomposed_rel_pos_bias(q.flatten(0, 1), self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
            bias = bias.view(b, self.num_heads, n, n)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        x = self.norm(x)
        x = self.proj_drop(self.proj(x))
        return x.reshape(b, h, w, -1)


class WindowedBlock(Block):
    """timm pre-norm ``Block`` on [B, H, W, C] maps, attending within windows or globally.

    Args:
        window_size: window side in tokens; 0 = global attention.
        rel_pos_size: token map (H, W) the relative tables are sized for (the window for
            window blocks, the input grid for global ones); None = no relative positions.
        **kwargs: timm ``Block`` arguments (dim, num_heads, drop_path, norm_layer, ...).
    """

    def __init__(
        self,
        *args: Any,
        window_size: int = 0,
        rel_pos_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs["attn_layer"] = DecomposedRelPosAttention
        super().__init__(*args, **kwargs)
        self.window_size = window_size
        if rel_pos_size is not None:
            self.attn.init_rel_pos(rel_pos_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        y = self.norm1(x)
        if self.window_size > 0:  # timm's (zero-padded) window partition and its inverse
            y, padded = window_partition(y, self.window_size)
            y = window_unpartition(self.attn(y), self.window_size, (h, w), padded)
        else:
            y = self.attn(y)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _make_block(
    *args: Any,
    depth: int = 0,
    window_size: int,
    window_block_indexes: Sequence[int],
    grid: tuple[int, int],
    use_rel_pos: bool,
    **kwargs: Any,
) -> WindowedBlock:
    """Block factory for timm: ``depth`` is the block index timm passes in."""
    windowed = depth in window_block_indexes
    size = (window_size, window_size) if windowed else grid
    return WindowedBlock(
        *args,
        depth=depth,
        window_size=window_size if windowed else 0,
        rel_pos_size=size if use_rel_pos else None,
        **kwargs,
    )


class ViTDetEncoder(VisionTransformer):
    """The suite's ViT as a stride-16 feature-map backbone with windowed attention.

    Args:
        img_size: training input side (sizes the global blocks' relative tables: 1024 -> 64).
        pretrain_img_size: side the absolute position table was pretrained at (224 -> 197 rows).
        patch_size: patch side in pixels (the output stride).
        window_size: window side in tokens for the windowed blocks.
        window_block_indexes: blocks with windowed attention; the others are global.
        use_rel_pos: add decomposed relative position biases.
        use_act_checkpoint: recompute block activations in backward (saves memory).
        **kwargs: the ViT's shape and options, as ``pretrain.models.vit.VisionTransformer``
            takes them (``embed_dim`` 768, ``depth`` 12, ``num_heads`` 12, ``mlp_ratio`` 4,
            ``drop_path_rate`` 0 by default; ``norm_layer``, ...).
    Output: [B, embed_dim, H / patch, W / patch].
    """

    def __init__(
        self,
        img_size: int = 1024,
        pretrain_img_size: int = 224,
        patch_size: int = 16,
        window_size: int = 14,
        window_block_indexes: Sequence[int] = (0, 1, 3, 4, 6, 7, 9, 10),
        use_rel_pos: bool = True,
        use_act_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        grid = (img_size // patch_size, img_size // patch_size)
        block_fn = partial(
            _make_block,
            window_size=window_size,
            window_block_indexes=tuple(window_block_indexes),
            grid=grid,
            use_rel_pos=use_rel_pos,
        )
        super().__init__(
            img_size=pretrain_img_size,
            patch_size=patch_size,
            learnable_pos_embed=True,
            block_fn=block_fn,
            dynamic_img_size=True,  # any input size; patch_embed returns [B, H, W, C]
            final_norm=False,  # ViTDet uses no final norm
            **kwargs,
        )
        self.cls_token = None  # ViTDet has no cls token (its position row stays in pos_embed)
        self.window_size = window_size
        self.window_block_indexes = tuple(window_block_indexes)
        self.use_act_checkpoint = use_act_checkpoint
        self.patch_size = patch_size
        if use_rel_pos:  # ViTDet's zero init (timm's init may have touched them)
            for blk in self.blocks:
                nn.init.zeros_(blk.attn.rel_pos_h)
                nn.init.zeros_(blk.attn.rel_pos_w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # [B, H, W, C]
        b, h, w, c = x.shape
        x = x + self.pos_embed_patches((h, w)).reshape(1, h, w, c)
        for blk in self.blocks:
            if self.use_act_checkpoint and self.training:
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x.permute(0, 3, 1, 2)  # [B, C, H, W]


def create_vitdet_encoder(size: str = "base", **kwargs: Any) -> ViTDetEncoder:
    """ViTDet encoder by ViT size name, with ViTDet's global blocks for that depth."""
    args = dict(VIT_SIZES[size])
    args.update(kwargs)
    depth = args.get("depth", 12)
    if "window_block_indexes" not in args:
        args["window_block_indexes"] = [i for i in range(depth) if i not in GLOBAL_BLOCKS[depth]]
    return ViTDetEncoder(**args)
