"""Deterministic built-in dataset: synthetic outdoor scenes with shaped objects.

Why: the suite needs data with real spatial structure to run every stage without
a download. Each scene has a sky (vertical gradient, sometimes a sun and clouds)
above a textured ground seen in perspective (stripes get denser and hazier towards
a horizon at a varied height), so a patch's position is predictable from its look
(DropPos's pretext task), and 1-3 non-overlapping textured objects of ten classes
(distinct shape + colour + texture) for classification, detection and
segmentation.

The files are written in the real on-disk formats so the real loaders read them:

- ImageFolder (ImageNet): ``<root>/imagenet/{train,val}/<class>/*.JPEG``; the
  image's class is its main (largest) object's class.
- COCO instances: ``<root>/coco/{train2017,val2017}/*.jpg`` and
  ``<root>/coco/annotations/instances_{train,val}2017.json``; every polygon is the
  exact outline the object was drawn from (pixel centres inside the polygon).
- ADE20K: ``<root>/ade20k/ADEChallengeData2016/{images,annotations}/
  {training,validation}/*.{jpg,png}``; uint8 labels, 0 = unlabelled (a one-pixel
  band along object outlines), 1 = sky, 2 = ground, 3.. = object classes.

Same seed and parameters give byte-identical files: every image draws from its
own generator seeded by (seed, format, split, index).
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image
from ..atomic import atomic_write_text

BUILTIN_VERSION = 1
MANIFEST_NAME = "builtin_manifest.json"
FORMATS = ("imagefolder", "coco", "ade20k")

# name -> (base RGB, second RGB, texture); shapes are defined in _unit_polygon.
_CLASS_STYLES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], str]] = {
    "circle": ((205, 40, 35), (70, 10, 10), "shaded"),
    "square": ((35, 70, 205), (235, 235, 240), "checker"),
    "triangle": ((235, 200, 35), (30, 30, 30), "hstripes"),
    "star": ((245, 130, 20), (255, 235, 150), "dots"),
    "hexagon": ((130, 45, 170), (225, 190, 240), "rings"),
    "cross": ((215, 45, 150), (255, 255, 255), "dstripes"),
    "diamond": ((35, 190, 200), (10, 60, 70), "grid"),
    "ellipse": ((245, 150, 185), (140, 30, 80), "vstripes"),
    "arrow": ((45, 45, 55), (160, 160, 175), "shaded"),
    "pentagon": ((150, 215, 40), (40, 90, 10), "speckle"),
}
BUILTIN_CLASSES: tuple[str, ...] = tuple(_CLASS_STYLES)

# ADE20K-style label names: label value i + 1 for ADE_CLASSES[i]; 0 = unlabelled.
ADE_CLASSES: tuple[str, ...] = ("sky", "ground") + BUILTIN_CLASSES
ADE_PALETTE: tuple[tuple[int, int, int], ...] = ((110, 160, 230), (120, 100, 60)) + tuple(
    style[0] for style in _CLASS_STYLES.values()
)

_GROUND_COLOURS = ((75, 130, 50), (195, 172, 120), (120, 88, 58), (122, 120, 108))
_FORMAT_IDS = {"imagefolder": 1, "coco": 2, "ade20k": 3}
_SPLIT_IDS = {"train": 0, "val": 1}


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

    def params_for(self, fmt: str) -> dict[str, Any]:
        """The parameters that determine one format's files (for the manifest)."""
        common = dict(num_classes=self.num_classes, max_objects=self.max_objects, jpeg_quality=self.jpeg_quality)
        if fmt == "imagefolder":
            keys = ("imagefolder_size", "imagefolder_train_per_class", "imagefolder_val_per_class")
        elif fmt == "coco":
            keys = ("coco_train", "coco_val", "coco_size")
        elif fmt == "ade20k":
            keys = ("ade_train", "ade_val", "ade_size")
        else:
            raise ValueError(f"unknown format {fmt!r}; choose from {FORMATS}")
        values = {k: getattr(self, k) for k in keys}
        return {**common, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}


@dataclasses.dataclass
class SceneObject:
    """One drawn object: class index, outline polygon [V, 2] (x, y) and pixel mask."""

    label: int
    polygon: np.ndarray
    mask: np.ndarray  # bool [H, W]

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclasses.dataclass
class Scene:
    image: np.ndarray  # uint8 [H, W, 3]
    horizon: float  # y of the horizon in pixels
    objects: list[SceneObject]


