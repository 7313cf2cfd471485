"""Position-prediction linear probe on frozen patch features: does a token know where it is?

A share ``drop_ratio`` of the patches lose their position embedding (replaced by what the
method feeds for a token without position: DropPos's learned ``mask_pos_token``, else
zero); all N patches and the cls token go through the frozen encoder; a linear classifier
over the N grid cells reads the final (normed) features of the tokens whose position was
dropped. Top-1 and within-one-cell (Chebyshev distance <= 1) accuracy measure it.

The one implementation of the probe's pieces, shared by the analysis command
(``analysis.probes.position_probe``: a checkpoint, many drop ratios) and the online monitor
of pretraining (``pretrain.engine.monitors``: the training encoder, the recipe's ratio, a
fixed number of steps so that the curve is comparable across epochs).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain.models.vit import VisionTransformer


def dropped_positions(batch: int, num_patches: int, drop_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Per image, a random round(drop_ratio * N) cells lose their position: bool [B, N]."""
    if not 0.0 <= drop_ratio <= 1.0:
        raise ValueError(f"drop ratio must lie in [0, 1], got {drop_ratio}")
    k = int(round(drop_ratio * num_patches))
    order = torch.argsort(torch.rand(batch, num_patches, generator=generator), dim=1)
    dropped = torch.zeros(batch, num_patches, dtype=torch.bool)
    dropped.scatter_(1, order[:, :k], True)
    return dropped


@torch.no_grad()
def encode_dropped(
    vit: VisionTransformer, position_token: torch.Tensor, imgs: torch.Tensor, dropped: torch.Tensor
) -> torch.Tensor:
    """All N patches + cls through ``vit``, the ``dropped`` [B, N] positions replaced by
    ``position_token`` [1, 1, D]: the patch tokens after the final norm [B, N, D]."""
    b = imgs.shape[0]
    tokens = vit.embed_patches(imgs)  # [B, N, D]
    pe = vit.pos_embed_patches().expand(b, -1, -1)  # [B, N, D]
    pe = torch.where(dropped.unsqueeze(-1), position_token.to(pe.dtype), pe)
    x = torch.cat([vit.cls_with_pos(b), tokens + pe], dim=1)
    return vit.forward_encoder_tokens(x)[:, 1:]


def cell_distance(a: torch.Tensor, b: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Chebyshev distance in grid cells between flat cell indices a and b."""
    w = grid[1]
    return torch.maximum((a // w - b // w).abs(), (a % w - b % w).abs())


def chance_within1(grid: tuple[int, int]) -> float:
    """Within-one-cell accuracy of a uniformly random guess, averaged over true cells."""
    n = grid[0] * grid[1]
    cells = torch.arange(n)
    return float((cell_distance(cells[:, None], cells[None, :], grid) <= 1).float().mean())


class PositionHead(nn.Module):
    """Standardise features with training statistics, then Linear(D -> N) (a linear probe)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_positions: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.fc = nn.Linear(mean.numel(), num_positions)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((x.float() - self.mean) / self.std)


def steps_per_pass(num_tokens: int, batch_size: int) -> int:
    """Minibatches in one pass over ``num_tokens`` cached token features."""
    return max(math.ceil(num_tokens / batch_size), 1)


def train_position_head(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_positions: int,
    *,
    steps: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
) -> PositionHead:
    """AdamW with a cosine schedule over ``steps`` minibatches of the cached ``feats`` [M, D].

    Minibatches walk through a fresh permutation (drawn from ``seed``) on every pass over the
    data, so a whole number of passes is the classic epoch loop. Zero-initialised; trains on the
    features' device; the same features give the same head.
    """
    x = feats.float()
    head = PositionHead(x.mean(0), x.std(0).clamp_min(1e-6), num_positions).to(x.device)
    opt = torch.optim.AdamW(head.fc.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    m = x.shape[0]
    per_pass = steps_per_pass(m, batch_size)
    order = torch.empty(0, dtype=torch.long)
    for step in range(steps):
        i = step % per_pass
        if i == 0:
            order = torch.randperm(m, generator=gen)
        idx = order[i * batch_size : (i + 1) * batch_size]
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(head(x[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.eval()


@torch.no_grad()
def evaluate_position_head(
    head: PositionHead, feats: torch.Tensor, labels: torch.Tensor, grid: tuple[int, int]
) -> dict[str, float]:
    """Top-1 and within-one-cell accuracy (fractions)."""
    pred = torch.cat([head(feats[i : i + 8192]).argmax(-1) for i in range(0, feats.shape[0], 8192)])
    return {
        "top1": float((pred == labels).float().mean()),
        "within1": float((cell_distance(pred, labels, grid) <= 1).float().mean()),
    }
