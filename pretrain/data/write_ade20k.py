"""The built-in dataset in ADE20K's layout (``ADEChallengeData2016``).

``<out>/{images,annotations}/{training,validation}/*.{jpg,png}``; uint8 labels,
0 = unlabelled (a one-pixel band along object outlines), 1 = sky, 2 = ground,
3.. = object classes (``scenes.ADE_CLASSES`` names label i + 1).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .builtin_config import BuiltinConfig, image_rng, random_side, random_specs
from .scenes import Scene, render_scene

_SPLIT_DIRS = {"train": ("training", "ADE_train"), "val": ("validation", "ADE_val")}


def ade_scene(seed: int, split: str, index: int, cfg: BuiltinConfig) -> Scene:
    """An ADE20K image: random size in ``cfg.ade_size``, 1..max_objects objects of any class."""
    rng = image_rng(seed, "ade20k", split, index)
    h, w = random_side(rng, cfg.ade_size), random_side(rng, cfg.ade_size)
    return render_scene(rng, h, w, random_specs(rng, cfg, min(h, w), 0.1, 0.26))


def ade_label_map(scene: Scene) -> np.ndarray:
    """uint8 [H, W]: 1 sky, 2 ground, 3 + class for objects, 0 on the objects' outline pixels."""
    h, w = scene.image.shape[:2]
    ys = np.arange(h)[:, None] + 0.5
    label = np.where(ys >= scene.horizon, 2, 1).astype(np.uint8) * np.ones((1, w), np.uint8)
    for obj in scene.objects:
        m = obj.mask
        inner = m.copy()  # 4-neighbour erosion; the removed band is unlabelled
        inner[1:] &= m[:-1]
        inner[:-1] &= m[1:]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        label[m] = 0
        label[inner] = 3 + obj.label
    return label


def write_ade20k(out: Path, seed: int, cfg: BuiltinConfig, advance: Callable[[], object]) -> dict[str, int]:
    """Write both splits' images and label maps under ``out`` (``advance()`` after each image)."""
    counts = {}
    for split, n in cfg.split_sizes("ade20k").items():
        sub, prefix = _SPLIT_DIRS[split]
        (out / "images" / sub).mkdir(parents=True, exist_ok=True)
        (out / "annotations" / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            scene = ade_scene(seed, split, i, cfg)
            stem = f"{prefix}_{i + 1:08d}"
            scene.save_jpeg(out / "images" / sub / f"{stem}.jpg", cfg.jpeg_quality)
            Image.fromarray(ade_label_map(scene)).save(out / "annotations" / sub / f"{stem}.png")
            advance()
        counts[split] = n
    return counts
