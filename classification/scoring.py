"""Scores of a classifier over one evaluation set: top-1 / top-5, over a class subset, and ReaL.

- :func:`topk_hits` ranks the logits over every output or, with a ``mask`` (ImageNet-R / -A),
  over the masked outputs only, and compares with targets given as indices into the ranked set.
- :func:`real_accuracy` is the ReaL rule (Beyer et al. 2020, as timm's ``RealLabelsImagenet``):
  an image counts as right at k when any of its k best predictions is among its ReaL labels;
  images whose ReaL label list is empty are left out.
- :func:`predict` runs the model once over a data set (single process, in order, unreadable
  images dropped when the set skips them) and hands each batch's logits, targets and dataset
  indices to the callers' scorers.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from pretrain.engine.trainer import autocast_context

from .data import eval_loader

Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, dataset indices) -> logits


class IndexedDataset(Dataset):
    """(image, target, index) from a dataset of (image, target); None stays None (a dropped bad image)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        return None if item is None else (item[0], item[1], index)


def topk_hits(logits: torch.Tensor, targets: torch.Tensor, mask: Sequence[int] | None = None) -> torch.Tensor:
    """[B, 2] booleans (top-1 right, top-5 right) of one batch.

    ``mask``: output indices to rank among (the 200-class rule); ``targets`` then index into
    ``mask``'s order. With fewer than 5 candidates top-5 reads all of them.
    """
    if mask is not None:
        logits = logits[:, torch.as_tensor(list(mask), device=logits.device)]
    k = min(5, logits.shape[1])
    hits = logits.topk(k, dim=1).indices.eq(targets[:, None])
    return torch.stack([hits[:, 0], hits.any(dim=1)], dim=1)


def real_accuracy(
    top5: torch.Tensor, names: Sequence[str], labels: Mapping[str, Sequence[int]]
) -> dict[str, float | int]:
    """ReaL top-1 / top-5 (percent) of predictions ``top5`` [N, >=1] (best first) for the files ``names``.

    ``labels``: file name -> its ReaL classes (output indices). A name without labels, or with an
    empty list, is not scored (``images_without_label``); a name ReaL does not know is an error.
    """
    unknown = [n for n in names if os.path.basename(n) not in labels]
    if unknown:
        raise ValueError(f"{len(unknown)} images are not in the ReaL labels (first: {unknown[:2]}): ReaL labels "
                         "the ImageNet-1K val images ILSVRC2012_val_*.JPEG")
    right1 = right5 = scored = 0
    for pred, name in zip(top5.tolist(), names):
        real = set(labels[os.path.basename(name)])
        if not real:
            continue
        scored += 1
        right1 += pred[0] in real
        right5 += any(p in real for p in pred[:5])
    if not scored:
        raise ValueError(f"none of the {len(names)} images has a ReaL label: nothing to score")
    return {
        "top1": 100.0 * right1 / scored,
        "top5": 100.0 * right5 / scored,
        "images_scored": scored,
        "images_without_label": len(names) - scored,
    }


@torch.no_grad()
def predict(
    logits_fn: Logits,
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: str,
    consumers: Iterable[Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]],
) -> int:
    """Feed every batch of ``dataset`` through ``logits_fn`` and each consumer(logits, targets, indices, images).

    Returns the number of images read (unreadable ones dropped by a ``skip_bad`` set are not counted).
    """
    consumers = list(consumers)
    loader = eval_loader(IndexedDataset(dataset), batch_size, workers, device)
    seen = 0
    for batch in loader:
        if batch is None:
            continue
        images, targets, indices = batch
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast_context(device, precision):
            logits = logits_fn(images, indices)
        logits = logits.float()
        for consume in consumers:
            consume(logits, targets, indices, images)
        seen += len(targets)
    return seen


class HitCounter:
    """Sums top-1 / top-5 hits of the batches it is fed (optionally over a class subset)."""

    def __init__(self, mask: Sequence[int] | None = None) -> None:
        self.mask = mask
        self.right = torch.zeros(2, dtype=torch.float64)
        self.count = 0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, *_: torch.Tensor) -> None:
        self.right += topk_hits(logits, targets, self.mask).sum(0).double().cpu()
        self.count += len(targets)

    def result(self) -> dict[str, float | int]:
        n = max(self.count, 1)
        return {"top1": 100.0 * float(self.right[0]) / n, "top5": 100.0 * float(self.right[1]) / n, "images": self.count}


class TopKRecorder:
    """Keeps each image's five best outputs and its dataset index (for ReaL)."""

    def __init__(self) -> None:
        self.top5: list[torch.Tensor] = []
        self.indices: list[torch.Tensor] = []

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor, *_: torch.Tensor) -> None:
        self.top5.append(logits.topk(min(5, logits.shape[1]), dim=1).indices.cpu())
        self.indices.append(indices.cpu())

    def collected(self) -> tuple[torch.Tensor, list[int]]:
        if not self.top5:
            return torch.zeros(0, 5, dtype=torch.long), []
        return torch.cat(self.top5), torch.cat(self.indices).tolist()
