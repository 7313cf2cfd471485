"""Layer-wise learning-rate decay for ViT fine-tuning (BEiT, Bao et al. 2022; MAE recipe).

With L blocks, every parameter gets the ViT's layer id (``pretrain.models.vit.vit_layer_id``):
embeddings (cls_token, pos_embed, patch_embed) 0, block i gets i + 1, and the final
norm / fc_norm / head L + 1; the lr scale is ``decay ** (L + 1 - id)``. Biases, norms and
other 1-D parameters, the model's ``no_weight_decay()`` names (pos_embed, cls_token) and
relative-position tables take no weight decay. Groups are timm's
(``param_groups_layer_decay``): ``layer_{id}_{decay|no_decay}`` with ``lr_scale``,
``weight_decay`` and ``params``. Frozen parameters (a frozen pos_embed) are left out.
"""
from __future__ import annotations

from fnmatch import fnmatch
from typing import Any

import torch.nn as nn

from pretrain.models.vit import vit_layer_id

# Relative-position tables (AdPE iRPE, BEiT-style biases) are position parameters: no weight decay.
REL_POS_NO_DECAY = ("*rpe*", "*relative_position*", "*rel_pos*")


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups with ``lr_scale`` per layer and ``weight_decay`` 0 on biases, norms and position tables.

    The engine's scheduler multiplies each group's lr by its ``lr_scale``.
    """
    fn = getattr(model, "no_weight_decay", None)
    no_decay_patterns = sorted(fn() if callable(fn) else ()) + list(REL_POS_NO_DECAY)
    num_layers = len(model.blocks)
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or any(fnmatch(name, p) for p in no_decay_patterns)
        layer_id = vit_layer_id(name, num_layers)
        group_name = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
        if group_name not in groups:
            groups[group_name] = {
                "lr_scale": layer_decay ** (num_layers + 1 - layer_id),
                "weight_decay": 0.0 if no_decay else weight_decay,
                "params": [],
            }
        groups[group_name]["params"].append(param)
    return list(groups.values())


def lr_scale_of(groups: list[dict[str, Any]], model: nn.Module) -> dict[str, tuple[float, float]]:
    """Parameter name -> (lr_scale, weight_decay): for reports and tests."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
