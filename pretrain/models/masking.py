"""Per-sample random masking by argsort of uniform noise (MAE, DropPos).

Every function draws from an explicit ``torch.Generator`` so runs are
reproducible and masks can be precomputed for tests, analysis and pictures.
No host synchronisation: counts are Python ints derived from shapes.
"""
from __future__ import annotations

import torch


def num_kept(total: int, drop_ratio: float) -> int:
    """How many of ``total`` items survive a drop ratio (reference: int(L * (1 - r)))."""
    if not 0.0 <= drop_ratio < 1.0:
        raise ValueError(f"drop ratio must lie in [0, 1), got {drop_ratio}")
    return int(total * (1.0 - drop_ratio))


def keep_from_noise(noise: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The masking primitive: keep the ``keep`` items of smallest noise per sample.

    noise [B, L] -> ids_keep [B, keep] (random order, as the reference) and mask
    [B, L] bool, True where an item was removed. Every method's masks come from here,
    whether the noise is drawn in the data pipeline (``engine.mask_noise``) or from a
    generator (:func:`random_keep`).
    """
    ids_keep = torch.argsort(noise, dim=1)[:, :keep]
    mask = torch.ones(noise.shape, dtype=torch.bool, device=noise.device)
    mask.scatter_(1, ids_keep, 0)  # int 0 (= False): traceable by fvcore
    return ids_keep, mask


def random_keep(
    batch: int,
    length: int,
    keep: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`keep_from_noise` on uniform noise [B, L] drawn from ``generator``."""
    return keep_from_noise(torch.rand(batch, length, generator=generator, device=device), keep)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Pick tokens per sample: x [B, L, D], ids [B, K] -> [B, K, D].

    ``x`` may have batch size 1 (a shared table); it is broadcast without a copy.
    """
    if x.shape[0] == 1 and ids.shape[0] != 1:
        return x[0][ids]
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
