"""What decides the built-in dataset's files: its sizes and the seeding of every image.

Same seed and sizes give byte-identical files because every image draws from its
own generator seeded by (seed, format, split, index), so images never depend on
how many others were written before them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .scenes import BUILTIN_CLASSES

BUILTIN_VERSION = 1
FORMATS = ("imagefolder", "coco", "ade20k")

_FORMAT_IDS = {"imagefolder": 1, "coco": 2, "ade20k": 3}
_SPLIT_IDS = {"train": 0, "val": 1}
# The config fields that decide each format's files: (image size, train count, val count).
_FORMAT_FIELDS = {
    "imagefolder": ("imagefolder_size", "imagefolder_train_per_class", "imagefolder_val_per_class"),
    "coco": ("coco_size", "coco_train", "coco_val"),
    "ade20k": ("ade_size", "ade_train", "ade_val"),
}


@dataclasses.dataclass(frozen=True)
class BuiltinConfig:
    """Sizes of the built-in dataset (defaults: CPU training in minutes).

    Sizes given as (lo, hi) draw each image side uniformly from lo..hi (multiples of 8).
    """

    num_classes: int = 10
    imagefolder_size: int = 96
    imagefolder_train_per_class: int = 100
    imagefolder_val_per_class: int = 20
    coco_train: int = 200
    coco_val: int = 50
    coco_size: tuple[int, int] = (192, 256)
    ade_train: int = 200
    ade_val: int = 50
    ade_size: tuple[int, int] = (160, 224)
    max_objects: int = 3
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes <= len(BUILTIN_CLASSES):
            raise ValueError(f"num_classes must be in 1..{len(BUILTIN_CLASSES)}, got {self.num_classes}")
        for name in ("coco_size", "ade_size"):
            lo, hi = getattr(self, name)
            if not 32 <= lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with 32 <= lo <= hi, got {(lo, hi)}")
            object.__setattr__(self, name, (int(lo), int(hi)))
        if self.imagefolder_size < 32 or self.max_objects < 1:
            raise ValueError("imagefolder_size must be >= 32 and max_objects >= 1")

    @property
    def classes(self) -> tuple[str, ...]:
        return BUILTIN_CLASSES[: self.num_classes]

    def _fields(self, fmt: str) -> tuple[str, str, str]:
        if fmt not in _FORMAT_FIELDS:
            raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
        return _FORMAT_FIELDS[fmt]

    def params_for(self, fmt: str) -> dict[str, Any]:
        """The parameters that determine one format's files (for the manifest)."""
        common = dict(num_classes=self.num_classes, max_objects=self.max_objects, jpeg_quality=self.jpeg_quality)
        values = {k: getattr(self, k) for k in self._fields(fmt)}
        return {**common, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}

    def split_sizes(self, fmt: str) -> dict[str, int]:
        """Images per split, {"train": n, "val": n}; for "imagefolder" per class."""
        _, train, val = self._fields(fmt)
        return {"train": getattr(self, train), "val": getattr(self, val)}

    def image_count(self, fmt: str) -> int:
        """All images ``fmt`` holds (both splits, every class)."""
        return sum(self.split_sizes(fmt).values()) * (self.num_classes if fmt == "imagefolder" else 1)


def image_rng(seed: int, fmt: str, split: str, index: int) -> np.random.Generator:
    """The generator of one image: its draws depend on nothing but these four values."""
    return np.random.default_rng([seed, _FORMAT_IDS[fmt], _SPLIT_IDS[split], index])


def random_side(rng: np.random.Generator, size: tuple[int, int]) -> int:
    """An image side drawn uniformly from the multiples of 8 in ``size`` = (lo, hi)."""
    lo, hi = size
    return int(lo + 8 * rng.integers(0, (hi - lo) // 8 + 1))


def random_specs(rng: np.random.Generator, cfg: BuiltinConfig, short: int, lo: float, hi: float) -> list:
    """1..max_objects random (class, radius) specs, radii ``lo``..``hi`` x ``short``, largest first."""
    n = int(rng.integers(1, cfg.max_objects + 1))
    specs = [(int(rng.integers(cfg.num_classes)), float(rng.uniform(lo, hi) * short)) for _ in range(n)]
    return sorted(specs, key=lambda s: -s[1])
