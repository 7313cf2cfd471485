"""The built-in dataset in COCO's instances layout.

``<out>/{train2017,val2017}/*.jpg`` and ``<out>/annotations/instances_{train,val}2017.json``;
every polygon is the exact outline the object was drawn from (pixels whose centre lies
inside it), the box is the polygon's extent and the area its mask's pixel count.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .builtin_config import BUILTIN_VERSION, BuiltinConfig, image_rng, random_side, random_specs
from .scenes import Scene, render_scene


def coco_scene(seed: int, split: str, index: int, cfg: BuiltinConfig) -> Scene:
    """A COCO image: random size in ``cfg.coco_size``, 1..max_objects objects of any class."""
    rng = image_rng(seed, "coco", split, index)
    h, w = random_side(rng, cfg.coco_size), random_side(rng, cfg.coco_size)
    return render_scene(rng, h, w, random_specs(rng, cfg, min(h, w), 0.08, 0.24))


def coco_annotations(scene: Scene, image_id: int, first_ann_id: int) -> list[dict[str, Any]]:
    """COCO instance records (polygon outline, bbox from its extent, mask pixel area)."""
    anns = []
    for k, obj in enumerate(scene.objects):
        lo, hi = obj.polygon.min(0), obj.polygon.max(0)
        anns.append(
            dict(
                id=first_ann_id + k,
                image_id=image_id,
                category_id=obj.label + 1,
                bbox=[round(float(lo[0]), 2), round(float(lo[1]), 2),
                      round(float(hi[0] - lo[0]), 2), round(float(hi[1] - lo[1]), 2)],
                segmentation=[[round(float(c), 2) for c in obj.polygon.reshape(-1)]],
                area=float(obj.area),
                iscrowd=0,
            )
        )
    return anns


def write_coco(out: Path, seed: int, cfg: BuiltinConfig, advance: Callable[[], object]) -> dict[str, int]:
    """Write both splits and their annotation files under ``out`` (``advance()`` after each image).

    Returns images and instances per split; image and annotation ids are unique across
    splits, as in COCO.
    """
    counts = {}
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [dict(id=i + 1, name=n, supercategory="shape") for i, n in enumerate(cfg.classes)]
    image_id, ann_id = 1, 1
    for split, n in cfg.split_sizes("coco").items():
        folder = out / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            scene = coco_scene(seed, split, i, cfg)
            name = f"{image_id:012d}.jpg"
            scene.save_jpeg(folder / name, cfg.jpeg_quality)
            h, w = scene.image.shape[:2]
            images.append(dict(id=image_id, file_name=name, height=h, width=w))
            new = coco_annotations(scene, image_id, ann_id)
            anns += new
            image_id, ann_id = image_id + 1, ann_id + len(new)
            advance()
        data = dict(
            info=dict(description="droppos built-in synthetic scenes", version=str(BUILTIN_VERSION), seed=seed),
            licenses=[],
            images=images,
            annotations=anns,
            categories=categories,
        )
        with open(out / "annotations" / f"instances_{split}2017.json", "w") as f:
            json.dump(data, f, separators=(",", ":"))
        counts[split] = n
        counts[f"{split}_instances"] = len(anns)
    return counts
