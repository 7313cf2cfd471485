"""The built-in dataset in ImageNet's ImageFolder layout: ``<out>/{train,val}/<class>/*.JPEG``.

An image's class is its main (largest) object's class; up to two clearly smaller
objects of any class share the image, so the label is not the only thing to see.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .builtin_config import BuiltinConfig, image_rng
from .scenes import Scene, render_scene


def imagefolder_scene(seed: int, split: str, index: int, label: int, cfg: BuiltinConfig) -> Scene:
    """An ImageFolder image of class ``label``: one main object, up to two clearly smaller ones."""
    rng = image_rng(seed, "imagefolder", split, index)
    size = cfg.imagefolder_size
    specs = [(label, float(rng.uniform(0.24, 0.36) * size))]
    for _ in range(int(rng.integers(0, cfg.max_objects))):
        specs.append((int(rng.integers(cfg.num_classes)), float(rng.uniform(0.09, 0.14) * size)))
    scene = render_scene(rng, size, size, specs, max_rel_area=0.6)  # unit shapes differ in area
    assert scene.objects and scene.objects[0].label == label
    return scene


def write_imagefolder(out: Path, seed: int, cfg: BuiltinConfig, advance: Callable[[], object]) -> dict[str, int]:
    """Write both splits under ``out`` (``advance()`` after each image); returns images per split."""
    counts = {}
    for split, n in cfg.split_sizes("imagefolder").items():
        for label, name in enumerate(cfg.classes):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                index = label * n + i
                scene = imagefolder_scene(seed, split, index, label, cfg)
                scene.save_jpeg(folder / f"{name}_{index:06d}.JPEG", cfg.jpeg_quality)
                advance()
        counts[split] = n * cfg.num_classes
    return counts
