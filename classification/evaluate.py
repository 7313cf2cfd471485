"""Top-1 / top-5 accuracy and mean cross-entropy over a (sharded) evaluation set.

Each rank evaluates its own disjoint share (``data.ShardSampler``); correct counts,
sample counts and loss sums are summed over ranks with one all_reduce, so the result
is exact whatever the world size (no padded duplicates as with DistributedSampler).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from pretrain.engine import distributed as du
from pretrain.engine.trainer import autocast_context

from .scoring import topk_hits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    precision: str = "fp32",
) -> dict[str, float]:
    """Run ``model`` (eval mode) over ``loader``'s (input, target) batches.

    Returns {"top1", "top5" (percent), "loss" (mean cross-entropy), "count"}. With
    fewer than 5 classes, top-5 counts the top-C predictions (so it is 100). Images skipped as
    unreadable (``data.skip_bad``) are not in ``count``: the scores are over the images read.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct1, correct5, loss sum, count
    for batch in loader:
        if batch is None:  # every image of the batch was unreadable and skipped
            continue
        inputs, target = batch[0], batch[1]
        inputs = inputs.to(device, non_blocking=True)
        target = target.to(device, non_blocking=True)
        with autocast_context(device, precision):
            logits = model(inputs)
        logits = logits.float()
        hits = topk_hits(logits, target).sum(0).double()  # top-1, top-5 hits (top-C with C < 5 classes)
        totals += torch.stack([
            hits[0],
            hits[1],
            F.cross_entropy(logits, target, reduction="sum").double(),
            torch.tensor(float(target.numel()), dtype=torch.float64, device=device),
        ])
    if du.get_world_size() > 1:
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    model.train(was_training)
    c1, c5, loss, n = totals.tolist()
    n = max(n, 1.0)
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss / n, "count": int(n)}
