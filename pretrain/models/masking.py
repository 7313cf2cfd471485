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


def random_shuffle(
    batch: int,
    length: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Independent random permutation of ``range(length)`` per sample: [B, L] int64."""
    noise = torch.rand(batch, length, generator=generator, device=device)
    return torch.argsort(noise, dim=1)


def random_keep(
    batch: int,
    length: int,
    keep: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``keep`` of ``length`` items per sample.

    Returns:
        ids_keep: [B, keep] indices of the kept items (random order, as the reference).
        mask: [B, L] bool, True where an item was removed.
    """
    ids_shuffle = random_shuffle(batch, length, generator, device)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, length, dtype=torch.bool, device=ids_shuffle.device)
    mask.scatter_(1, ids_keep, 0)  # int 0 (= False): traceable by fvcore
    return ids_keep, mask


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Pick tokens per sample: x [B, L, D], ids [B, K] -> [B, K, D].

    ``x`` may have batch size 1 (a shared table); it is broadcast without a copy.
    """
    if x.shape[0] == 1 and ids.shape[0] != 1:
        return x[0][ids]
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