# ----------------------------------------------------------------------------- geometry


def _regular(n: int, radius: float = 1.0, start_deg: float = -90.0, ry: float | None = None) -> np.ndarray:
    ang = np.deg2rad(start_deg) + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(ang), (ry if ry is not None else radius) * np.sin(ang)], 1)


def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of a class shape in unit coordinates (x right, y down, radius about 1)."""
    if shape == "circle":
        return _regular(40)
    if shape == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if shape == "triangle":
        return _regular(3) + np.array([0.0, 0.2])
    if shape == "star":
        pts = _regular(10)
        pts[1::2] *= 0.45
        return pts
    if shape == "hexagon":
        return _regular(6, start_deg=0.0)
    if shape == "cross":
        a = 0.33
        return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1],
                         [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]], dtype=np.float64)
    if shape == "diamond":
        return np.array([[0, -1], [0.62, 0], [0, 1], [-0.62, 0]], dtype=np.float64)
    if shape == "ellipse":
        return _regular(40, ry=0.58)
    if shape == "arrow":
        return np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.7], [1, 0], [0.2, 0.7], [0.2, 0.3], [-1, 0.3]])
    if shape == "pentagon":
        return _regular(5) + np.array([0.0, 0.1])
    raise ValueError(f"unknown shape {shape!r}")


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a simple polygon [V, 2]."""
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean mask [H, W] of the pixels whose centre (x + 0.5, y + 0.5) lies inside ``poly``.

    Even-odd crossing test, vectorised per edge; only the polygon's bounding box is scanned.
    """
    mask = np.zeros((height, width), dtype=bool)
    x0 = max(int(math.floor(poly[:, 0].min())), 0)
    x1 = min(int(math.ceil(poly[:, 0].max())) + 1, width)
    y0 = max(int(math.floor(poly[:, 1].min())), 0)
    y1 = min(int(math.ceil(poly[:, 1].max())) + 1, height)
    if x1 <= x0 or y1 <= y0:
        return mask
    xs = (np.arange(x0, x1) + 0.5)[None, :]  # [1, w]
    ys = (np.arange(y0, y1) + 0.5)[:, None]  # [h, 1]
    inside = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for (xa, ya), (xb, yb) in zip(poly, np.roll(poly, -1, axis=0)):
        if ya == yb:
            continue
        crosses = (ya > ys) != (yb > ys)  # [h, 1] rows the edge spans
        x_at = xa + (ys - ya) * (xb - xa) / (yb - ya)  # [h, 1] edge x at each row centre
        inside ^= crosses & (xs < x_at)
    mask[y0:y1, x0:x1] = inside
    return mask


# ----------------------------------------------------------------------------- rendering


def _value_noise(rng: np.random.Generator, height: int, width: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Smooth noise [H, W] (about unit variance): a random grid upsampled bicubically."""
    grid = rng.standard_normal((max(cells_y, 1) + 1, max(cells_x, 1) + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.BICUBIC), dtype=np.float32)


