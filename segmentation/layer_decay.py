"""Layer-wise learning-rate decay for ViT backbones with timm names (BEiT / MAE fine-tuning).

Block ``i`` trains with ``lr * decay_rate ** (num_layers - i)``; the embeddings
(cls token, position table, patch projection) count as layer 0 and get
``decay_rate ** (num_layers + 1)``; everything after the encoder (neck, heads)
counts as layer ``num_layers + 1`` and trains at the full rate.

MMSeg ships ``LayerDecayOptimizerConstructor``, but it cannot serve this
backbone: it only applies the ViT rule to backbones whose class name contains
'BEiT' or 'MAE', it reads block numbers from ``backbone.layers.N`` (ours are
timm's ``backbone.blocks.N``), and its no-decay test compares the full name
``backbone.pos_embed`` with ``pos_embed``, so the position table (and the 2-D
relative position tables) get weight decay. This constructor uses timm names
and exempts from weight decay every 1-D parameter (norms, biases, layer-scale
gammas) and the tables named in ``no_decay_names``.

``paramwise_cfg.no_decay_rule='mmseg'`` reproduces MMSeg's own no-decay test
instead: 1-D tensors, biases and the names ``pos_embed`` / ``cls_token`` compared
with the full (prefixed) name, which never matches, so ``cls_token``, ``pos_embed``
and the relative-position tables train with the base weight decay (0.05 in the
recipes); the default 'suite' gives them 0.
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS

from pretrain.models.vit import vit_layer_id

# Where the ViT sits in the segmentor.
BACKBONE_PREFIX = "backbone."
NO_DECAY_NAMES = ("pos_embed", "cls_token", "relative_position_bias_table")
NO_DECAY_RULES = ("suite", "mmseg")


def is_no_decay(name: str, param: nn.Parameter, no_decay_names: tuple[str, ...] = NO_DECAY_NAMES) -> bool:
    """1-D tensors (norms, biases, layer-scale gammas) and the named tables take no weight decay."""
    return param.ndim <= 1 or name.endswith(".bias") or name.split(".")[-1] in no_decay_names


def is_no_decay_mmseg(name: str, param: nn.Parameter) -> bool:
    """MMSeg's LayerDecayOptimizerConstructor test: its name check sees prefixed names and never matches."""
    return param.ndim == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ViTLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer groups per (layer, decay/no-decay) with ``lr_scale`` = decay_rate ** depth-from-top.

    ``paramwise_cfg``: ``num_layers`` (ViT depth), ``decay_rate`` (0.65 in the
    MAE-UperNet recipe) and optionally ``no_decay_names`` and ``no_decay_rule``
    ('suite', default, or 'mmseg': MMSeg's own rule, see the module docstring).
    """

    def add_params(self, params: list[dict[str, Any]], module: nn.Module, **kwargs: Any) -> None:
        num_layers = int(self.paramwise_cfg["num_layers"])
        decay_rate = float(self.paramwise_cfg["decay_rate"])
        no_decay_names = tuple(self.paramwise_cfg.get("no_decay_names", NO_DECAY_NAMES))
        rule = self.paramwise_cfg.get("no_decay_rule", "suite")
        if rule not in NO_DECAY_RULES:
            raise ValueError(f"paramwise_cfg.no_decay_rule must be one of {NO_DECAY_RULES}, got {rule!r}")
        groups: dict[str, dict[str, Any]] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer_id = vit_layer_id(name, num_layers, prefix=BACKBONE_PREFIX)
            no_decay = is_no_decay_mmseg(name, param) if rule == "mmseg" else is_no_decay(name, param, no_decay_names)
            group_name = f"layer_{layer_id}_{'no_decay' if no_decay else 'decay'}"
            if group_name not in groups:
                scale = decay_rate ** (num_layers + 1 - layer_id)
                groups[group_name] = dict(
                    params=[],
                    param_names=[],
                    group_name=group_name,
                    lr_scale=scale,
                    lr=scale * self.base_lr,
                    weight_decay=0.0 if no_decay else self.base_wd,
                )
            groups[group_name]["params"].append(param)
            groups[group_name]["param_names"].append(name)
        params.extend(groups[k] for k in sorted(groups, key=lambda g: (int(g.split("_")[1]), g)))
        print_log(
            f"layer decay {decay_rate} over {num_layers} blocks: {len(groups)} parameter groups, "
            f"lr scales {decay_rate ** (num_layers + 1):.2e} (embeddings) .. 1.0 (heads)",
            "current",
        )
