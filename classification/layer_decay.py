"""Layer-wise learning-rate decay for ViT fine-tuning (BEiT, Bao et al. 2022; MAE recipe).

With L blocks, parameters get a layer id: embeddings (cls_token, pos_embed,
patch_embed) 0, block i gets i + 1, and the final norm / fc_norm / head L + 1;
the lr scale is ``decay ** (L + 1 - id)``. timm's ``param_groups_layer_decay``
computes exactly this from the model's ``group_matcher`` (our ViT inherits timm's),
and also keeps biases, norms and 1-D parameters out of weight decay; we add the
model's ``no_weight_decay()`` names (pos_embed, cls_token) and relative-position
tables. Frozen parameters (a frozen pos_embed) are left out.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.optim import param_groups_layer_decay

# Relative-position tables (AdPE iRPE, BEiT-style biases) are position parameters: no weight decay.
REL_POS_NO_DECAY = ("*rpe*", "*relative_position*", "*rel_pos*")


def layer_decay_param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Optimizer groups with ``lr_scale`` per layer and ``weight_decay`` 0 on biases, norms and position tables.

    The engine's scheduler multiplies each group's lr by its ``lr_scale``.
    """
    fn = getattr(model, "no_weight_decay", None)
    no_decay = set(fn()) if callable(fn) else set()
    return param_groups_layer_decay(
        model,
        weight_decay=weight_decay,
        no_weight_decay_list=sorted(no_decay) + list(REL_POS_NO_DECAY),
        layer_decay=layer_decay,
    )


def lr_scale_of(groups: list[dict[str, Any]], model: nn.Module) -> dict[str, tuple[float, float]]:
    """Parameter name -> (lr_scale, weight_decay): for reports and tests."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
