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
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from pretrain.models.vit import VIT_SIZES, VisionTransformer

# ViTDet's global-attention blocks per depth (every 4th of 12, every 6th of 24 / 32).
GLOBAL_BLOCKS: dict[int, tuple[int, ...]] = {
    12: (2, 5, 8, 11),
    24: (5, 11, 17, 23),
    32: (7, 15, 23, 31),
}


# ---------------------------------------------------------------- windows
def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, H, W, C] -> windows [B * nW, window, window, C] (zero-padded), padded (Hp, Wp)."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of ``window_partition``: [B * nW, window, window, C] -> [B, H, W, C]."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous()


# ------------------------------------------------------ relative position
def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather the relative-position rows for every (query, key) index pair along one axis.

    rel_pos: [L, C] table; linearly resized to ``2 * max(q_size, k_size) - 1`` rows if needed.
    Returns [q_size, k_size, C].
    """
    rows = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != rows:
        rel_pos = F.interpolate(rel_pos.t().unsqueeze(0), size=rows, mode="linear")  # [1, C, rows]
        rel_pos = rel_pos.squeeze(0).t()
    # Scale coordinates with the shorter side when query and key sizes differ.
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_hw: tuple[int, int],
    k_hw: tuple[int, int],
) -> torch.Tensor:
    """Additive attention bias of decomposed relative positions (MViTv2 / ViTDet).

    bias[q=(i, j), k=(m, n)] = <q_ij, R_h[i - m]> + <q_ij, R_w[j - n]> with the unscaled query.
    q: [B, heads, Hq * Wq, C] -> bias [B, heads, Hq * Wq, Hk * Wk].
    """
    (qh, qw), (kh, kw) = q_hw, k_hw
    r_h = relative_position_table(qh, kh, rel_pos_h)  # [qh, kh, C]
    r_w = relative_position_table(qw, kw, rel_pos_w)  # [qw, kw, C]
    b, heads, _, c = q.shape
    r_q = q.reshape(b, heads, qh, qw, c)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, r_h.to(q.dtype))  # [B, heads, qh, qw, kh]
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, r_w.to(q.dtype))  # [B, heads, qh, qw, kw]
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # [B, heads, qh, qw, kh, kw]
    return bias.reshape(b, heads, qh * qw, kh * kw)


class RelPosAttention(Attention):
    """timm ``Attention`` on a [B, H, W, C] map with optional decomposed relative positions.

    Keeps timm's parameter names (``qkv``, ``proj``) and adds ``rel_pos_h`` / ``rel_pos_w``
    (``init_rel_pos``). The fused path passes the relative-position bias to
    ``F.scaled_dot_product_attention`` as an additive mask.
    """

    def __init__(self, dim: int, num_heads: int = 8, **kwargs) -> None:
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
        if self.rel_pos_h is not None:
            bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
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
        *args,
        window_size: int = 0,
        rel_pos_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> None:
        kwargs["attn_layer"] = RelPosAttention
        super().__init__(*args, **kwargs)
        self.window_size = window_size
        if rel_pos_size is not None:
            self.attn.init_rel_pos(rel_pos_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        y = self.norm1(x)
        if self.window_size > 0:
            y, padded = window_partition(y, self.window_size)
            y = self.attn(y)
            y = window_unpartition(y, self.window_size, padded, (h, w))
        else:
            y = self.attn(y)
        x = x + self.drop_path1(self.ls1(y))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def _make_block(
    *args,
    depth: int = 0,
    window_size: int,
    window_block_indexes: Sequence[int],
    grid: tuple[int, int],
    use_rel_pos: bool,
    **kwargs,
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
        patch_size, embed_dim, depth, num_heads, mlp_ratio: ViT shape.
        drop_path_rate: stochastic depth, linearly increasing over blocks.
        window_size: window side in tokens for the windowed blocks.
        window_block_indexes: blocks with windowed attention; the others are global.
        use_rel_pos: add decomposed relative position biases.
        use_act_checkpoint: recompute block activations in backward (saves memory).
        **kwargs: passed on to the ViT (e.g. ``norm_layer``).
    Output: [B, embed_dim, H / patch, W / patch].
    """

    def __init__(
        self,
        img_size: int = 1024,
        pretrain_img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        window_size: int = 14,
        window_block_indexes: Sequence[int] = (0, 1, 3, 4, 6, 7, 9, 10),
        use_rel_pos: bool = True,
        use_act_checkpoint: bool = False,
        **kwargs,
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
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path_rate=drop_path_rate,
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


def create_vitdet_encoder(size: str = "base", **kwargs) -> ViTDetEncoder:
    """ViTDet encoder by ViT size name, with ViTDet's global blocks for that depth."""
    args = dict(VIT_SIZES[size])
    args.update(kwargs)
    depth = args.get("depth", 12)
    if "window_block_indexes" not in args:
        args["window_block_indexes"] = [i for i in range(depth) if i not in GLOBAL_BLOCKS[depth]]
    return ViTDetEncoder(**args)
