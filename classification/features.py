"""Frozen-encoder features of every frozen-feature protocol (linear probe, k-NN, attentive probe).

:func:`frozen_encoder` builds the suite's ViT for a run config, loads any checkpoint
``pretrain.weights`` reads (or keeps a random initialisation, the scratch baseline),
prints and saves the load report, drops the classifier head and freezes the rest.
:func:`extract_features` encodes a data set once, without augmentation, into a
tensor per image: the pooled feature (:func:`~classification.model.encoder_features`)
or the token sequence (:func:`~classification.model.encoder_tokens`). Caching is
exact because the encoder is frozen and in eval mode (no dropout, no drop path).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from omegaconf import DictConfig
from torch.utils.data import Dataset, TensorDataset

from pretrain.engine import distributed as du
from pretrain.engine.trainer import autocast_context
from pretrain.models.vit import VisionTransformer
from pretrain.weights import CheckpointError

from .data import eval_loader
from .load import LoadReport, PretrainedEncoder
from .model import build_classifier, encoder_features
from .runs import arch_name, report_load, use_rel_pos

Features = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def frozen_encoder(
    cfg: DictConfig,
    pretrained: PretrainedEncoder | None,
    num_classes: int,
    out_dir: Path,
    tag: str,
    device: torch.device,
) -> tuple[VisionTransformer, LoadReport | None]:
    """The run's ViT with the checkpoint loaded (strictly: only head / fc_norm may stay new), head removed,
    frozen, in eval mode on ``device``; with the load report (None for a random initialisation).

    A checkpoint of another architecture than ``cfg.model`` raises CheckpointError naming the file
    and the keys that do not fit.
    """
    model = cfg.model  # no drop path: the encoder only runs in eval mode
    encoder = build_classifier(model.size, num_classes=num_classes, img_size=int(model.img_size),
                               patch_size=int(model.patch_size), global_pool=model.global_pool,
                               rel_pos=use_rel_pos(cfg, pretrained))
    try:
        report = report_load(encoder, pretrained, out_dir, tag)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}\n(the {tag} config builds {arch_name(cfg)}: model.size={cfg.model.size}, "
                              f"model.patch_size={cfg.model.patch_size})") from None
    encoder.head = nn.Identity()  # features only; a probe's head lives apart
    encoder.requires_grad_(False).eval().to(device)
    return encoder, report


def _gather_shards(x: torch.Tensor, n: int) -> torch.Tensor:
    """Rank r holds samples r, r + world, ... of ``n``: gather the shards onto every rank, in dataset order.

    When unreadable images were dropped (``data.skip_bad``) the shards are shorter than that
    and are concatenated rank after rank instead (the order no longer maps to the data set).
    """
    world = du.get_world_size()
    counts = [torch.zeros((), dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor(len(x), device=x.device))
    counts = [int(c) for c in counts]
    per = max(counts)
    x = torch.cat([x, x.new_zeros(per - len(x), *x.shape[1:])])
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    if counts != [len(range(r, n, world)) for r in range(world)]:
        return torch.cat([part[:c] for part, c in zip(parts, counts)])
    full = x.new_empty(n, *x.shape[1:])
    for r in range(world):
        full[r::world] = parts[r][:counts[r]]
    return full


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: str,
    features: Features = encoder_features,
) -> TensorDataset:
    """Encode every image once (each rank its share, then gathered onto every rank).

    ``features(encoder, images)`` gives one tensor per image (default: the pooled [D] feature).
    Returns TensorDataset(features [N, ...] float32 on the CPU, labels [N]) in dataset order
    (images dropped as unreadable with ``data.skip_bad`` are left out).
    """
    loader = eval_loader(dataset, batch_size, workers, device)
    feats, labels = [], []
    for batch in loader:
        if batch is None:  # every image of the batch was unreadable and dropped (data.skip_bad)
            continue
        images, target = batch[0], batch[1]
        with autocast_context(device, precision):
            feats.append(features(encoder, images.to(device, non_blocking=True)).float())
        labels.append(target.to(device))
    if feats:
        f = torch.cat(feats)
    else:  # an empty shard still needs the feature shape for the gather
        blank = torch.zeros(1, 3, *encoder.patch_embed.img_size, device=device)
        f = torch.zeros(0, *features(encoder, blank).shape[1:], device=device)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    if du.get_world_size() > 1:
        f, y = _gather_shards(f, len(dataset)), _gather_shards(y, len(dataset))
    return TensorDataset(f.cpu(), y.cpu())
