"""Export an encoder for timm, safetensors, Detectron2 or MMSegmentation, with its card.

Every target starts from the same timm-named encoder (``pretrain.weights.load_encoder``
of any supported source), laid out by ``pretrain.weights.targets`` (names, what is
folded, filled, kept aside or refused, and how the target's library loads the file),
and writes one file plus ``<DST>.card.json``:

- ``timm``: ``{'model': weights, 'card': card}`` (``.pth``), loaded strictly by
  ``timm.create_model(name, pretrained=True, num_classes=0, img_size=..., patch_size=...,
  pretrained_cfg_overlay=dict(file=DST, num_classes=0))``;
- ``safetensors``: the flat weights, the card as JSON in the metadata (``droppos_card``);
  a safetensors file without one is refused on reading;
- ``detectron2``: ``{'model': {'backbone.net.<timm name>': ...}}`` for this suite's ViTDet;
- ``mmseg`` / ``mmseg-vit``: ``{'state_dict': {<MMSeg name>: ...}, 'meta': {...}}`` for
  MMSegmentation's own ``MAE`` / ``VisionTransformer`` backbone
  (``init_cfg=dict(type='Pretrained', checkpoint=DST)``);
- ``droppos-upernet``: ``{'state_dict': {'backbone.<timm name>': ...}}`` for this suite's UperNet.

What a target has no place for travels under ``droppos_extras`` and is named in the card's
``target_notes`` (and on screen when it is a learned weight the target will not use).

Every check comes before any write: the destination is neither the source nor its card,
neither it nor its card exists (unless ``overwrite``) or is a folder; the target can hold
the encoder. The files are written in a hidden folder beside the destination, checked
there (``verify``, e.g. a strict timm build), then moved into place: a failed check or
write leaves nothing behind, and an OS error is one :class:`CheckpointError` line.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_write, atomic_write_json
from .card import CARD_METADATA_KEY, build_card, card_path, declared_heads, source_info
from .read import EXTRAS_KEY, CheckpointError, atomic_torch_save, detect_format, encoder_state_dict, \
    load_checkpoint_file, model_state
from .shape import encoder_shape
from .targets import TARGETS, Plan, grid_note, plan_target


@dataclass
class Export:
    """What an export wrote: the encoder (timm names), its card, the files, and what to tell the user."""

    encoder: dict[str, torch.Tensor]
    card: dict[str, Any]
    source_format: str
    files: list[Path]
    warnings: list[str] = field(default_factory=list)
    load_with: str = ""


def _plain(encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous, unshared CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in encoder.items()}


def write_safetensors(path: str | os.PathLike, encoder: dict[str, torch.Tensor], card: dict[str, Any]) -> None:
    """Flat tensors plus the card (JSON) as metadata, written atomically."""
    from safetensors.torch import save

    blob = save(_plain(encoder), metadata={"format": "pt", CARD_METADATA_KEY: json.dumps(card)})
    atomic_write(path, lambda f: f.write(blob))


def _write_timm(dst: Path, plan: Plan, card: dict[str, Any]) -> None:
    atomic_torch_save({"model": plan.take, "card": card, "format": "droppos-backbone"}, dst)


def _write_safetensors(dst: Path, plan: Plan, card: dict[str, Any]) -> None:
    write_safetensors(dst, plan.take, card)


def _write_detectron2(dst: Path, plan: Plan, card: dict[str, Any]) -> None:
    atomic_torch_save({"model": plan.take, EXTRAS_KEY: plan.aside, "card": card, "__author__": "droppos",
                       "matching_heuristics": False}, dst)


def _write_mmengine(dst: Path, plan: Plan, card: dict[str, Any]) -> None:
    atomic_torch_save({"state_dict": plan.take, EXTRAS_KEY: plan.aside, "card": card,
                       "meta": {"droppos_card": json.dumps(card)}}, dst)


WRITERS: dict[str, Callable[[Path, Plan, dict[str, Any]], None]] = {
    "timm": _write_timm,
    "safetensors": _write_safetensors,
    "detectron2": _write_detectron2,
    "mmseg": _write_mmengine,
    "mmseg-vit": _write_mmengine,
    "droppos-upernet": _write_mmengine,
}


def check_destination(src: Path, dst: Path, overwrite: bool = False) -> None:
    """Refuse, before anything is read or written, a destination that would replace the source or its
    card, is a folder, lies below a file, or exists (its card too) without ``overwrite``."""
    card = card_path(dst)
    sources = {src.resolve(), card_path(src).resolve()}
    for path in (dst, card):
        if path.resolve() in sources:
            raise CheckpointError(f"{path}: the export would overwrite its source {src} or the source's card; "
                                  "choose another DST")
        if path.is_dir():
            raise CheckpointError(f"{path} is a folder; give DST as a file name")
    parent = next((p for p in dst.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise CheckpointError(f"cannot write {dst}: {parent} is a file, not a folder")
    if not overwrite:
        existing = [p for p in (dst, card) if p.exists()]
        if existing:
            raise CheckpointError(f"{existing[0]} exists; pass --overwrite (overwrite=True) to replace it")


def _staged_write(dst: Path, write: Callable[[Path, Path], None], verify: Callable[[Path], None] | None) -> None:
    """``write(weights, card)`` into a hidden folder beside ``dst``, ``verify(weights)``, then move both into place."""
    stage = dst.parent / f".{dst.name}.export{os.getpid()}"
    try:
        try:
            stage.mkdir(parents=True, exist_ok=True)
            weights, card = stage / dst.name, stage / card_path(dst).name
            write(weights, card)
        except CheckpointError as exc:  # atomic_torch_save names the staged file: name the destination
            cause = exc.__cause__
            if isinstance(cause, OSError):
                raise CheckpointError(f"could not write {dst}: {cause.strerror or cause}") from cause
            raise
        except OSError as exc:
            raise CheckpointError(f"could not write {dst}: {exc.strerror or exc}") from exc
        if verify is not None:
            verify(weights)
        try:
            os.replace(weights, dst)
            os.replace(card, card_path(dst))
        except OSError as exc:
            raise CheckpointError(f"could not write {dst}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def export_weights(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str = "timm",
    overwrite: bool = False,
    verify: Callable[[Path], None] | None = None,
    also_fits: str | None = None,
) -> Export:
    """Read any supported ``src``, write its encoder for ``to`` at ``dst`` and the card beside it.

    ``verify(path)`` checks the written file before it is moved to ``dst`` (raise CheckpointError to
    refuse it: nothing is left behind). ``also_fits`` names a second target the file must load into as it
    is (``safetensors`` checked for ``timm``): refused before writing when that target would need changes."""
    if to not in WRITERS:
        raise ValueError(f"unknown export target {to!r}; choose one of {list(TARGETS)}")
    src, dst = Path(src), Path(dst)
    check_destination(src, dst, overwrite)
    ckpt = load_checkpoint_file(src)
    state = model_state(ckpt, src)
    fmt = detect_format(state, src)
    encoder = encoder_state_dict(state, src)
    info = source_info(src, ckpt)
    heads = declared_heads(ckpt, info, encoder_shape(encoder).embed_dim)[0]
    plan = plan_target(encoder, to, str(src), heads)
    if also_fits is not None:
        needs = plan_target(encoder, also_fits, str(src), heads).notes
        if needs:
            raise CheckpointError(f"{src}: a {to} file keeps the weights as they are, and {also_fits} needs them "
                                  f"changed ({'; '.join(needs)}): export --to {also_fits} for {also_fits}")
    card = build_card(src, ckpt, encoder, fmt, to, state, info)
    notes = dict(plan.notes)
    no_size = grid_note(encoder)
    if no_size:
        notes["image size"] = no_size
    if plan.heads_note:
        notes["num_heads"] = plan.heads_note
    card = {k: v for k, v in card.items() if k not in ("target_notes", "target_config", "load_with")}
    card.update({"exported_to": to, "load_with": plan.load_with.replace("{dst}", dst.name)})
    if notes:
        card["target_notes"] = notes
    if plan.config:
        card["target_config"] = plan.config

    def write(weights: Path, card_file: Path) -> None:
        WRITERS[to](weights, plan, card)
        atomic_write_json(card_file, card)  # beside the staged weights: <name>.card.json

    _staged_write(dst, write, verify)
    return Export(encoder, card, fmt, [dst, card_path(dst)], list(plan.warnings),
                  plan.load_with.replace("{dst}", str(dst)))


def export_backbone(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Write an encoder-only file (``{'model': timm-named weights, 'card': ...}``) and its card from any
    checkpoint, replacing an earlier one (a run's own ``backbone.pth``)."""
    return export_weights(src, dst, "timm", overwrite=True).encoder
