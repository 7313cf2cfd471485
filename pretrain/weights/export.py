"""Export an encoder for timm, safetensors, Detectron2 or MMSegmentation, with its card.

Every target starts from the same timm-named encoder (``pretrain.weights.load_encoder``
of any supported source) and writes one file plus ``<DST>.card.json``:

- ``timm``: ``{'model': weights, 'card': card}`` (``.pth``), which
  ``timm.create_model(name, pretrained=True, num_classes=0,
  pretrained_cfg_overlay=dict(file=DST, num_classes=0))`` loads strictly;
- ``safetensors``: the flat weights, the card as JSON in the metadata
  (``droppos_card``); a safetensors file without one is refused on reading;
- ``detectron2``: ``{'model': {'backbone.net.<timm name>': ...}}`` for this suite's
  ViTDet (and ViTDet's own names), layer scale folded into the weights (exact);
- ``mmseg``: an MMEngine checkpoint ``{'state_dict': {'backbone.<timm name>': ...},
  'meta': {...}}`` for this suite's UperNet backbone (MAE recipe).

What a target has no place for (ViTDet: cls token, final norm, BEiT / iRPE relative
tables; the UperNet backbone: final norm, decomposed / iRPE tables) travels under
``droppos_extras`` and is named in the card's ``target_notes``, so an import gets it back.
"""
from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_write
from .loading import group_keys
from .card import CARD_METADATA_KEY, build_card, write_card
from .read import EXTRAS_KEY, CheckpointError, atomic_torch_save, detect_format, encoder_state_dict, \
    load_checkpoint_file, model_state

DETECTRON2_PREFIX = "backbone.net."
MMSEG_PREFIX = "backbone."


@dataclass
class Export:
    """What an export wrote: the encoder (timm names), its card, the files."""

    encoder: dict[str, torch.Tensor]
    card: dict[str, Any]
    source_format: str
    files: list[Path]


def _plain(encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous, unshared CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in encoder.items()}


def write_safetensors(path: str | os.PathLike, encoder: dict[str, torch.Tensor], card: dict[str, Any]) -> None:
    """Flat tensors plus the card (JSON) as metadata, written atomically."""
    from safetensors.torch import save

    blob = save(_plain(encoder), metadata={"format": "pt", CARD_METADATA_KEY: json.dumps(card)})
    atomic_write(path, lambda f: f.write(blob))


# Encoder parts a target has no place for: (glob pattern, why). They travel under
# ``droppos_extras`` (prefixed like the rest) and are named in the card.
TARGET_LACKS: dict[str, list[tuple[str, str]]] = {
    "timm": [],
    "safetensors": [],
    "detectron2": [
        ("cls_token", "ViTDet has no cls token"),
        ("norm.*", "ViTDet has no final norm"),
        ("blocks.*.attn.relative_position_bias_table", "BEiT-style relative bias: ViTDet uses decomposed tables"),
        ("blocks.*.attn.rpe_k.*", "contextual (iRPE) relative position: ViTDet has none"),
    ],
    "mmseg": [
        ("norm.*", "the MAE-recipe backbone has no final norm"),
        ("blocks.*.attn.rel_pos_*", "decomposed (ViTDet) relative tables: the backbone uses a BEiT bias table"),
        ("blocks.*.attn.rpe_k.*", "contextual (iRPE) relative position: the backbone has none"),
    ],
}
PREFIX = {"timm": "", "safetensors": "", "detectron2": DETECTRON2_PREFIX, "mmseg": MMSEG_PREFIX}


def fold_layer_scale(encoder: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Multiply ``ls1``/``ls2`` gammas into ``attn.proj`` / ``mlp.fc2`` (exact) for targets without layer scale."""
    out = dict(encoder)
    folded = 0
    for key in [k for k in encoder if k.endswith((".ls1.gamma", ".ls2.gamma"))]:
        block = key.rsplit(".", 2)[0]
        layer = f"{block}.attn.proj" if ".ls1." in key else f"{block}.mlp.fc2"
        gamma = out.pop(key).float()
        weight = out[f"{layer}.weight"]
        out[f"{layer}.weight"] = (weight.float() * gamma[:, None]).to(weight.dtype)
        if f"{layer}.bias" in out:
            bias = out[f"{layer}.bias"]
            out[f"{layer}.bias"] = (bias.float() * gamma).to(bias.dtype)
        folded += 1
    return out, folded


def plan_target(encoder: dict[str, torch.Tensor], to: str) -> tuple[dict, dict, dict[str, str]]:
    """(weights the target takes, weights kept aside, notes for the card), in the target's names."""
    notes: dict[str, str] = {}
    if to == "detectron2":
        encoder, folded = fold_layer_scale(encoder)
        if folded:
            notes["layer scale folded"] = f"{folded} gammas multiplied into attn.proj / mlp.fc2 (exact; ViTDet has none)"
    prefix, take, aside, by_reason = PREFIX[to], {}, {}, {}
    for key, value in encoder.items():
        why = next((why for pattern, why in TARGET_LACKS[to] if fnmatch.fnmatchcase(key, pattern)), None)
        if why is None:
            take[prefix + key] = value
        else:
            aside[prefix + key] = value
            by_reason.setdefault(why, []).append(key)
    notes.update({f"kept aside: {why}": group_keys(keys) for why, keys in by_reason.items()})
    return take, aside, notes


def _write_timm(dst: Path, model: dict, aside: dict, card: dict[str, Any]) -> None:
    atomic_torch_save({"model": model, "card": card, "format": "droppos-backbone"}, dst)


def _write_safetensors(dst: Path, model: dict, aside: dict, card: dict[str, Any]) -> None:
    write_safetensors(dst, model, card)


def _write_detectron2(dst: Path, model: dict, aside: dict, card: dict[str, Any]) -> None:
    atomic_torch_save({"model": model, EXTRAS_KEY: aside, "card": card, "__author__": "droppos",
                       "matching_heuristics": False}, dst)


def _write_mmseg(dst: Path, model: dict, aside: dict, card: dict[str, Any]) -> None:
    atomic_torch_save({"state_dict": model, EXTRAS_KEY: aside, "card": card,
                       "meta": {"droppos_card": json.dumps(card)}}, dst)


WRITERS: dict[str, Callable[[Path, dict, dict, dict[str, Any]], None]] = {
    "timm": _write_timm,
    "safetensors": _write_safetensors,
    "detectron2": _write_detectron2,
    "mmseg": _write_mmseg,
}


def export_weights(src: str | os.PathLike, dst: str | os.PathLike, to: str = "timm") -> Export:
    """Read any supported ``src``, write its encoder for ``to`` at ``dst`` and the card beside it."""
    if to not in WRITERS:
        raise ValueError(f"unknown export target {to!r}; choose one of {sorted(WRITERS)}")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: the export would overwrite its source; choose another DST")
    ckpt = load_checkpoint_file(src)
    state = model_state(ckpt, src)
    fmt = detect_format(state, src)
    encoder = encoder_state_dict(state, src)
    card = build_card(src, ckpt, encoder, fmt, to)
    model, aside, notes = plan_target(encoder, to)
    card = {**card, "target_notes": notes} if notes else {k: v for k, v in card.items() if k != "target_notes"}
    WRITERS[to](dst, model, aside, card)
    return Export(encoder, card, fmt, [dst, write_card(dst, card)])


def export_backbone(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Write an encoder-only file (``{'model': timm-named weights, 'card': ...}``) and its card from any checkpoint."""
    return export_weights(src, dst, "timm").encoder
