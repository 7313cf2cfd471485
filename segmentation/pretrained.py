"""Load a pretraining checkpoint's encoder into the segmentation ViT, loudly.

MMSeg's own backbone loading is non-strict and silent, and MMEngine's loader
cannot open checkpoints that pickle an ``argparse.Namespace`` under torch>=2.6.
Here the file is read as plain tensors (``pretrain.weights.load_encoder``),
reduced to timm-named encoder keys and loaded by ``pretrain.weights.loading``:
the position table is resized to the backbone's grid, the final norm is skipped
with its reason when the backbone has none (the MAE recipe; not "unexpected"), everything the checkpoint does
not fill (layer scale, relative position tables; the neck and decode heads live
outside the backbone) stays new, and a report says so. Loading no transformer
block weight is an error, not a warning, and so is leaving any other encoder
weight at its initialisation (a detector's backbone has no cls token) unless it is
named in ``partial``. Detector, segmentor and MMSeg MAE-named files are read too
(``pretrain.weights.foreign``).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from pretrain.weights.loading import LoadReport, LoadRules, load_encoder_into
from pretrain.weights import load_encoder as read_encoder_state  # file -> timm-named encoder tensors

__all__ = ["load_encoder_weights", "read_encoder_state"]


def load_encoder_weights(
    model: nn.Module,
    encoder_state: dict[str, torch.Tensor],
    grid: tuple[int, int],
    source: str = "<state dict>",
    partial: Sequence[str] = (),
) -> LoadReport:
    """Copy timm-named encoder tensors into ``model`` (the backbone, same names).

    ``pos_embed`` [1, 1+h*w, D] is bicubically resized to ``grid``. Raises
    CheckpointError (a RuntimeError) when no transformer block weight matched, when
    an encoder weight not matched by a ``partial`` pattern (timm names, e.g.
    ``("cls_token",)``) would stay new, and when a copied tensor does not read back equal.
    """
    own = model.state_dict()
    skip = {}
    if "norm.weight" not in own:  # final_norm=False (the MAE recipe): the encoder's final norm has no place
        skip["norm.*"] = "the backbone has no final norm (final_norm=False, the MAE recipe)"
    rules = LoadRules(skip=skip, grid=tuple(grid), hint="is it a ViT encoder with timm names?", partial=tuple(partial))
    return load_encoder_into(model, encoder_state, rules, source)
