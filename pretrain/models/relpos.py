"""Image relative position encoding on keys (iRPE; Wu et al., ICCV 2021), as in AdPE's MAE+.

Contextual mode, product method, on keys, one table shared by all heads: for a
query token i and a key token j on an H x W grid the attention logit gains

    bias(i, j) = (scale * q_i) . r[b(i, j)]

where ``r`` is a learnable table of ``head_dim``-vectors (``lookup_table_weight``,
[1, head_dim, num_buckets], zero at init) and ``b(i, j)`` buckets the 2-D offset
``pos_i - pos_j`` (row and column separately, then combined as a product).

Bucketing (iRPE's piecewise index, Eq. 18): an offset x stays itself while
|x| <= alpha and is log-compressed beyond, capped at beta:

    g(x) = x                                                         if |x| <= alpha
    g(x) = sign(x) * min(beta, alpha + ln(|x|/alpha) / ln(gamma/alpha) * (beta - alpha))

with iRPE's defaults alpha = 1 r, beta = 2 r, gamma = 8 r for r = 1.9
(1.9, 3.8, 15.2). Rounded, g takes the integer values -3..3 (offsets 0, +-1,
+-2..3, +-4 and beyond), so the product method has (2 * int(beta) + 1)^2 = 49
buckets; the cls token (iRPE's ``skip=1``) gets one extra learnable bucket, used
for its whole row and column: 50 entries, the AdPE reference checkpoints' shape.

Adversarial parts (AdPE), enabled per module with ``enable_adversary``; they act
only on the rows of masked query tokens (``query_mask``) and vanish at zero:

- ``embed``: a vector ``adv_token`` [1, head_dim, 1] is added to the relative
  position entries of the table (all 49 offset buckets; the cls bucket is left
  alone), so the adversary changes the attention of masked queries between the
  cls key and the patch keys.
- ``coord``: a 2-vector ``adv_shift`` (row, col) shifts the offsets of masked
  rows; the table is read at the fractional offset by bilinear interpolation
  between the buckets of the four surrounding integer offsets, so a zero shift
  gives exactly the plain encoding and gradients reach the shift wherever the
  neighbouring buckets differ. ``no_shift`` is an all-zero buffer kept for
  checkpoint compatibility.

``released=True`` (``enable_adversary``; AdPE's ``rel_adversary_impl='released'``)
computes what the released AdPE code computes instead:

- ``embed``: ``adv_token`` is added for EVERY key of a masked query row, the cls
  key included. The term ``q_i . adv`` is then constant along the row and cancels
  in the softmax: the adversary has no effect (its gradient is round-off) and the
  model is MAE+ with relative position.
- ``coord``: EVERY row (masked rows at offset + ``adv_shift``, the others at the
  plain offset) reads the table at the continuous index ``g(offset) / beta``
  (``g`` unrounded, clamped to +-beta) with ``F.grid_sample(align_corners=False,
  padding_mode='zeros')`` on the 7 x 7 view of the 49 offset buckets, the (row,
  col) index passed as grid_sample's (x, y): the table comes out transposed, and
  even at zero shift the encoding differs from the integer buckets (offset 0 maps
  to the centre bucket, offset 1 to 0.92 of the way to the next one).

Attention runs through ``F.scaled_dot_product_attention`` with the bias as an
additive float mask (no custom op); ``fused_attn = False`` takes timm's explicit path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, Block

from .pos_embed import grid_coords

ADVERSARY_MODES = ("embed", "coord")
DEFAULT_RATIO = 1.9


# --------------------------------------------------------------------------- bucketing
@dataclass(frozen=True)
class PiecewiseIndex:
    """iRPE's piecewise index function g with coefficients alpha < beta < gamma."""

    alpha: float
    beta: float
    gamma: float

    @classmethod
    def from_ratio(cls, ratio: float = DEFAULT_RATIO) -> "PiecewiseIndex":
        """iRPE's defaults: alpha = r, beta = 2 r, gamma = 8 r."""
        return cls(1.0 * ratio, 2.0 * ratio, 8.0 * ratio)

    @property
    def max_index(self) -> int:
        """Largest bucket offset per axis: int(beta) (3 for r = 1.9)."""
        return int(self.beta)

    @property
    def side(self) -> int:
        """Buckets per axis: 2 * int(beta) + 1 (7 for r = 1.9)."""
        return 2 * self.max_index + 1

    def continuous(self, rel: torch.Tensor) -> torch.Tensor:
        """Unrounded g(x) (float, differentiable)."""
        rel = rel.float() if not rel.is_floating_point() else rel
        a = rel.abs()
        far = self.alpha + torch.log(a.clamp_min(self.alpha) / self.alpha) / math.log(self.gamma / self.alpha) * (
            self.beta - self.alpha
        )
        return torch.where(a <= self.alpha, rel, torch.sign(rel) * far.clamp(max=self.beta))

    def bucket(self, rel: torch.Tensor) -> torch.Tensor:
        """iRPE's integer index of integer offsets: round(g(x)), capped at int(beta): long."""
        rel = rel.float() if not rel.is_floating_point() else rel
        a = rel.abs()
        far = self.alpha + torch.log(a.clamp_min(self.alpha) / self.alpha) / math.log(self.gamma / self.alpha) * (
            self.beta - self.alpha
        )
        far = far.round().clamp(max=float(self.max_index))
        return torch.where(a <= self.alpha, rel.round(), torch.sign(rel) * far).long()

    def product_bucket(self, diff: torch.Tensor) -> torch.Tensor:
        """Product-method bucket of (row, col) offsets [..., 2] -> [...] in [0, side^2)."""
        m = self.max_index
        return (self.bucket(diff[..., 0]) + m) * self.side + (self.bucket(diff[..., 1]) + m)


