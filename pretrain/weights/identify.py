"""What a checkpoint file is, read off its bytes and weights: the provenance of an initialisation.

:func:`identify_checkpoint` reads any file ``pretrain.weights`` understands (never
downloading: a hub name without a local file is refused by :func:`not_a_local_file`) and
returns its sha256, the layout detected, the pretraining method when the file or its
layout says, the ViT architecture (width, depth, patch size, image size from the position
table, the standard size name when one fits), the position-embedding kind and the card
when the file carries one (inside, or as ``<file>.card.json`` beside it).
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .card import _read_json, card_path, file_sha256, position_embedding_kind, resolve_method
from .read import CheckpointError, detect_format, encoder_state_dict, load_checkpoint_file, model_state
from .shape import EncoderShape, encoder_shape
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".pkl", ".tar")
_HUB = re.compile(r"^(hf[-_]hub:|timm/|hf://|https?://)|^[\w.-]+/[\w.-]+$|^vit_\w+(\.\w+)?$")


def not_a_local_file(path: str | os.PathLike) -> str:
    """'' when ``path`` is a local file, else why not: missing, a folder, or a hub name (never downloaded)."""
    p = Path(path).expanduser()
    if p.is_file():
        return ""
    text = str(path)
    if p.is_dir():
        return f"{text} is a folder, not a checkpoint file"
    if _HUB.search(text) and not text.endswith(WEIGHT_SUFFIXES):
        return (f"{text!r} is not a local file: it reads as a hub or model name, and nothing is ever downloaded "
                "(fetch the weights yourself and pass the file's path)")
    return f"checkpoint file not found: {text}"


@dataclass
class CheckpointIdentity:
    """Provenance of one weights file."""

    file: str
    sha256: str
    format: str  # pretrain.weights.detect_format's layout name (ours, droppos, mae, adpe, timm, backbone, ...)
    container: str  # pth | safetensors
    declared_format: str | None  # the file's own 'format' entry (the suite's exports), if any
    method: str | None
    embed_dim: int
    depth: int
    patch_size: int
    img_size: int | None  # from the absolute position table (or the card when there is none)
    size: str | None  # tiny / small / base / large / huge when (width, depth) is a standard one
    position_embedding: dict[str, Any]
    card: dict[str, Any] | None
    encoder_tensors: int
    dropped: list[str] = field(default_factory=list)  # the file's non-encoder keys (decoder, mask tokens ...)
    encoder: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)  # timm names


    @property
    def arch(self) -> str:
        """``vit_<size>_patch<p>_<img>`` (``vit_<D>d<depth>`` when the size is not standard)."""
        name = self.size or f"{self.embed_dim}d{self.depth}"
        return f"vit_{name}_patch{self.patch_size}_{self.img_size if self.img_size else 'unknown'}"

    def to_dict(self) -> dict[str, Any]:
        """Every field but the tensors (JSON-ready), and ``arch``."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("encoder", "dropped")}
        return {**out, "dropped_from_file": len(self.dropped), "arch": self.arch}


def _image_size(shape: EncoderShape, card: dict[str, Any] | None, path: str) -> int | None:
    """The training image size: the position tables' grid times the patch (:mod:`pretrain.weights.shape`),
    else the card's when the encoder has no table that tells; a table of no square grid is refused."""
    if shape.img_size is not None:
        return shape.img_size
    if shape.table_rows is not None:
        raise CheckpointError(f"{path}: the position table has {shape.table_rows} rows, neither a square grid nor "
                              "one plus a square (a non-square grid has no single image size)")
    size = (card or {}).get("img_size")
    return int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None


def identify_checkpoint(path: str | os.PathLike, keep_encoder: bool = False) -> CheckpointIdentity:
    """Read ``path`` and say what it is (CheckpointError naming the file when it holds no ViT encoder).

    ``keep_encoder``: keep the timm-named encoder tensors in ``.encoder`` (to load them without reading again).
    """
    why = not_a_local_file(path)
    if why:
        raise CheckpointError(why)
    path = Path(path).expanduser()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ignored pickled objects.*")
        ckpt = load_checkpoint_file(path)
    state = model_state(ckpt, path)
    fmt = detect_format(state, path)
    encoder = encoder_state_dict(state, path)
    card = ckpt.get("card") if isinstance(ckpt.get("card"), dict) else _read_json(card_path(path))
    method, _ = resolve_method(ckpt, fmt, state, card=card)
    proj = encoder["patch_embed.proj.weight"]
    if proj.ndim != 4 or proj.shape[-1] != proj.shape[-2]:
        raise CheckpointError(f"{path}: patch_embed.proj.weight has shape {tuple(proj.shape)}, not a square "
                              "convolution [D, 3, p, p]")
    shape = encoder_shape(encoder)
    declared = ckpt.get("format") if isinstance(ckpt.get("format"), str) else None
    return CheckpointIdentity(
        file=str(path), sha256=file_sha256(path), format=fmt,
        container="safetensors" if path.suffix == ".safetensors" else "pth", declared_format=declared,
        method=method, embed_dim=shape.embed_dim, depth=shape.depth, patch_size=shape.patch_size,
        img_size=_image_size(shape, card, str(path)), size=shape.size,
        position_embedding=position_embedding_kind(encoder), card=card, encoder_tensors=len(encoder),
        dropped=sorted(set(state) - set(encoder)), encoder=encoder if keep_encoder else None)
