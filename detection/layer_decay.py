"""Optimizer parameter groups with ViTDet's layer-wise learning-rate decay.

Detectron2 v0.6's ``get_default_optimizer_params`` has no ``lr_factor_func``, so the suite
builds the groups itself, reproducing what ViTDet's configs get from Detectron2 main
(``get_default_optimizer_params(base_lr=lr, weight_decay_norm=0.0, lr_factor_func=
partial(get_vit_lr_decay_rate, ...), overrides={"pos_embed": {"weight_decay": 0.0}})``):

- lr = base_lr * decay ** (num_layers + 1 - layer_id), with layer_id 0 for the patch and
  position embeddings, i + 1 for ``blocks.{i}``, and num_layers + 1 (factor 1) for
  everything else (pyramid, RPN, ROI heads);
- weight decay 0 for the parameters of torch normalisation modules (``nn.LayerNorm`` in the
  ViT blocks, BatchNorm, GroupNorm, ...) and for any parameter named ``pos_embed``; every
  other parameter, biases, relative-position tables and the channel LayerNorms of the
  pyramid and heads included, keeps the optimizer's weight decay (0.1). That is what
  ViTDet does: Detectron2's "LN" is not an ``nn.LayerNorm``.
Groups with equal hyper-parameters are merged.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from pretrain.models.vit import vit_layer_id

# Where the ViT sits in the detector (``SimpleFeaturePyramid.net``).
BACKBONE_PREFIX = "backbone.net."

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def vitdet_lr_factor(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12) -> float:
    """Learning-rate multiplier of a detector parameter: decay ** (num_layers + 1 - layer_id).

    The layer id is the ViT's (``pretrain.models.vit.vit_layer_id``) for the encoder under
    ``backbone.net.`` (``backbone.net.blocks.3.x`` -> 4); the rest of the detector is num_layers + 1.
    """
    return lr_decay_rate ** (num_layers + 1 - vit_layer_id(name, num_layers, prefix=BACKBONE_PREFIX))


def vitdet_param_groups(
    model: nn.Module,
    base_lr: float,
    lr_decay_rate: float = 1.0,
    num_layers: int = 12,
    weight_decay: float | None = None,
    weight_decay_norm: float | None = 0.0,
    overrides: dict[str, dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Per-parameter lr / weight decay for ``torch.optim`` (merged into few groups).

    Args:
        model: the detector (parameter names as in ``model.named_parameters()``).
        base_lr: the optimizer's lr (ViTDet configs pass ``"${..lr}"``).
        lr_decay_rate: layer-wise decay (ViT-B 0.7, ViT-L 0.8, ViT-H 0.9).
        num_layers: ViT depth.
        weight_decay: default decay; None leaves it to the optimizer's ``weight_decay``.
        weight_decay_norm: decay of normalisation-layer parameters.
        overrides: per parameter-attribute name (e.g. ``pos_embed``) hyper-parameters.
    Returns:
        list of ``{"params": [...], "lr": ..., ["weight_decay": ...]}``.
    """
    overrides = {"pos_embed": {"weight_decay": 0.0}} if overrides is None else dict(overrides)
    seen: set[int] = set()
    groups: dict[tuple, dict[str, Any]] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            hyper: dict[str, float] = {"lr": base_lr * vitdet_lr_factor(full_name, lr_decay_rate, num_layers)}
            if weight_decay is not None:
                hyper["weight_decay"] = weight_decay
            if isinstance(module, NORM_TYPES) and weight_decay_norm is not None:
                hyper["weight_decay"] = weight_decay_norm
            hyper.update(overrides.get(param_name, {}))
            key = tuple(sorted(hyper.items()))
            groups.setdefault(key, {"params": [], **hyper})["params"].append(param)
    return list(groups.values())


def param_hyperparameters(groups: list[dict[str, Any]], model: nn.Module) -> dict[str, dict[str, float]]:
    """Map parameter names to their group's hyper-parameters (for checks and logs)."""
    by_id = {id(p): {k: v for k, v in g.items() if k != "params"} for g in groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}