def _jitter(rng: np.random.Generator, rgb: Iterable[float], amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _render_background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, float]:
    """Sky over perspective ground; returns the float image [H, W, 3] and the horizon y."""
    horizon = float(rng.uniform(0.4, 0.65) * height)
    ys = (np.arange(height, dtype=np.float32) + 0.5)[:, None]  # [H, 1]
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, :]  # [1, W]

    # Sky: deep blue at the top to pale at the horizon.
    top = _jitter(rng, (45, 95, 185), 25)
    pale = _jitter(rng, (185, 212, 238), 15)
    t = np.clip(ys / horizon, 0, 1) ** 0.8  # [H, 1]
    img = (top * (1 - t)[..., None] + pale * t[..., None]) * np.ones((1, width, 1), np.float32)  # [H, W, 3]
    scale = float(min(height, width))
    if rng.random() < 0.4:  # sun with a glow
        sx, sy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.45) * horizon
        r = rng.uniform(0.04, 0.07) * scale
        d2 = (xs - sx) ** 2 + (ys - sy) ** 2
        glow = np.exp(-d2 / (2 * (3.5 * r) ** 2))[..., None]
        img = img + glow * np.array([60, 50, 20], np.float32)
        img = np.where((d2 < r * r)[..., None], np.array([255, 244, 190], np.float32), img)
    for _ in range(int(rng.integers(0, 4))):  # clouds: clusters of soft blobs
        cx, cy = rng.uniform(0, width), rng.uniform(0.1, 0.75) * horizon
        cover = np.zeros((height, width), np.float32)
        for _ in range(int(rng.integers(3, 6))):
            bx, by = cx + rng.normal(0, 0.06 * scale), cy + rng.normal(0, 0.015 * scale)
            sxx, syy = rng.uniform(0.03, 0.07) * scale, rng.uniform(0.015, 0.03) * scale
            cover += np.exp(-((xs - bx) ** 2) / (2 * sxx**2) - ((ys - by) ** 2) / (2 * syy**2))
        alpha = 0.85 * np.clip(cover, 0, 1)[..., None]
        img = img * (1 - alpha) + alpha * np.float32(246)

    # Ground: perspective stripes, coarse noise growing near the viewer, haze at the horizon.
    base = _jitter(rng, _GROUND_COLOURS[int(rng.integers(len(_GROUND_COLOURS)))], 15)
    depth = np.clip((ys - horizon) / max(height - horizon, 1.0), 1e-3, 1)  # [H, 1] 0 far .. 1 near
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.25, 0.45) / (depth + 0.08) + rng.uniform(0, 2 * np.pi))
    coarse = _value_noise(rng, height, width, max(height // 12, 2), max(width // 24, 2))
    fine = rng.standard_normal((height, width)).astype(np.float32)
    shade = 0.8 + 0.3 * depth + 0.1 * stripes + 0.1 * depth * coarse + 0.05 * fine  # [H, W]
    ground = base * shade[..., None]
    haze = (0.6 * (1 - depth) ** 4)[..., None]
    ground = ground * (1 - haze) + pale * haze
    below = (ys >= horizon)[..., None]  # pixel centre below the horizon
    img = np.where(below, ground, img)
    return img, horizon


def _texture(kind: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Second-colour weight in [0, 1] in object coordinates (u, v about -1..1)."""
    r = np.sqrt(u * u + v * v)
    if kind == "shaded":
        return 0.7 * np.clip(r, 0, 1) ** 2
    if kind == "checker":
        return ((np.floor(2.5 * (u + 1)) + np.floor(2.5 * (v + 1))) % 2).astype(np.float32)
    if kind == "hstripes":
        return (np.floor(3 * (v + 1)) % 2).astype(np.float32)
    if kind == "vstripes":
        return (np.floor(3 * (u + 1)) % 2).astype(np.float32)
    if kind == "dstripes":
        return (np.floor(2.2 * (u + v + 2)) % 2).astype(np.float32)
    if kind == "dots":
        fu, fv = (2.5 * (u + 1)) % 1 - 0.5, (2.5 * (v + 1)) % 1 - 0.5
        return (fu * fu + fv * fv < 0.07).astype(np.float32)
    if kind == "rings":
        return (np.floor(4 * r) % 2).astype(np.float32)
    if kind == "grid":
        fu, fv = np.abs((3 * (u + 1)) % 1 - 0.5), np.abs((3 * (v + 1)) % 1 - 0.5)
        return (np.maximum(fu, fv) > 0.36).astype(np.float32)
    if kind == "speckle":
        return (rng.random(u.shape) < 0.3).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def _draw_object(img: np.ndarray, rng: np.random.Generator, obj: SceneObject, frame: tuple) -> None:
    """Paint ``obj`` (textured, lit from the top left) into ``img`` [H, W, 3] in place."""
    cx, cy, r, aspect, theta = frame
    base, second, kind = _CLASS_STYLES[BUILTIN_CLASSES[obj.label]]
    yy, xx = np.nonzero(obj.mask)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    c, s = math.cos(theta), math.sin(theta)
    u, v = (c * dx + s * dy) / (r * aspect), (-s * dx + c * dy) / r  # object frame
    w = _texture(kind, u, v, rng)[:, None]
    colour = np.asarray(base, np.float32) * (1 - w) + np.asarray(second, np.float32) * w
    light = 1.0 - 0.12 * (dx + dy) / r  # brighter towards the top left
    img[yy, xx] = colour * light[:, None]


def _place_objects(
    rng: np.random.Generator,
    height: int,
    width: int,
    specs: list[tuple[int, float]],
    max_rel_area: float | None = None,
) -> tuple[list[SceneObject], list[tuple]]:
    """Place objects (label, radius in px), largest first, without overlap, fully inside the image.

    With ``max_rel_area``, objects after the first must be smaller than that share of its area.
    """
    objects: list[SceneObject] = []
    frames: list[tuple] = []
    occupied = np.zeros((height, width), dtype=bool)
    for label, radius in specs:
        unit = _unit_polygon(BUILTIN_CLASSES[label])
        for _ in range(40):
            aspect = float(rng.uniform(0.85, 1.15))
            theta = float(np.deg2rad(rng.uniform(-30, 30)))
            c, s = math.cos(theta), math.sin(theta)
            pts = unit * np.array([radius * aspect, radius])
            pts = pts @ np.array([[c, s], [-s, c]])  # rotate by theta (x right, y down)
            lo, hi = pts.min(0), pts.max(0)
            span_x, span_y = width - 2 - (hi[0] - lo[0]), height - 2 - (hi[1] - lo[1])
            if span_x <= 0 or span_y <= 0:
                radius *= 0.85
                continue
            ox, oy = 1 + rng.uniform(0, span_x) - lo[0], 1 + rng.uniform(0, span_y) - lo[1]
            poly = np.round(pts + np.array([ox, oy]), 2)  # stored outline == drawn outline
            mask = polygon_mask(poly, height, width)
            grown = mask.copy()  # keep a 2 px gap between objects
            for shift in (1, 2):
                grown[shift:] |= mask[:-shift]
                grown[:-shift] |= mask[shift:]
                grown[:, shift:] |= mask[:, :-shift]
                grown[:, :-shift] |= mask[:, shift:]
            if mask.sum() < 16 or (grown & occupied).any():
                continue
            if objects and max_rel_area is not None and mask.sum() >= max_rel_area * objects[0].area:
                radius *= 0.9
                continue
            occupied |= grown
            objects.append(SceneObject(label, poly, mask))
            frames.append((ox, oy, radius, aspect, theta))
            break
    return objects, frames


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    specs: list[tuple[int, float]],
    max_rel_area: float | None = None,
) -> Scene:
    """Render one scene with objects ``specs`` = [(class index, radius in px), ...] (largest first).

    Objects that cannot be placed without overlap are dropped (never the first one
    on a large enough image). ``max_rel_area`` keeps later objects clearly smaller than the first.
    """
    img, horizon = _render_background(rng, height, width)
    objects, frames = _place_objects(rng, height, width, specs, max_rel_area)
    for obj, frame in zip(objects, frames):
        _draw_object(img, rng, obj, frame)
    img = img + rng.normal(0.0, 3.0, img.shape).astype(np.float32)  # sensor noise
    return Scene(np.clip(np.rint(img), 0, 255).astype(np.uint8), horizon, objects)


def _image_rng(seed: int, fmt: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _FORMAT_IDS[fmt], _SPLIT_IDS[split], index])


def _side(rng: np.random.Generator, size: tuple[int, int]) -> int:
    lo, hi = size
    return int(lo + 8 * rng.integers(0, (hi - lo) // 8 + 1))


def _random_specs(rng: np.random.Generator, cfg: BuiltinConfig, short: int, lo: float, hi: float) -> list:
    n = int(rng.integers(1, cfg.max_objects + 1))
    specs = [(int(rng.integers(cfg.num_classes)), float(rng.uniform(lo, hi) * short)) for _ in range(n)]
    return sorted(specs, key=lambda s: -s[1])


def imagefolder_scene(seed: int, split: str, index: int, label: int, cfg: BuiltinConfig) -> Scene:
    """An ImageFolder image of class ``label``: one main object, up to two clearly smaller ones."""
    rng = _image_rng(seed, "imagefolder", split, index)
    size = cfg.imagefolder_size
    specs = [(label, float(rng.uniform(0.24, 0.36) * size))]
    for _ in range(int(rng.integers(0, cfg.max_objects))):
        specs.append((int(rng.integers(cfg.num_classes)), float(rng.uniform(0.09, 0.14) * size)))
    scene = render_scene(rng, size, size, specs, max_rel_area=0.6)  # unit shapes differ in area
    assert scene.objects and scene.objects[0].label == label
    return scene


def coco_scene(seed: int, split: str, index: int, cfg: BuiltinConfig) -> Scene:
    rng = _image_rng(seed, "coco", split, index)
    h, w = _side(rng, cfg.coco_size), _side(rng, cfg.coco_size)
    return render_scene(rng, h, w, _random_specs(rng, cfg, min(h, w), 0.08, 0.24))


def ade_scene(seed: int, split: str, index: int, cfg: BuiltinConfig) -> Scene:
    rng = _image_rng(seed, "ade20k", split, index)
    h, w = _side(rng, cfg.ade_size), _side(rng, cfg.ade_size)
    return render_scene(rng, h, w, _random_specs(rng, cfg, min(h, w), 0.1, 0.26))


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


# ----------------------------------------------------------------------------- writers


def _save_jpeg(array: np.ndarray, path: Path, quality: int) -> None:
    Image.fromarray(array).save(path, format="JPEG", quality=quality)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


def _write_imagefolder(out: Path, seed: int, cfg: BuiltinConfig, progress: bool) -> dict[str, int]:
    counts = {}
    per_class = {"train": cfg.imagefolder_train_per_class, "val": cfg.imagefolder_val_per_class}
    with _progress(sum(per_class.values()) * cfg.num_classes, "imagefolder", progress) as bar:
        for split, n in per_class.items():
            for label, name in enumerate(cfg.classes):
                folder = out / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    index = label * n + i
                    scene = imagefolder_scene(seed, split, index, label, cfg)
                    _save_jpeg(scene.image, folder / f"{name}_{index:06d}.JPEG", cfg.jpeg_quality)
                    bar.update()
            counts[split] = n * cfg.num_classes
    return counts


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


def _write_coco(out: Path, seed: int, cfg: BuiltinConfig, progress: bool) -> dict[str, int]:
    counts = {}
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [dict(id=i + 1, name=n, supercategory="shape") for i, n in enumerate(cfg.classes)]
    n_split = {"train": cfg.coco_train, "val": cfg.coco_val}
    image_id, ann_id = 1, 1  # ids are unique across splits, as in COCO
    with _progress(sum(n_split.values()), "coco", progress) as bar:
        for split, n in n_split.items():
            folder = out / f"{split}2017"
            folder.mkdir(parents=True, exist_ok=True)
            images, anns = [], []
            for i in range(n):
                scene = coco_scene(seed, split, i, cfg)
                name = f"{image_id:012d}.jpg"
                _save_jpeg(scene.image, folder / name, cfg.jpeg_quality)
                h, w = scene.image.shape[:2]
                images.append(dict(id=image_id, file_name=name, height=h, width=w))
                new = coco_annotations(scene, image_id, ann_id)
                anns += new
                image_id, ann_id = image_id + 1, ann_id + len(new)
                bar.update()
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


def _write_ade(out: Path, seed: int, cfg: BuiltinConfig, progress: bool) -> dict[str, int]:
    counts = {}
    n_split = {"train": cfg.ade_train, "val": cfg.ade_val}
    dirs = {"train": ("training", "ADE_train"), "val": ("validation", "ADE_val")}
    with _progress(sum(n_split.values()), "ade20k", progress) as bar:
        for split, n in n_split.items():
            sub, prefix = dirs[split]
            (out / "images" / sub).mkdir(parents=True, exist_ok=True)
            (out / "annotations" / sub).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                scene = ade_scene(seed, split, i, cfg)
                stem = f"{prefix}_{i + 1:08d}"
                _save_jpeg(scene.image, out / "images" / sub / f"{stem}.jpg", cfg.jpeg_quality)
                Image.fromarray(ade_label_map(scene)).save(out / "annotations" / sub / f"{stem}.png")
                bar.update()
            counts[split] = n
    return counts


_WRITERS = {
    "imagefolder": ("imagenet", _write_imagefolder),
    "coco": ("coco", _write_coco),
    "ade20k": ("ade20k/ADEChallengeData2016", _write_ade),
}


def builtin_paths(root: str | Path) -> dict[str, Path]:
    """Where each format lives under ``root``."""
    return {fmt: Path(root) / sub for fmt, (sub, _) in _WRITERS.items()}


def read_manifest(root: str | Path) -> dict[str, Any]:
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
        counts = _WRITERS[fmt][1](paths[fmt], seed, cfg, progress)
        entries[fmt] = dict(seed=seed, params=params, counts=counts)
        _write_manifest(root, entries)
    return {fmt: paths[fmt] for fmt in formats}


def _write_manifest(root: Path, entries: dict[str, Any]) -> None:
    data = dict(version=BUILTIN_VERSION, classes=list(BUILTIN_CLASSES), ade_classes=list(ADE_CLASSES),
                formats={k: entries[k] for k in sorted(entries)})
    atomic_write_text(root / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=True) + "\n")
