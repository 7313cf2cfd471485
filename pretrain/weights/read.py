"""Read any known checkpoint safely; turn it into a plain timm-named encoder state dict.

Formats understood:
- this suite's pretraining checkpoints (``model`` holds ``encoder.*`` + method keys);
- the reference DropPos / MAE / AdPE pretraining checkpoints (flat keys, ``model``
  or ``state_dict``, optional ``module.`` prefix, an ``args`` Namespace pickled beside);
- timm VisionTransformer weights (flat encoder keys plus ``head``/``fc_norm``);
- an exported backbone file (``model`` = encoder keys only), a safetensors export
  (which must carry its card);
- a Detectron2 detector (``backbone.net.*``, this suite's ViTDet or ViTDet's own), an
  MMEngine segmentor checkpoint (``state_dict`` / ``backbone.*``) and MMSegmentation's
  MAE / BEiT backbone names (``pretrain.weights.foreign``).

A state dict that shows two layouts at once is refused as ambiguous.

Loading never executes pickled code: ``torch.load(weights_only=True)``; any
other pickled object (an argparse Namespace, numpy scalars) is replaced by an
inert placeholder and reported as ignored.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..atomic import atomic_write
from .card import CARD_METADATA_KEY
from .foreign import layouts_of, to_timm_names

ENCODER_PREFIX = "encoder."
# An export keeps here the encoder weights its target has no place for (a detector's
# cls token and final norm), under the target's prefix; readers merge them back.
EXTRAS_KEY = "droppos_extras"
FOREIGN_LAYOUTS = ("detectron2", "mmengine", "mmseg-mae")
# Keys that belong to pretraining heads, masks or adversaries: never part of a backbone.
NON_ENCODER_PATTERNS = [
    r"^decoder_",
    r"^mask_token$",
    r"^mask_pos_token$",
    r"^adv_token$",
    r"^head\.",
    r"^fc_norm\.",
    r"^aux_",
    r"\.adv_token$",
    r"\.adv_shift$",
    r"\.no_shift$",
]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the file and the reason."""


class _Ignored:
    """Stand-in for a pickled object that is not a tensor container (never executed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> "_Ignored":
        return _Ignored(*args)


def _placeholder(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    return type(name, (_Ignored,), {"__module__": module, "__qualname__": name})


def load_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely and return the whole saved dict.

    Objects that weights-only unpickling refuses are replaced by placeholders;
    their type names are listed under the ``__ignored__`` key.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty (0 bytes): {path}")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    ignored: list[str] = []
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception as exc:  # truncated zip, garbage bytes ...
            raise CheckpointError(f"checkpoint file is corrupt or truncated: {path} ({exc})") from exc
        ignored = sorted(unsafe)
        stubs = [_placeholder(q) for q in ignored]
        try:
            with torch.serialization.safe_globals(stubs):
                obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    except Exception as exc:
        raise CheckpointError(f"checkpoint file is corrupt or truncated: {path} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict of tensors")
    if ignored:
        warnings.warn(f"{path}: ignored pickled objects that are not weights: {', '.join(ignored)}", stacklevel=2)
        obj = dict(obj)
        obj["__ignored__"] = ignored
    return obj


def model_state(ckpt: dict[str, Any], path: str | os.PathLike = "<dict>") -> dict[str, torch.Tensor]:
    """The weights of a loaded checkpoint: unwrap ``model``/``state_dict``/``module``, strip ``module.``."""
    state: Any = ckpt
    for key in ("model", "state_dict", "module", "model_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    extras = ckpt.get(EXTRAS_KEY)
    if isinstance(extras, dict):
        tensors.update({k: v for k, v in extras.items() if isinstance(v, torch.Tensor) and k not in tensors})
    if not tensors:
        raise CheckpointError(f"no tensors found in checkpoint {path} (top-level keys: {sorted(ckpt)[:10]})")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def source_layout(state: dict[str, torch.Tensor], path: str | os.PathLike = "<dict>") -> str | None:
    """The one key layout of ``state`` (``pretrain.weights.foreign.layouts_of``); ambiguous ones are refused."""
    found = layouts_of(state)
    if "mmseg-mae" in found and "mmengine" in found:  # MMSeg names under the segmentor's prefix
        found.remove("mmengine")
    if len(found) > 1:
        raise CheckpointError(
            f"{path}: ambiguous source format: its keys show {' and '.join(found)} layouts at once "
            f"(e.g. {', '.join(sorted(state)[:4])}); convert one model's weights at a time")
    return found[0] if found else None


def detect_format(state: dict[str, torch.Tensor], path: str | os.PathLike = "<dict>") -> str:
    """Name the source of a state dict: ours, droppos, mae, adpe, timm, backbone, detectron2, mmengine, mmseg-mae."""
    layout = source_layout(state, path)
    if layout in FOREIGN_LAYOUTS:
        return layout
    keys = set(state)
    if any(k.startswith(ENCODER_PREFIX) for k in keys):
        return "ours"
    if "mask_pos_token" in keys:
        return "droppos"
    if "adv_token" in keys or any(".rpe_k." in k for k in keys):
        return "adpe"
    if "decoder_pred.weight" in keys and "mask_token" in keys:
        return "mae"
    if "head.weight" in keys or "fc_norm.weight" in keys:
        return "timm"
    if "patch_embed.proj.weight" in keys:
        return "backbone"
    return "unknown"


def is_encoder_key(key: str) -> bool:
    return not any(re.search(p, key) for p in NON_ENCODER_PATTERNS)


def encoder_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike = "<dict>") -> dict[str, torch.Tensor]:
    """Plain timm-named encoder weights from any supported state dict.

    Drops decoders, mask tokens, adversarial parameters and classifier heads;
    keeps cls_token, pos_embed, patch_embed.*, blocks.* (including relative
    position tables) and norm.*. Detector and segmentor layouts are renamed first.
    """
    layout = source_layout(state, path)
    if layout in FOREIGN_LAYOUTS:
        state = to_timm_names(state, layout)
    elif any(k.startswith(ENCODER_PREFIX) for k in state):
        state = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    out = {k: v for k, v in state.items() if is_encoder_key(k)}
    if "patch_embed.proj.weight" not in out or not any(k.startswith("blocks.") for k in out):
        raise CheckpointError(
            f"{path}: no ViT encoder weights found (expected patch_embed.proj.weight and blocks.*); "
            f"first keys: {sorted(state)[:8]}"
        )
    check_weight_values(out, path)
    return out


def check_weight_values(state: dict[str, torch.Tensor], path: str | os.PathLike = "<dict>") -> None:
    """Refuse encoder weights that are not floating point or not finite, naming the file and tensors.

    An int32 file (a cast by mistake, or not weights at all) would otherwise load "strictly"
    (load_state_dict copies integers into float parameters) and give features of truncated
    weights; a NaN or Inf anywhere makes every feature NaN."""
    not_float = [f"{k} ({str(v.dtype).replace('torch.', '')})" for k, v in sorted(state.items())
                 if not (v.is_floating_point() or v.is_complex())]
    if not_float:
        more = f" and {len(not_float) - 4} more" if len(not_float) > 4 else ""
        raise CheckpointError(f"{path}: encoder weights must be floating point; {len(not_float)} tensors are not: "
                              f"{', '.join(not_float[:4])}{more}")
    bad = [k for k, v in sorted(state.items()) if not v.is_meta and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise CheckpointError(f"{path}: encoder weights hold NaN or Inf values in {len(bad)} tensors: "
                              f"{', '.join(bad[:4])}{more}")


def load_encoder(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """File -> plain timm-named encoder state dict (any supported format)."""
    return encoder_state_dict(model_state(load_checkpoint_file(path), path), path)


def to_method_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference flat keys -> this suite's method layout (encoder keys under ``encoder.``)."""
    if any(k.startswith(ENCODER_PREFIX) for k in state):
        return dict(state)
    # block-level adversarial parts (AdPE rpe_k.adv_*) live inside encoder blocks
    return {(ENCODER_PREFIX + k if (is_encoder_key(k) or k.startswith("blocks.")) else k): v for k, v in state.items()}


