"""Pretrained encoders into the ViTDet detector: key mapping and a Detectron2 checkpointer.

``train.init_checkpoint`` may name any checkpoint ``pretrain.weights`` understands (this
suite's pretraining runs, reference DropPos / MAE / AdPE files, timm ViT weights, exported
backbones) or a Detectron2 checkpoint of this detector (resuming, evaluating). The former
are read safely (weights only; a pickled ``argparse.Namespace`` is ignored), reduced to the
timm-named encoder weights and renamed to ``backbone.net.<timm name>``; ViTDet uses neither
the cls token nor the final norm, so those are dropped, and a position table pretrained at
another resolution is resized. Detectron2's loader then receives plain tensors with no
shape mismatch. Counts of loaded / new / unused keys are logged and kept in
``ViTDetCheckpointer.load_report``.
"""
from __future__ import annotations

from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from pretrain.weights import encoder_state_dict, load_checkpoint_file, model_state
from pretrain.models.pos_embed import resize_pos_embed

BACKBONE_PREFIX = "backbone.net."
DETECTRON2_PREFIXES = ("backbone.", "proposal_generator.", "roi_heads.", "pixel_mean", "pixel_std")
# Encoder keys a ViTDet backbone has no place for.
UNUSED_ENCODER_KEYS = ("cls_token", "norm.weight", "norm.bias")


def is_detectron2_state(state: dict[str, Any]) -> bool:
    """True for a state dict of a whole Detectron2 model (keys ``backbone.``, ``roi_heads.``...)."""
    keys = [k for k in state if isinstance(state[k], torch.Tensor)]
    return bool(keys) and all(k.startswith(DETECTRON2_PREFIXES) for k in keys)


def encoder_to_vitdet(
    encoder: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor] | None = None,
    prefix: str = BACKBONE_PREFIX,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """timm-named encoder weights -> detector keys (``backbone.net.blocks.0.attn.qkv.weight``).

    Args:
        encoder: plain encoder state dict (``pretrain.weights.encoder_state_dict``).
        target: the detector's state dict; when given, keys it lacks are dropped and a
            ``pos_embed`` of another grid is resized bicubically to the target's.
        prefix: where the encoder sits in the detector.
    Returns:
        (converted state dict, report with ``loaded`` / ``new`` / ``unused`` key lists).
    """
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in encoder.items():
        name = prefix + key
        if key in UNUSED_ENCODER_KEYS or (target is not None and name not in target):
            unused.append(key)
            continue
        if key == "pos_embed" and target is not None and target[name].shape != value.shape:
            rows = target[name].shape[1] - 1
            side = int(round(rows ** 0.5))
            value = resize_pos_embed(value, (side, side), num_prefix_tokens=1)
        if target is not None and target[name].shape != value.shape:
            unused.append(f"{key} (shape {tuple(value.shape)} vs {tuple(target[name].shape)})")
            continue
        out[name] = value.detach().clone().contiguous()
    report: dict[str, Any] = {"loaded": sorted(out), "unused": sorted(unused)}
    if target is not None:
        report["new"] = sorted(k for k in target if k not in out)
    return out, report


def summarize_report(report: dict[str, Any]) -> str:
    """One-line summary: counts, and the new keys grouped by where they sit."""
    groups: dict[str, int] = {}
    for key in report.get("new", []):
        if ".rel_pos_" in key:
            group = "rel-pos tables"
        elif key.startswith(BACKBONE_PREFIX):
            group = "other encoder"
        elif key.startswith("backbone."):
            group = "feature pyramid"
        else:
            group = key.split(".")[0]
        groups[group] = groups.get(group, 0) + 1
    new = ", ".join(f"{k} {v}" for k, v in sorted(groups.items())) or "none"
    return (
        f"loaded {len(report['loaded'])} encoder tensors; new {len(report.get('new', []))} ({new}); "
        f"unused {len(report['unused'])} ({', '.join(report['unused']) or 'none'})"
    )


class ViTDetCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also reads pretraining checkpoints of any known format."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.load_report: dict[str, Any] | None = None

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):  # Detectron2 / Detectron model-zoo pickles
            return super()._load_file(filename)
        ckpt = load_checkpoint_file(filename)
        inner = ckpt.get("model") if isinstance(ckpt.get("model"), dict) else ckpt
        if is_detectron2_state(inner):
            self.load_report = {"format": "detectron2", "loaded": sorted(inner)}
            return ckpt if "model" in ckpt else {"model": ckpt}
        encoder = encoder_state_dict(model_state(ckpt, filename), filename)
        converted, report = encoder_to_vitdet(encoder, self.model.state_dict())
        report["format"] = "pretrain-encoder"
        self.load_report = report
        self.logger.info(f"Pretrained encoder {filename}: {summarize_report(report)}")
        return {"model": converted, "__author__": "droppos", "matching_heuristics": False}