def num_rel_buckets(ratio: float = DEFAULT_RATIO, skip: int = 1) -> int:
    """Table entries: (2 int(2 r) + 1)^2 offset buckets plus one per skip (cls) token: 50 by default."""
    return PiecewiseIndex.from_ratio(ratio).side ** 2 + skip


def grid_offsets(grid_size: tuple[int, int], device=None) -> torch.Tensor:
    """Query-minus-key (row, col) offsets of all patch pairs, row-major: [N, N, 2] float."""
    pos = grid_coords(grid_size, device=device)
    return pos[:, None, :] - pos[None, :, :]


def pad_skip(ids: torch.Tensor, skip: int, cls_bucket: int) -> torch.Tensor:
    """Give the ``skip`` leading (cls) rows and columns the extra bucket: [N, N] -> [skip+N, skip+N]."""
    if skip == 0:
        return ids
    return F.pad(ids, (skip, 0, skip, 0), value=cls_bucket)


def bucket_ids_2d(grid_size: tuple[int, int], skip: int = 1, index: PiecewiseIndex | None = None, device=None) -> torch.Tensor:
    """Bucket of every (query, key) pair on a grid with ``skip`` leading cls tokens: [L, L] long."""
    index = index or PiecewiseIndex.from_ratio()
    ids = index.product_bucket(grid_offsets(grid_size, device))
    return pad_skip(ids, skip, index.side ** 2)


