"""Per-iteration learning-rate schedule: linear warmup then half-cosine (MAE convention)."""
from __future__ import annotations

import math

import torch


def warmup_cosine(epoch: float, base: float, warmup_epochs: float, total_epochs: float, floor: float = 0.0) -> float:
    """Value at fractional ``epoch``: linear 0 -> base over warmup, then cosine base -> floor."""
    if epoch < warmup_epochs:
        return base * epoch / warmup_epochs
    span = max(total_epochs - warmup_epochs, 1e-8)
    progress = min((epoch - warmup_epochs) / span, 1.0)
    return floor + (base - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(
    optimizer: torch.optim.Optimizer,
    epoch: float,
    lr: float,
    warmup_epochs: float,
    total_epochs: float,
    min_lr: float = 0.0,
) -> float:
    """Set every group's lr for fractional ``epoch``; returns the main lr.

    A group may carry ``lr_scale`` (layer-wise decay) and its own ``base_lr``
    (e.g. AdPE's negative adversary lr, whose floor is 0).
    """
    main = warmup_cosine(epoch, lr, warmup_epochs, total_epochs, min_lr)
    for group in optimizer.param_groups:
        if "base_lr" in group:
            value = warmup_cosine(epoch, group["base_lr"], warmup_epochs, total_epochs, 0.0)
        else:
            value = main
        group["lr"] = value * group.get("lr_scale", 1.0)
    return main
