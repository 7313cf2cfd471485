"""Load a pretraining checkpoint's encoder into the segmentation ViT, loudly.

MMSeg's own backbone loading is non-strict and silent, and MMEngine's loader
cannot open checkpoints that pickle an ``argparse.Namespace`` under torch>=2.6.
Here the file is read as plain tensors (``pretrain.weights``), reduced to
timm-named encoder keys, the position table is resized to the backbone's grid,
and a report says what was loaded, what is new and what was skipped. Loading
nothing of the encoder is an error, not a warning.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from pretrain.models.pos_embed import resize_pos_embed


@dataclass
class LoadReport:
    """What ``load_encoder_weights`` did, key by key."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint (new)
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, unused by the model
    mismatched: list[str] = field(default_factory=list)  # same name, incompatible shape
    resized: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} encoder tensors from {self.source}"]
        if self.resized:
            lines.append(f"  resized: {', '.join(self.resized)}")
        for title, keys in (
            ("new (not in checkpoint)", self.missing),
            ("skipped (unused by this backbone)", self.unexpected),
            ("skipped (shape mismatch)", self.mismatched),
        ):
            lines.append(f"  {title}: {len(keys)}" + (f" -> {collapse_keys(keys)}" if keys else ""))
        return "\n".join(lines)


def collapse_keys(keys: list[str]) -> str:
    """'blocks.0.ls1.gamma', 'blocks.1.ls1.gamma' -> 'blocks.*.ls1.gamma (x2)'."""
    counts = Counter(re.sub(r"\.\d+\.", ".*.", k) for k in keys)
    return ", ".join(f"{k} (x{n})" if n > 1 else k for k, n in sorted(counts.items()))


def read_encoder_state(path: str) -> dict[str, torch.Tensor]:
    """Any supported checkpoint file -> timm-named encoder tensors (no decoder, no mask tokens)."""
    from pretrain.weights import load_encoder

    return load_encoder(path)


def load_encoder_weights(
    model: nn.Module,
    encoder_state: dict[str, torch.Tensor],
    grid: tuple[int, int],
    source: str = "<state dict>",
) -> LoadReport:
    """Copy timm-named encoder tensors into ``model`` (a ViT with the same names).

    ``pos_embed`` [1, 1+h*w, D] is bicubically resized to ``grid``. Raises
    RuntimeError when no transformer block weight matched, and when a copied
    tensor does not read back equal.
    """
    report = LoadReport(source=source)
    own = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    for key, value in encoder_state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        if key == "pos_embed" and value.shape != own[key].shape and value.shape[-1] == own[key].shape[-1]:
            value = resize_pos_embed(value.float(), grid, num_prefix_tokens=1)
            report.resized.append(f"pos_embed {tuple(encoder_state[key].shape)} -> {tuple(value.shape)}")
        if value.shape != own[key].shape:
            report.mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            continue
        to_load[key] = value.to(own[key].dtype)
    if not any(k.startswith("blocks.") for k in to_load):
        raise RuntimeError(
            f"no transformer block weight of {source} matches the backbone "
            f"(checkpoint keys e.g. {list(encoder_state)[:5]}); is it a ViT encoder with timm names?"
        )

    model.load_state_dict(to_load, strict=False)
    after = model.state_dict()
    bad = [k for k, v in to_load.items() if not torch.equal(after[k].cpu(), v.cpu())]
    if bad:
        raise RuntimeError(f"weights did not take for {collapse_keys(bad)}")
    report.loaded = sorted(to_load)
    report.missing = sorted(k for k in own if k not in to_load)
    return report
