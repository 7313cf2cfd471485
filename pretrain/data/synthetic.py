"""Deterministic built-in dataset: synthetic outdoor scenes with shaped objects, on disk.

Why: the suite needs data with real spatial structure to run every stage without a
download. :func:`make_builtin_dataset` renders scenes (``scenes.py``) and writes them
in the real on-disk formats, so the real loaders read them:

- ImageFolder (ImageNet): ``<root>/imagenet`` (``write_imagefolder.py``);
- COCO instances: ``<root>/coco`` (``write_coco.py``);
- ADE20K: ``<root>/ade20k/ADEChallengeData2016`` (``write_ade20k.py``).

Same seed and parameters (``builtin_config.BuiltinConfig``) give byte-identical
files; ``<root>/builtin_manifest.json`` records what each format was written with,
so a second call with the same arguments writes nothing.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable

from ..atomic import atomic_write_text
from .builtin_config import BUILTIN_VERSION, FORMATS, BuiltinConfig
from .scenes import ADE_CLASSES, ADE_PALETTE, BUILTIN_CLASSES
from .write_ade20k import write_ade20k
from .write_coco import write_coco
from .write_imagefolder import write_imagefolder

__all__ = [  # the names pretrain.data and the tools import from here
    "ADE_CLASSES",
    "ADE_PALETTE",
    "BUILTIN_CLASSES",
    "BUILTIN_VERSION",
    "FORMATS",
    "MANIFEST_NAME",
    "BuiltinConfig",
    "builtin_paths",
    "make_builtin_dataset",
    "read_manifest",
]

MANIFEST_NAME = "builtin_manifest.json"

_WRITERS = {
    "imagefolder": ("imagenet", write_imagefolder),
    "coco": ("coco", write_coco),
    "ade20k": ("ade20k/ADEChallengeData2016", write_ade20k),
}


def builtin_paths(root: str | Path) -> dict[str, Path]:
    """Where each format lives under ``root``."""
    return {fmt: Path(root) / sub for fmt, (sub, _) in _WRITERS.items()}


def read_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest under ``root``, or {} if it is missing or unreadable."""
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def make_builtin_dataset(
    root: str | Path,
    seed: int = 0,
    formats: Iterable[str] = FORMATS,
    *,
    force: bool = False,
    progress: bool = False,
    **sizes: Any,
) -> dict[str, Path]:
    """Write the built-in dataset under ``root``; returns {format: its root folder}.

    Idempotent: a format whose manifest entry (version, seed, parameters) matches and
    whose folder exists is left alone; otherwise its folder is rebuilt from scratch.

    Args:
        root: output folder (created).
        seed: base seed; the same seed and sizes give byte-identical files (same numpy / Pillow).
        formats: any of "imagefolder", "coco", "ade20k".
        force: regenerate even when the manifest matches.
        progress: show a tqdm bar per format.
        **sizes: fields of :class:`BuiltinConfig` (num_classes, coco_train, ...).
    """
    from tqdm.auto import tqdm

    root = Path(root)
    cfg = BuiltinConfig(**sizes)
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    root.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(root)
    entries = manifest.get("formats", {}) if manifest.get("version") == BUILTIN_VERSION else {}
    paths = builtin_paths(root)
    for fmt in formats:
        params = cfg.params_for(fmt)
        old = entries.get(fmt)
        if not force and old and old.get("seed") == seed and old.get("params") == params and paths[fmt].is_dir():
            continue
        if paths[fmt].exists():
            shutil.rmtree(paths[fmt])
        entries.pop(fmt, None)
        _write_manifest(root, entries)  # an interrupted run leaves no stale entry
        with tqdm(total=cfg.image_count(fmt), desc=fmt, unit="img", disable=not progress, leave=False) as bar:
            counts = _WRITERS[fmt][1](paths[fmt], seed, cfg, bar.update)
        entries[fmt] = dict(seed=seed, params=params, counts=counts)
        _write_manifest(root, entries)
    return {fmt: paths[fmt] for fmt in formats}


def _write_manifest(root: Path, entries: dict[str, Any]) -> None:
    data = dict(version=BUILTIN_VERSION, classes=list(BUILTIN_CLASSES), ade_classes=list(ADE_CLASSES),
                formats={k: entries[k] for k in sorted(entries)})
    atomic_write_text(root / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")
