"""BEiT-style relative position bias for the segmentation ViT (Bao et al., ICLR 2022).

Every block owns a table of per-head biases, one row per 2-D offset between two
patches of a ``window`` grid plus three rows for cls->patch, patch->cls and
cls->cls. The table starts at zero, so a pretrained encoder initially computes
exactly what it computed in pretraining (as in MMSeg's MAE backbone).

The bias enters fused attention (``F.scaled_dot_product_attention``) as an
additive ``attn_mask``. Grids no larger than the window read the table
directly; larger grids read a bilinearly resized copy, so any input size works.
The attention and block subclass timm's, so parameter names stay timm's
(``blocks.N.attn.qkv``, ``blocks.N.ls1.gamma``) plus
``blocks.N.attn.relative_position_bias_table``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block


def relative_position_index(grid: tuple[int, int]) -> torch.Tensor:
    """Table row for every (query, key) pair of a cls + H*W sequence: [1+HW, 1+HW] long.

    Rows 0 .. (2H-1)(2W-1)-1 are 2-D offsets; the last three are
    cls->patch, patch->cls and cls->cls.
    """
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()])  # [2, HW]
    rel = coords[:, :, None] - coords[:, None, :]  # [2, HW, HW], query minus key
    index_2d = (rel[0] + h - 1) * (2 * w - 1) + (rel[1] + w - 1)  # [HW, HW]
    num_rel = (2 * h - 1) * (2 * w - 1)
    index = torch.empty(h * w + 1, h * w + 1, dtype=torch.long)
    index[1:, 1:] = index_2d
    index[0, 1:] = num_rel  # cls query -> patch keys
    index[1:, 0] = num_rel + 1  # patch queries -> cls key
    index[0, 0] = num_rel + 2
    return index


def table_for_grid(table: torch.Tensor, window: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Re-express a window table [(2Wh-1)(2Ww-1)+3, heads] for ``grid``.

    Offsets of a smaller grid are a centred sub-block of the window's offsets;
    a larger grid bilinearly resizes the offset part. The three cls rows are kept.
    """
    (wh, ww), (h, w) = window, grid
    if (h, w) == (wh, ww):
        return table
    heads = table.shape[1]
    offsets = table[:-3].t().reshape(1, heads, 2 * wh - 1, 2 * ww - 1)
    if h <= wh and w <= ww:
        offsets = offsets[:, :, wh - h : wh + h - 1, ww - w : ww + w - 1]
    else:
        offsets = F.interpolate(offsets, size=(2 * h - 1, 2 * w - 1), mode="bilinear", align_corners=True)
    return torch.cat([offsets.reshape(heads, -1).t(), table[-3:]], dim=0)


class RelPosBiasAttention(Attention):
    """timm multi-head self-attention plus a learned relative position bias per head.

    Args:
        dim: token width.
        num_heads: attention heads.
        window: the patch grid (H, W) the bias table is laid out for (the training grid).
        qkv_bias: bias on the qkv projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: tuple[int, int],
        qkv_bias: bool = True,
    ) -> None:
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.window = tuple(window)
        num_rows = (2 * self.window[0] - 1) * (2 * self.window[1] - 1) + 3
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_rows, num_heads))

    def rel_pos_bias(self, grid: tuple[int, int], index: torch.Tensor) -> torch.Tensor:
        """Bias [heads, L, L] for a cls + grid sequence, given ``relative_position_index(grid)``."""
        table = table_for_grid(self.relative_position_bias_table, self.window, grid)
        length = index.shape[0]
        return table[index.reshape(-1)].reshape(length, length, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], index: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x [B, 1+HW, D] -> [B, 1+HW, D]; ``index`` is ``relative_position_index(grid)``."""
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, L, head_dim]
        bias = self.rel_pos_bias(grid, index).unsqueeze(0).to(q.dtype)  # [1, heads, L, L]
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, L, self.attn_dim)
        return self.proj_drop(self.proj(x))


class RelPosBiasBlock(Block):
    """timm pre-norm block whose attention takes the relative position bias.

    Construct it like timm's ``Block`` plus ``window`` (the training patch grid);
    its attention is a ``RelPosBiasAttention`` with the same weights' names.
    """

    def __init__(self, *args, window: tuple[int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attn = RelPosBiasAttention(self.norm1.normalized_shape[0], self.attn.num_heads, window, qkv_bias=True)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], index: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """x [B, 1+HW, D] -> [B, 1+HW, D]; attention gets the bias of ``grid`` (rows in ``index``)."""
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), grid, index)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
