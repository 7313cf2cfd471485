"""The card of an exported backbone: what the weights are and where they came from.

Written beside every export as ``<DST>.card.json`` (and inside a safetensors file as
metadata, inside a ``.pth`` under ``card``): the pretraining method and where it was
read (:func:`resolve_method`), recipe file, epochs, image and patch size, width, depth and
heads (:mod:`pretrain.weights.shape`, the heads as the source's config says where it does),
the position-embedding kind (absolute, or relative with its kind), the source file and its
sha256, and the metrics known for it (the run folder's ``pretrain_metrics.json`` /
``config.yaml`` beside the source).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_json
from .shape import attention_heads, encoder_shape, standard_heads

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


LAYOUT_METHODS = ("droppos", "mae", "adpe")  # the reference checkpoints' layouts, one per method
MAE_KEYS_NOTE = "keys (AdPE's MAE+ has the same keys as MAE)"


def _named(value: Any) -> str | None:
    """A method name, or None for what names none (not text, empty, ``unknown``)."""
    return value if isinstance(value, str) and value not in ("", "unknown") else None


def resolve_method(
    ckpt: dict[str, Any],
    source_format: str,
    state: dict[str, torch.Tensor] | None = None,
    card: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> tuple[str | None, str | None]:
    """(the pretraining method of a loaded checkpoint, where it was read), or (None, None).

    The first that says, in this order: the checkpoint's own ``method`` entry (``checkpoint``); its
    card (``card``: ``card``, else the one inside the file); its config (``config``: ``config``, e.g.
    the run's ``config.yaml``, else the one inside the file); the run's metrics (``metrics``:
    ``pretrain_metrics.json``); the reference layout (``layout``: ``source_format`` droppos / mae /
    adpe); the keys of ``state`` (``keys``, :func:`method_from_keys`). One rule for the card, the
    identity of a file (``pretrain.weights.identify``) and the analyses' backbone loader.
    """
    if card is None and isinstance(ckpt.get("card"), dict):
        card = ckpt["card"]
    if config is None and isinstance(ckpt.get("config"), dict):
        config = ckpt["config"]
    for value, where in ((ckpt.get("method"), "checkpoint"), ((card or {}).get("method"), "card"),
                         ((config or {}).get("method"), "config"), ((metrics or {}).get("method"), "metrics")):
        if _named(value):
            return value, where
    if source_format in LAYOUT_METHODS:
        return source_format, "layout"
    method = method_from_keys(state) if state is not None else None
    return (method, MAE_KEYS_NOTE if method == "mae" else "keys") if method else (None, None)


@dataclass
class SourceInfo:
    """What travels in and beside a source file: its card, its run's config (and where) and metrics."""

    card: dict[str, Any] | None
    config: dict[str, Any]
    recipe: str | None  # the config.yaml beside the source, when there is one
    metrics: dict[str, Any]


def source_info(src: str | os.PathLike, ckpt: dict[str, Any]) -> SourceInfo:
    """The card (inside ``ckpt``, else ``<src>.card.json``), the config (inside, else the run's ``config.yaml``
    beside) and the run's ``pretrain_metrics.json`` of a loaded source file."""
    src = Path(src)
    card = ckpt.get("card") if isinstance(ckpt.get("card"), dict) else None
    if card is None and src.suffix != CARD_SUFFIX:
        card = _read_json(card_path(src))
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    recipe = None
    if (src.parent / "config.yaml").is_file():
        recipe = str(src.parent / "config.yaml")
        config = config or _read_yaml(src.parent / "config.yaml")
    return SourceInfo(card or None, config or {}, recipe, _read_json(src.parent / "pretrain_metrics.json") or {})


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def declared_heads(ckpt: dict[str, Any], info: SourceInfo, embed_dim: int) -> tuple[int | None, str]:
    """(the attention heads the source says it has, who says): its card's ``num_heads`` (unless that was
    itself guessed), its ``arch`` entry's or config's ``model.num_heads``, else the standard size the
    ``arch`` entry or config names (``model.size``) when that size has the weights' width; (None, '')."""
    card = info.card or {}
    if _count(card.get("num_heads")) and not str(card.get("num_heads_from", "")).startswith("guessed"):
        return _count(card["num_heads"]), "the source's card"
    model = info.config.get("model") if isinstance(info.config.get("model"), dict) else {}
    for arch in (ckpt.get("arch"), model):
        if not isinstance(arch, dict):
            continue
        if _count(arch.get("num_heads")):
            return _count(arch["num_heads"]), "the source's config"
        heads = standard_heads(embed_dim, arch["size"]) if isinstance(arch.get("size"), str) else None
        if heads:
            return heads, f"the source's config (ViT-{arch['size']})"
    return None, ""


def build_card(
    src: str | os.PathLike,
    ckpt: dict[str, Any],
    encoder: dict[str, torch.Tensor],
    source_format: str,
    target: str,
    state: dict[str, torch.Tensor] | None = None,
    info: SourceInfo | None = None,
) -> dict[str, Any]:
    """The card of ``encoder`` exported from ``src`` (the loaded ``ckpt``; ``state``: its weights,
    which tell the method when no config sits beside it; ``info``: :func:`source_info`, read here when
    not given) to ``target``."""
    src = Path(src)
    info = info or source_info(src, ckpt)
    if info.card:  # re-exporting an export: keep its history, record the new hop
        return {**info.card, "exported_to": target,
                "converted_from": {"file": src.name, "sha256": file_sha256(src), "format": source_format}}
    config, metrics = info.config, info.metrics
    arch = ckpt.get("arch") if isinstance(ckpt.get("arch"), dict) else {}
    method, method_from = resolve_method(ckpt, source_format, state, config=config, metrics=metrics)
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    epochs = train.get("epochs", metrics.get("epochs", ckpt.get("epoch")))
    shape = encoder_shape(encoder)
    heads, heads_from = attention_heads(encoder, *declared_heads(ckpt, info, shape.embed_dim))
    return {
        "card_version": CARD_VERSION,
        "method": method or "unknown",
        "method_from": method_from,
        "recipe": info.recipe or config.get("recipe"),
        "epochs": epochs if isinstance(epochs, (int, float)) and not isinstance(epochs, bool) else None,
        "img_size": arch.get("img_size", shape.img_size),
        "patch_size": shape.patch_size,
        "embed_dim": shape.embed_dim,
        "depth": shape.depth,
        "num_heads": heads,
        "num_heads_from": heads_from,
        **position_embedding_kind(encoder),
        "source": {"file": src.name, "sha256": file_sha256(src), "format": source_format},
        "metrics": _metrics(metrics),
        "exported_to": target,
    }


def write_card(dst: str | os.PathLike, card: dict[str, Any]) -> Path:
    """Write the card as JSON beside ``dst`` (atomically)."""
    return atomic_write_json(card_path(dst), card)
