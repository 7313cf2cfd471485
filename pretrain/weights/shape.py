"""What a timm-named ViT encoder's tensors say about its architecture: one rule for every reader.

:func:`identify_checkpoint <pretrain.weights.identify.identify_checkpoint>`, the card
(:func:`~pretrain.weights.card.build_card`), the export targets
(:func:`~pretrain.weights.targets.encoder_arch`) and the analyses' frozen backbone
(``analysis.probes.backbone.infer_arch``) all read the architecture here:

- width: the patch embedding's output channels; depth: the highest block index + 1;
  patch size: the patch embedding's kernel;
- the patch grid: from the absolute position table, whose rows are a square grid after
  one cls row (``1 + s * s``: timm's default, MAE, DropPos, this suite) or a square grid
  alone (``s * s``: timm's ``no_embed_class`` / ``class_token=False`` models); the two
  readings never both fit a table of more than one row, so the grid is never guessed.
  Without an absolute table, BEiT's relative bias table (``(2s - 1)^2 + 3`` rows). Any
  other table (a non-square grid) gives none: its grid cannot be told from the rows alone;
- the standard size and its heads: :data:`pretrain.models.vit.VIT_SIZES`.

Which layouts can hold a table without a cls row is the reader's rule (the suite's ViT,
timm's default ViT, ViTDet and MMSegmentation need one): :attr:`EncoderShape.cls_row` says.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


@functools.lru_cache(maxsize=None)
def _sizes() -> dict[str, dict]:
    from ..models.vit import VIT_SIZES  # imported on first use: reading a checkpoint needs no model code

    return VIT_SIZES


def standard_size(embed_dim: int, depth: int) -> str | None:
    """tiny / small / base / large / huge when (width, depth) is one of ``VIT_SIZES``, else None."""
    return next((name for name, a in _sizes().items() if (a["embed_dim"], a["depth"]) == (embed_dim, depth)), None)


def standard_heads(embed_dim: int, size: str | None = None) -> int | None:
    """The heads of the standard ViT of this width (``VIT_SIZES``; of ``size`` only, when given), else None."""
    return next((a["num_heads"] for name, a in _sizes().items()
                 if a["embed_dim"] == embed_dim and size in (None, name)), None)


@dataclass(frozen=True)
class EncoderShape:
    """The architecture a timm-named encoder's tensors show."""

    embed_dim: int
    depth: int
    patch_size: int
    grid: tuple[int, int] | None  # the square patch grid of the position tables; None when they give none
    cls_row: bool | None  # whether the absolute table starts with a cls row; None without a readable one
    table_rows: int | None  # rows of the absolute position table; None without one

    @property
    def img_size(self) -> int | None:
        return self.grid[0] * self.patch_size if self.grid else None

    @property
    def size(self) -> str | None:
        return standard_size(self.embed_dim, self.depth)

    def grid_note(self) -> str | None:
        """Why there is no image size, when the tables give no grid."""
        if self.grid is not None:
            return None
        return (f"the position table's {self.table_rows} rows are not a cls row plus a square grid, nor a square "
                "grid alone" if self.table_rows else "no absolute position table and no square relative table") + \
            ": the image size is not recorded"


def _square(n: int) -> int | None:
    side = math.isqrt(max(n, 0))
    return side if side > 0 and side * side == n else None


def position_grid(encoder: dict[str, torch.Tensor]) -> tuple[tuple[int, int] | None, bool | None, int | None]:
    """(patch grid, cls row, absolute table rows) of an encoder's position tables (see the module docstring)."""
    pos = encoder.get("pos_embed")
    if pos is not None and pos.ndim == 3:
        rows = int(pos.shape[1])
        for cls_row in (True, False):
            side = _square(rows - int(cls_row))
            if side:
                return (side, side), cls_row, rows
        return None, None, rows
    if pos is not None:  # not [1, rows, D]: no grid to read
        return None, None, None
    table = next((v for k, v in encoder.items() if k.endswith("attn.relative_position_bias_table")), None)
    if table is not None:
        span = _square(int(table.shape[0]) - 3)
        if span and span % 2 == 1:
            return ((span + 1) // 2, (span + 1) // 2), None, None
    return None, None, None


def encoder_shape(encoder: dict[str, torch.Tensor]) -> EncoderShape:
    """Width, depth, patch size and grid of ``encoder`` (timm names: ``patch_embed.proj.weight``, ``blocks.*``)."""
    proj = encoder["patch_embed.proj.weight"]
    depth = 1 + max((int(k.split(".")[1]) for k in encoder if k.startswith("blocks.")), default=-1)
    grid, cls_row, rows = position_grid(encoder)
    return EncoderShape(int(proj.shape[0]), depth, int(proj.shape[-1]), grid, cls_row, rows)


def patch_grid(encoder: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """The (rows, cols) patch grid the encoder was trained on, or None when its tables do not say."""
    return position_grid(encoder)[0]


def attention_heads(encoder: dict[str, torch.Tensor], declared: int | None = None,
                    declared_by: str = "the source's config") -> tuple[int, str]:
    """(heads, where they come from): a relative bias table's columns (the weights say), else ``declared``
    (by ``declared_by``: the source's config or card, or the caller), else the standard ViT of that width,
    else a guess of 64 channels a head (the only case that the weights and the source leave open)."""
    table = encoder.get("blocks.0.attn.relative_position_bias_table")
    if table is not None and table.ndim == 2:
        return int(table.shape[1]), "the relative bias table"
    if declared:
        return int(declared), declared_by
    dim = int(encoder["patch_embed.proj.weight"].shape[0])
    standard = standard_heads(dim)
    if standard:
        return standard, f"the standard ViT of width {dim}"
    return max(1, dim // 64), f"guessed: width {dim} / 64 channels a head (the source does not say)"
