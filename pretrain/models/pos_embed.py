"""Fixed 2-D sine-cosine position embeddings (MAE / DropPos convention) and resizing.

The layout follows the reference code so that its checkpoints and ours hold the
same numbers: for a patch at grid cell (row, col) the first half of the channels
encodes ``col`` and the second half encodes ``row``; each half is
``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 1 / 10000 ** (k / (dim / 4))``.
Coordinates may be fractional, which the AdPE coordinate mode relies on.
"""
from __future__ import annotations

import math

import torch
from timm.layers import resample_abs_pos_embed


def sincos_2d(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """Differentiable 2-D sin-cos embedding of fractional (row, col) coordinates.

    Args:
        coords: [..., 2] tensor of (row, col) grid coordinates (float).
        dim: embedding width, divisible by 4.
    Returns:
        [..., dim] embedding; channels [:dim/2] encode col, [dim/2:] encode row.
    """
    if dim % 4 != 0:
        raise ValueError(f"2-D sin-cos position embedding needs dim % 4 == 0, got {dim}")
    quarter = dim // 4
    omega = torch.arange(quarter, device=coords.device, dtype=coords.dtype) / quarter
    omega = 1.0 / (10000.0 ** omega)  # [dim/4]
    row = coords[..., 0:1] * omega  # [..., dim/4]
    col = coords[..., 1:2] * omega
    return torch.cat([col.sin(), col.cos(), row.sin(), row.cos()], dim=-1)


def grid_coords(grid_size: tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Row-major (row, col) coordinates of an H x W grid: [H*W, 2]."""
    h, w = grid_size
    rows = torch.arange(h, device=device, dtype=dtype)
    cols = torch.arange(w, device=device, dtype=dtype)
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=-1)


def build_sincos_pos_embed(
    dim: int,
    grid_size: tuple[int, int],
    cls_token: bool = True,
) -> torch.Tensor:
    """Fixed position table [1, (1 if cls) + H*W, dim]; the cls row is zero."""
    coords = grid_coords(grid_size, dtype=torch.float64)
    emb = sincos_2d(coords, dim).float()  # [H*W, dim]
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb.unsqueeze(0)


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Bicubically resample an absolute position table to ``new_grid`` (timm's resampler).

    The first ``num_prefix_tokens`` rows (cls) are kept unchanged.
    pos_embed: [1, prefix + H*W, D] -> [1, prefix + H'*W', D].
    """
    n = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(math.isqrt(n))
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position rows; pass old_grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed,
        new_size=list(new_grid),
        old_size=list(old_grid),
        num_prefix_tokens=num_prefix_tokens,
        interpolation="bicubic",
        antialias=False,
    )
