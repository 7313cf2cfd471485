"""The card of an exported backbone: what the weights are and where they came from.

Written beside every export as ``<DST>.card.json`` (and inside a safetensors file as
metadata, inside a ``.pth`` under ``card``): the pretraining method, recipe file,
epochs, image and patch size, the position-embedding kind (absolute, or relative
with its kind), the source file and its sha256, and the metrics known for it (the
run folder's ``pretrain_metrics.json`` / ``config.yaml`` beside the source).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_json

CARD_VERSION = 1
CARD_SUFFIX = ".card.json"
CARD_METADATA_KEY = "droppos_card"  # where a safetensors export keeps its card


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks; computed once per (path, size, modification time)
    in a process, so the card, the run identity, the stage inputs and the feature cache share one read
    (a file replaced in place gets a new inode or change time, so it is read again)."""
    st = os.stat(path)
    return _sha256_of(os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int, inode: int, ctime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(dst: str | os.PathLike) -> Path:
    """Where the JSON card of an export lives: ``backbone.safetensors`` -> ``backbone.safetensors.card.json``."""
    dst = Path(dst)
    return dst.with_name(dst.name + CARD_SUFFIX)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        return cfg if isinstance(cfg, dict) else None
    except Exception:  # a config the reader cannot parse is not part of the card
        return None


def position_embedding_kind(encoder: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``absolute`` or ``relative`` (with which tables), read off the encoder's keys."""
    keys = list(encoder)
    kinds = sorted({name for k in keys for name, part in (
        ("contextual (iRPE, AdPE)", ".attn.rpe_k."),
        ("decomposed (ViTDet rel_pos_h/w)", ".attn.rel_pos_h"),
        ("bias table (BEiT / MMSeg)", ".attn.relative_position_bias_table"),
    ) if part in k})
    return {"position_embedding": "relative" if kinds else "absolute", "relative_position": kinds or None,
            "absolute_table": "pos_embed" in encoder}


def patch_grid(encoder: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """The (rows, cols) patch grid the encoder was trained on, or None when its tables do not say.

    From the absolute position table (a cls row plus a square grid); an encoder without one
    (BEiT) from its relative bias table, ``(2h - 1)(2w - 1) + 3`` rows for a square grid. A
    table whose rows are no square grid (non-square training size) gives None: the grid
    cannot be told from the row count alone.
    """
    if "pos_embed" in encoder:
        rows = int(encoder["pos_embed"].shape[1])
        side = math.isqrt(max(rows - 1, 0))
        return (side, side) if side and side * side == rows - 1 else None
    table = next((v for k, v in encoder.items() if k.endswith("attn.relative_position_bias_table")), None)
    if table is not None:
        span = math.isqrt(max(int(table.shape[0]) - 3, 0))
        if span * span == int(table.shape[0]) - 3 and span % 2 == 1:
            return ((span + 1) // 2, (span + 1) // 2)
    return None


def method_from_keys(state: dict[str, torch.Tensor]) -> str | None:
    """The pretraining method a checkpoint's own keys show (its heads and tokens), or None.

    DropPos has ``mask_pos_token``; AdPE's adversaries have ``adv_*`` parameters; a masked
    decoder with a ``mask_token`` and nothing else is MAE (AdPE's MAE+ has the same keys:
    the card's ``method_from`` says so)."""
    keys = {k[len("encoder."):] if k.startswith("encoder.") else k for k in state}
    if "mask_pos_token" in keys:
        return "droppos"
    if any(re.search(r"(^|\.)adv_", k) for k in keys):
        return "adpe"
    if "mask_token" in keys and any(k.startswith("decoder_") for k in keys):
        return "mae"
    return None


def _metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The numbers worth carrying: the final epoch's stats and the run's size, no history."""
    if not metrics:
        return {}
    keep = {k: metrics[k] for k in ("task", "arch", "epochs", "epochs_done", "steps", "wall_seconds_total")
            if k in metrics}
    if isinstance(metrics.get("final"), dict):
        keep["final"] = metrics["final"]
    return keep


def build_card(
    src: str | os.PathLike,
    ckpt: dict[str, Any],
    encoder: dict[str, torch.Tensor],
    source_format: str,
    target: str,
    state: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The card of ``encoder`` exported from ``src`` (the loaded ``ckpt``; ``state``: its weights,
    which tell the method when no config sits beside it) to ``target``."""
    src = Path(src)
    old = ckpt.get("card") if isinstance(ckpt.get("card"), dict) else None
    if old is None and src.suffix != CARD_SUFFIX:
        old = _read_json(card_path(src))
    if old:  # re-exporting an export: keep its history, record the new hop
        return {**old, "exported_to": target, "converted_from": {"file": src.name, "sha256": file_sha256(src),
                                                                  "format": source_format}}
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    recipe = None
    if (src.parent / "config.yaml").is_file():
        recipe = str(src.parent / "config.yaml")
        config = config or _read_yaml(src.parent / "config.yaml")
    config = config or {}
    metrics = _read_json(src.parent / "pretrain_metrics.json") or {}
    arch = ckpt.get("arch") if isinstance(ckpt.get("arch"), dict) else {}
    method = ckpt.get("method") if isinstance(ckpt.get("method"), str) else config.get("method") or metrics.get("method")
    if method is None and source_format in ("droppos", "mae", "adpe"):
        method = source_format
    method_from = "config" if method is not None else None
    if method is None and state is not None:
        method = method_from_keys(state)
        method_from = {None: None, "mae": "keys (AdPE's MAE+ has the same keys as MAE)"}.get(method, "keys")
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    epochs = train.get("epochs", metrics.get("epochs", ckpt.get("epoch")))
    patch = int(encoder["patch_embed.proj.weight"].shape[-1])
    grid = patch_grid(encoder)
    return {
        "card_version": CARD_VERSION,
        "method": method or "unknown",
        "method_from": method_from,
        "recipe": recipe or config.get("recipe"),
        "epochs": epochs if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) else None,
        "img_size": arch.get("img_size", grid[0] * patch if grid and grid[0] == grid[1] else None),
        "patch_size": patch,
        "embed_dim": int(encoder["patch_embed.proj.weight"].shape[0]),
        "depth": 1 + max(int(k.split(".")[1]) for k in encoder if k.startswith("blocks.")),
        **position_embedding_kind(encoder),
        "source": {"file": src.name, "sha256": file_sha256(src), "format": source_format},
        "metrics": _metrics(metrics),
        "exported_to": target,
    }


def write_card(dst: str | os.PathLike, card: dict[str, Any]) -> Path:
    """Write the card as JSON beside ``dst`` (atomically)."""
    return atomic_write_json(card_path(dst), card)