def to_reference_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This suite's method layout -> the reference's flat keys."""
    return {(k[len(ENCODER_PREFIX):] if k.startswith(ENCODER_PREFIX) else k): v for k, v in state.items()}


def check_compatible(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise a CheckpointError listing missing, unexpected and shape-mismatched keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(own[k].shape) != tuple(state[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match the model architecture:"]
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}):\n    " + "\n    ".join(mismatched[:200]))
        if missing:
            lines.append(f"  missing keys ({len(missing)}): " + ", ".join(missing[:200]))
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:200]))
        raise CheckpointError("\n".join(lines))


def load_method_weights(model: nn.Module, path_or_state: str | os.PathLike | dict, strict: bool = True) -> None:
    """Load ours or a reference pretraining checkpoint into a method model, key for key."""
    if isinstance(path_or_state, (str, os.PathLike)):
        state = model_state(load_checkpoint_file(path_or_state), path_or_state)
        source = str(path_or_state)
    else:
        state, source = dict(path_or_state), "state dict"
    state = to_method_layout(state)
    if strict:
        check_compatible(model, state, source)
    model.load_state_dict(state, strict=strict)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`pretrain.atomic.atomic_write`; an OS error names the path."""
    try:
        atomic_write(path, lambda f: torch.save(obj, f))
    except OSError as exc:
        raise CheckpointError(f"could not write checkpoint {path}: {exc.strerror or exc}") from exc


def read_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """``{'model': tensors, 'card': card}`` from a safetensors export, ``{'model': tensors}`` from a file
    without a card (timm's own safetensors: its keys say what it is, as a ``.pth`` state dict's do);
    a corrupt file or an unreadable card is an error."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"safetensors file is corrupt or truncated: {path} ({exc})") from exc
    if CARD_METADATA_KEY not in meta:  # a plain state dict (timm's hub files): identified by its key layout
        return {"model": tensors}
    try:
        card = json.loads(meta[CARD_METADATA_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{path}: the card in the safetensors metadata is not valid JSON ({exc})") from exc
    return {"model": tensors, "card": card}


def read_card(path: str | os.PathLike) -> dict[str, Any] | None:
    """The card inside an export (``card`` / safetensors metadata), or None."""
    ckpt = load_checkpoint_file(path)
    card = ckpt.get("card")
    return card if isinstance(card, dict) else None
