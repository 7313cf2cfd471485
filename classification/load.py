"""Pretrained encoder weights into a classifier, with a report of what happened to every key.

Any checkpoint ``pretrain.weights`` understands works: this suite's pretraining
checkpoints (any method) and exported ``backbone.pth``, the reference DropPos, MAE
and AdPE files (``module.`` prefixes, pickled ``args`` ignored safely) and timm ViT
weights. As in MAE's ``main_finetune.py``, the only model weights allowed to stay
unloaded are the classifier ``head`` and, with average pooling, the ``fc_norm`` that
replaces the encoder's final ``norm`` (which is then skipped). Anything else that
does not fit (a different width, depth or patch size, nothing matching at all) is
an error naming the keys, never a silent partial load. A position table of another
grid is resized bicubically, its cls row kept.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from pretrain.atomic import atomic_write_json
from pretrain.weights import (
    CheckpointError,
    detect_format,
    encoder_state_dict,
    load_checkpoint_file,
    model_state,
)
from pretrain.models.pos_embed import resize_pos_embed


@dataclass
class PretrainedEncoder:
    """Timm-named encoder weights read from a file, with where they came from."""

    state: dict[str, torch.Tensor]
    source: str
    format: str
    dropped: list[str] = field(default_factory=list)  # non-encoder keys of the file (decoder, mask tokens ...)
    ignored_objects: list[str] = field(default_factory=list)  # pickled non-tensor objects (argparse.Namespace ...)
    method: str | None = None  # pretraining method when the file says (ours) or its format shows (reference files)


@dataclass
class LoadReport:
    """What loading did: keys loaded, resized, skipped (with reasons) and newly initialised."""

    source: str
    format: str
    method: str | None
    loaded: list[str]
    new: list[str]
    skipped: dict[str, str]
    resized: dict[str, str]
    dropped_from_file: list[str]
    ignored_objects: list[str]

    def summary(self) -> str:
        lines = [
            f"[load] {self.source} (format: {self.format}, pretraining method: {self.method or 'unknown'})",
            f"[load]   loaded {len(self.loaded)} encoder tensors",
            f"[load]   newly initialised: {', '.join(self.new) or '(none)'}",
        ]
        for k, why in self.resized.items():
            lines.append(f"[load]   resized {k}: {why}")
        for k, why in self.skipped.items():
            lines.append(f"[load]   skipped {k}: {why}")
        if self.dropped_from_file:
            shown = ", ".join(_compress(self.dropped_from_file))
            lines.append(f"[load]   not part of the encoder, ignored ({len(self.dropped_from_file)}): {shown}")
        if self.ignored_objects:
            lines.append(f"[load]   pickled objects ignored (not weights): {', '.join(self.ignored_objects)}")
        return "\n".join(lines)

    def save(self, out_dir: str | os.PathLike) -> Path:
        path = Path(out_dir) / "load_report.json"
        atomic_write_json(path, asdict(self))
        return path


def _compress(keys: list[str]) -> list[str]:
    """Collapse ``decoder_blocks.3.mlp.fc1.weight`` & co. into ``decoder_blocks.*`` for display."""
    out: list[str] = []
    for k in keys:
        parts = k.split(".")
        short = f"{parts[0]}.*" if len(parts) > 1 else k
        if short not in out:
            out.append(short)
    return out


def read_pretrained(path: str | os.PathLike) -> PretrainedEncoder:
    """Read any supported checkpoint file and keep its timm-named encoder weights.

    Pickled non-tensor objects (the reference's argparse Namespace) are skipped safely;
    they are listed in the report rather than warned about.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ignored pickled objects.*")
        ckpt = load_checkpoint_file(path)
    full = model_state(ckpt, path)
    fmt = detect_format(full)
    enc = encoder_state_dict(full, path)
    inner = {k[len("encoder."):] if k.startswith("encoder.") else k for k in full}
    dropped = sorted(inner - set(enc))
    method = ckpt.get("method") if isinstance(ckpt.get("method"), str) else None
    if method is None and fmt in ("droppos", "mae", "adpe"):
        method = fmt
    return PretrainedEncoder(enc, str(path), fmt, dropped, list(ckpt.get("__ignored__", [])), method)


def expected_new_keys(model: nn.Module) -> set[str]:
    """Keys a pretrained encoder never provides: the head and, when pooling averages, fc_norm."""
    own = model.state_dict()
    prefixes = ["head."]
    if not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity):
        prefixes.append("fc_norm.")
    return {k for k in own if any(k.startswith(p) for p in prefixes)}


def _grid_of(n: int, source: str) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(f"{source}: pos_embed has {n} patch rows, not a square grid; cannot resize it")
    return side, side


def load_pretrained(model: nn.Module, pretrained: PretrainedEncoder | str | os.PathLike) -> LoadReport:
    """Load encoder weights into ``model`` (a ViT classifier); raise CheckpointError on any mismatch.

    Returns the report; the model's head (and fc_norm) keep their fresh initialisation.
    """
    if not isinstance(pretrained, PretrainedEncoder):
        pretrained = read_pretrained(pretrained)
    src = pretrained.source
    own = model.state_dict()
    state = dict(pretrained.state)
    resized: dict[str, str] = {}
    skipped: dict[str, str] = {}

    pe, own_pe = state.get("pos_embed"), own.get("pos_embed")
    if pe is not None and own_pe is not None and pe.shape != own_pe.shape and pe.shape[-1] == own_pe.shape[-1]:
        old_grid = _grid_of(pe.shape[1] - 1, src)
        new_grid = tuple(model.patch_embed.grid_size)
        state["pos_embed"] = resize_pos_embed(pe, new_grid, num_prefix_tokens=1, old_grid=old_grid)
        resized["pos_embed"] = (f"grid {old_grid[0]}x{old_grid[1]} -> {new_grid[0]}x{new_grid[1]} "
                                "(bicubic, cls row kept)")

    if isinstance(getattr(model, "norm", None), nn.Identity):
        for k in [k for k in state if k.startswith("norm.")]:
            skipped[k] = "final norm unused with global_pool='avg' (fc_norm after pooling replaces it, as in MAE)"
            del state[k]

    matched = [k for k in state if k in own and own[k].shape == state[k].shape]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state if k in own and own[k].shape != state[k].shape]
    unexpected = sorted(k for k in state if k not in own)
    if not matched or mismatched or unexpected:
        if matched:
            lines = [f"{src} does not fit the model (check model.size, model.patch_size):"]
        else:
            lines = [f"nothing of the encoder in {src} matches the model (check model.size, model.patch_size); "
                     f"checkpoint keys: {', '.join(sorted(state)[:6])}, ..."]
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}):\n    " + "\n    ".join(mismatched[:50]))
        if unexpected:
            lines.append(f"  checkpoint keys the model lacks ({len(unexpected)}): " + ", ".join(unexpected[:50]))
        raise CheckpointError("\n".join(lines))

    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys)
    expected = expected_new_keys(model)
    if missing != expected:
        extra = sorted(missing - expected)
        raise CheckpointError(
            f"{src} lacks encoder weights the model needs ({len(extra)}): {', '.join(extra[:50])}"
            + (f"; expected only {sorted(expected)} to be new" if expected else "")
        )
    return LoadReport(
        source=src,
        format=pretrained.format,
        method=pretrained.method,
        loaded=sorted(matched),
        new=sorted(missing),
        skipped=skipped,
        resized=resized,
        dropped_from_file=pretrained.dropped,
        ignored_objects=pretrained.ignored_objects,
    )
