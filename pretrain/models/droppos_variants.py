"""The released DropPos code's ablation variants, as options of :class:`~pretrain.models.droppos.DropPos`.

Each is off by default and follows the released ``models_DropPos_mae.py`` /
``engine_pretrain.py``; its randomness comes from extra per-sample noise vectors
(``DropPos.mask_noise_lengths``), so masks stay independent of world size and workers.

- ``mask_token_type``: what replaces a dropped position embedding: ``param`` (the
  learnable ``mask_pos_token``), ``zeros``, or ``wrong_pos`` (the dropped tokens get
  the true embeddings of the sample's dropped positions, permuted uniformly among
  them: a token may keep its own, as in the released shuffle).
- ``drop_pos_type=multi_task``: an auxiliary MAE pixel decoder on the same latent
  (released keys ``aux_decoder_embed``, ``aux_decoder_pos_embed``, ``aux_decoder_blocks``,
  ``aux_decoder_norm``, ``aux_decoder_pred`` and ``mask_token``);
  loss = ``pos_weight * loss_droppos + loss_mae``.
- ``conf_ignore``: a dropped token whose predicted probability of its true cell is not
  below its smoothed target's diagonal entry gives no loss (released ``conf < diag``).
- ``shuffle``: the visible tokens enter the encoder (and so the position head) in a
  random order; the head's predictions are put back in the original order.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .mae import build_pixel_decoder
from .masking import gather_tokens
from .vit import init_linear_and_norm

MASK_TOKEN_TYPES = ("param", "zeros", "wrong_pos")
DROP_POS_TYPES = ("droppos", "multi_task")
AUX_DECODER_PARTS = ("decoder_embed", "decoder_pos_embed", "decoder_blocks", "decoder_norm", "decoder_pred")


def wrong_pos_sources(pos_noise: torch.Tensor, perm_noise: torch.Tensor, num_pos_kept: int) -> torch.Tensor:
    """Which visible token's true embedding each visible token gets under ``wrong_pos``: [B, V].

    pos_noise [B, V] is the position-drop noise (its ``num_pos_kept`` smallest keep their
    embedding: identity there); perm_noise [B, V - num_pos_kept] permutes the dropped
    tokens' own embeddings among them (argsort: a uniform permutation per sample).
    """
    b, v = pos_noise.shape
    ids_removed = torch.argsort(pos_noise, dim=1)[:, num_pos_kept:]  # [B, R], released order
    src = torch.gather(ids_removed, 1, torch.argsort(perm_noise, dim=1))
    ident = torch.arange(v, device=pos_noise.device).expand(b, v)
    return ident.clone().scatter_(1, ids_removed, src)


def replace_dropped(
    pe: torch.Tensor, pos_dropped: torch.Tensor, kind: str, token: torch.Tensor, sources: torch.Tensor | None
) -> torch.Tensor:
    """Visible tokens' position embeddings [B, V, D] with the dropped ones replaced as ``kind`` says."""
    dropped = pos_dropped.unsqueeze(-1)
    if kind == "param":
        return torch.where(dropped, token.to(pe.dtype), pe)
    if kind == "zeros":
        return torch.where(dropped, torch.zeros((), dtype=pe.dtype, device=pe.device), pe)
    if kind == "wrong_pos":
        if sources is None:
            raise ValueError("mask_token_type=wrong_pos needs masks with pos_source (DropPos.masks_from_noise makes them)")
        return gather_tokens(pe, sources)
    raise ValueError(f"unknown mask_token_type {kind!r}; choose one of {MASK_TOKEN_TYPES}")


def shuffle_order(noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-sample permutation from noise [B, V]: (ids_shuffle, ids_restore), restore undoes shuffle."""
    ids_shuffle = torch.argsort(noise, dim=1)
    return ids_shuffle, torch.argsort(ids_shuffle, dim=1)


@torch.no_grad()
def unconfident(logits: torch.Tensor, ids_keep: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``conf_ignore``'s keep mask [B, V]: True where p(true cell) < targets[true, true] (released rule).

    logits [B, V, N]; ids_keep [B, V] true cells; targets [N, N] the current smoothing matrix.
    """
    prob = F.softmax(logits.float(), dim=-1)
    conf = torch.gather(prob, 2, ids_keep.unsqueeze(-1)).squeeze(-1)
    return conf < torch.diagonal(targets)[ids_keep]


def build_aux_decoder(
    owner: nn.Module,
    enc_dim: int,
    grid: tuple[int, int],
    patch: int,
    dim: int,
    depth: int,
    heads: int,
    token_trainable: bool,
) -> None:
    """Register the multi-task MAE decoder on ``owner`` under the released names (``aux_*`` and ``mask_token``).

    ``token_trainable``: the released code trains ``mask_token`` only with ``mask_token_type=param``.
    """
    holder = nn.Module()
    build_pixel_decoder(holder, enc_dim, grid, patch, dim, depth, heads)
    for part in AUX_DECODER_PARTS:
        setattr(owner, "aux_" + part, getattr(holder, part))
    owner.mask_token = nn.Parameter(torch.zeros(1, 1, dim), requires_grad=token_trainable)


def init_aux_decoder(owner: nn.Module) -> None:
    """The MAE init of the auxiliary decoder's layers (its sin-cos table is fixed at build time)."""
    for part in ("decoder_embed", "decoder_blocks", "decoder_norm", "decoder_pred"):
        getattr(owner, "aux_" + part).apply(init_linear_and_norm)


def aux_decode(owner: nn.Module, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """Auxiliary MAE decoder: latent [B, 1 + V, D] (original token order) -> pixels of all N patches."""
    y = owner.aux_decoder_embed(latent)
    b, _, c = y.shape
    n = owner.aux_decoder_pos_embed.shape[1] - 1
    index = ids_keep.unsqueeze(-1).expand(-1, -1, c)
    patches = owner.mask_token.to(y.dtype).expand(b, n, c).scatter(1, index, y[:, 1:])
    y = torch.cat([y[:, :1], patches], dim=1) + owner.aux_decoder_pos_embed.to(y.dtype)
    for blk in owner.aux_decoder_blocks:
        y = blk(y)
    return owner.aux_decoder_pred(owner.aux_decoder_norm(y))[:, 1:]