# --------------------------------------------------------------------------- the encoding
class KeyRelPos(nn.Module):
    """Contextual relative position encoding on keys: attention bias [B, H, L, L].

    Args:
        head_dim: width of one head.
        num_heads: heads of the attention it serves.
        shared_heads: one table for all heads (iRPE/AdPE default) or one per head.
        ratio: iRPE's bucket ratio r (alpha, beta, gamma = r, 2 r, 8 r).
        skip: leading non-spatial tokens (the cls token) with their own bucket.
    """

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        shared_heads: bool = True,
        ratio: float = DEFAULT_RATIO,
        skip: int = 1,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.index = PiecewiseIndex.from_ratio(ratio)
        self.skip = skip
        self.num_buckets = self.index.side ** 2 + skip
        table_heads = 1 if shared_heads else num_heads
        self.lookup_table_weight = nn.Parameter(torch.zeros(table_heads, head_dim, self.num_buckets))
        self.adversary: str | None = None
        self.released = False
        self._ids_cache: dict[tuple, torch.Tensor] = {}

    def enable_adversary(self, mode: str, released: bool = False) -> None:
        """Add AdPE's adversarial parameters (zero: the encoding is unchanged until they move).

        ``released``: compute what the released AdPE code computes (module docstring).
        """
        if mode not in ADVERSARY_MODES:
            raise ValueError(f"unknown relative-position adversary {mode!r}; choose one of {ADVERSARY_MODES}")
        if self.adversary is not None:
            raise RuntimeError(f"adversary already enabled ({self.adversary})")
        device = self.lookup_table_weight.device
        if mode == "embed":
            self.adv_token = nn.Parameter(torch.zeros(self.lookup_table_weight.shape[0], self.head_dim, 1, device=device))
        else:
            self.adv_shift = nn.Parameter(torch.zeros(2, device=device))  # (row, col) offset shift
            self.register_buffer("no_shift", torch.zeros(2, device=device))  # reference key; always zero
        self.adversary = mode
        self.released = bool(released)

    def bucket_ids(self, grid_size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Cached [skip+N, skip+N] bucket ids for a grid."""
        key = (tuple(grid_size), str(device))
        ids = self._ids_cache.get(key)
        if ids is None:
            ids = bucket_ids_2d(grid_size, self.skip, self.index, device)
            self._ids_cache[key] = ids
        return ids

    @staticmethod
    def _lookup(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """table [B, H, L, nb], ids [L, L] -> bias[b, h, i, j] = table[b, h, i, ids[i, j]]."""
        b, h, length, _ = table.shape
        return torch.gather(table, 3, ids.expand(b, h, length, length))

    def shifted_bias(self, table: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """Bias with every query's offsets shifted by ``adv_shift``, bilinear between buckets: [B, H, L, L]."""
        shift = self.adv_shift.float()
        base = torch.floor(shift)
        frac = shift - base  # carries the gradient
        offsets = grid_offsets(grid_size, table.device) + base  # [N, N, 2]
        out = 0.0
        for dr in (0, 1):
            wr = frac[0] if dr else 1.0 - frac[0]
            for dc in (0, 1):
                wc = frac[1] if dc else 1.0 - frac[1]
                step = torch.tensor([dr, dc], dtype=offsets.dtype, device=offsets.device)
                ids = pad_skip(self.index.product_bucket(offsets + step), self.skip, self.index.side ** 2)
                out = out + (wr * wc).to(table.dtype) * self._lookup(table, ids)
        return out

    def released_coord_bias(self, q: torch.Tensor, grid_size: tuple[int, int], shift: torch.Tensor) -> torch.Tensor:
        """The released coordinate-mode read: every row at the continuous index, grid_sample'd: [B, H, L, L].

        ``shift`` (row, col) is added to every offset; see the module docstring.
        """
        i = self.index
        n, skip, side = grid_size[0] * grid_size[1], self.skip, i.side
        offsets = grid_offsets(grid_size, q.device) + shift.float()  # [N, N, 2] (row, col)
        points = i.continuous(offsets).clamp(-i.beta, i.beta) / i.beta
        weight = self.lookup_table_weight.float()  # [T, hd, nb]
        t, hd = weight.shape[:2]
        view = weight[:, :, : side * side].reshape(1, t * hd, side, side)  # [.., row bucket, col bucket]
        # (row, col) given as grid_sample's (x, y): the row offset indexes the column axis (transposed)
        rel = F.grid_sample(view, points.unsqueeze(0), mode="bilinear", padding_mode="zeros", align_corners=False)
        rel = rel.reshape(t * hd, n, n)
        cls = weight[:, :, side * side :].reshape(t * hd, 1, 1)
        rel = torch.cat([cls.expand(-1, n, skip), rel], dim=2)
        rel = torch.cat([cls.expand(-1, skip, skip + n), rel], dim=1).reshape(t, hd, skip + n, skip + n)
        if t == 1:  # one table for all heads
            return torch.einsum("bhid,dij->bhij", q.float(), rel[0])
        return torch.einsum("bhid,hdij->bhij", q.float(), rel)

    def forward(
        self,
        q: torch.Tensor,
        grid_size: tuple[int, int],
        query_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bias for scaled queries ``q`` [B, H, L, head_dim]; ``query_mask`` [B, L] (True = masked token)."""
        length = q.shape[2]
        if length != self.skip + grid_size[0] * grid_size[1]:
            raise ValueError(f"sequence of {length} tokens does not match grid {tuple(grid_size)} + {self.skip} cls")
        if self.adversary == "coord" and self.released:
            plain = self.released_coord_bias(q, grid_size, self.adv_shift.new_zeros(2))
            if query_mask is None:
                return plain.to(q.dtype)
            shifted = self.released_coord_bias(q, grid_size, self.adv_shift)
            return torch.where(query_mask[:, None, :, None], shifted, plain).to(q.dtype)
        weight = self.lookup_table_weight.to(q.dtype)
        table = torch.matmul(q, weight)  # [B, H, L, nb]
        bias = self._lookup(table, self.bucket_ids(grid_size, q.device))
        if self.adversary is None or query_mask is None:
            return bias
        rows = query_mask[:, None, :, None]  # [B, 1, L, 1]
        if self.adversary == "embed":
            adv = torch.matmul(q, self.adv_token.to(q.dtype))  # [B, H, L, 1]
            if self.released:  # every key, cls included: constant along the row, cancels in the softmax
                return bias + adv * rows.to(q.dtype)
            spatial_keys = torch.arange(length, device=q.device) >= self.skip  # offset buckets only
            return bias + adv * (rows & spatial_keys).to(q.dtype)
        return torch.where(rows, self.shifted_bias(table, grid_size), bias)

    def extra_repr(self) -> str:
        i = self.index
        return (f"head_dim={self.head_dim}, table={tuple(self.lookup_table_weight.shape)}, alpha={i.alpha:.3g}, "
                f"beta={i.beta:.3g}, gamma={i.gamma:.3g}, skip={self.skip}, adversary={self.adversary}"
                f"{', released' if self.released else ''}")


def infer_grid(length: int) -> tuple[tuple[int, int], int]:
    """Square grid and number of leading cls tokens (0 or 1) of a token sequence (iRPE's rule)."""
    side = math.isqrt(length)
    skip = length - side * side
    if skip not in (0, 1):
        side = math.isqrt(length - 1)
        skip = length - side * side
    if skip not in (0, 1) or side == 0:
        raise ValueError(f"cannot infer a square grid from {length} tokens; set attn.grid_size")
    return (side, side), skip


class ContextualRelPosAttention(Attention):
    """timm Attention plus contextual relative position on keys (``rpe_k``).

    Keys are timm's (``qkv``, ``proj``) plus ``rpe_k.lookup_table_weight``. The grid
    is inferred from the sequence length (square, optional leading cls token)
    unless ``grid_size`` is set.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        rel_pos_ratio: float = DEFAULT_RATIO,
        rel_pos_shared_heads: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.rpe_k = KeyRelPos(self.head_dim, num_heads, shared_heads=rel_pos_shared_heads, ratio=rel_pos_ratio, skip=1)
        self.grid_size: tuple[int, int] | None = None

    def _grid(self, length: int) -> tuple[int, int]:
        if self.grid_size is not None:
            return tuple(self.grid_size)
        grid, skip = infer_grid(length)
        if skip != self.rpe_k.skip:
            raise ValueError(f"{length} tokens: expected {self.rpe_k.skip} cls token(s) before a square grid")
        return grid

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        query_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, L, C] -> [B, L, C]; ``query_mask`` [B, L] marks masked tokens for the adversary."""
        if is_causal:
            raise NotImplementedError("relative-position attention is not causal")
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, L, hd]
        q, k = self.q_norm(q), self.k_norm(k)
        bias = self.rpe_k(q * self.scale, self._grid(n), query_mask)  # [B, H, L, L]
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros_like(attn_mask, dtype=bias.dtype).masked_fill(~attn_mask, float("-inf"))
            bias = bias + attn_mask
        bias = bias.to(q.dtype)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1) + bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class ContextualRelPosBlock(Block):
    """timm pre-norm Block whose attention is ``ContextualRelPosAttention``; passes ``query_mask`` on."""

    def __init__(self, dim: int, num_heads: int, *args: Any, attn_layer: Any = ContextualRelPosAttention, **kwargs: Any) -> None:
        if not (isinstance(attn_layer, type) and issubclass(attn_layer, ContextualRelPosAttention)):
            attn_layer = ContextualRelPosAttention
        super().__init__(dim, num_heads, *args, attn_layer=attn_layer, **kwargs)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        query_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal, query_mask=query_mask)))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


def rel_pos_modules(model: nn.Module) -> list[KeyRelPos]:
    """Every relative-position encoding inside ``model``."""
    return [m for m in model.modules() if isinstance(m, KeyRelPos)]
