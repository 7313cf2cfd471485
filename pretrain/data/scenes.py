"""Scene renderer of the built-in dataset: sky over perspective ground, with shaped objects.

Why: the suite needs images with real spatial structure and exact object outlines
without a download. A scene has a sky (vertical gradient, sometimes a sun and
clouds) above a textured ground seen in perspective (stripes get denser and hazier
towards a horizon at a varied height), so a patch's position is predictable from
its look (DropPos's pretext task), and non-overlapping textured objects of ten
classes (distinct shape + colour + texture) whose masks are the exact outlines.
Every random draw comes from the generator the caller passes, in a fixed order.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from .polygons import polygon_mask, unit_polygon

# name -> (base RGB, second RGB, texture); the shape of each name is polygons.unit_polygon(name).
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

# Where an object was drawn: centre offset x, y, radius, aspect ratio, rotation (radians).
_Frame = tuple[float, float, float, float, float]


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
    """A rendered image with its horizon and objects (largest first)."""

    image: np.ndarray  # uint8 [H, W, 3]
    horizon: float  # y of the horizon in pixels
    objects: list[SceneObject]

    def save_jpeg(self, path: Path, quality: int) -> None:
        """Write the image as a JPEG (the encoder, not the scene, decides the bytes)."""
        Image.fromarray(self.image).save(path, format="JPEG", quality=quality)


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


def _draw_object(img: np.ndarray, rng: np.random.Generator, obj: SceneObject, frame: _Frame) -> None:
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


def _place_object(
    rng: np.random.Generator, label: int, radius: float, occupied: np.ndarray, max_area: float | None
) -> tuple[SceneObject, _Frame] | None:
    """Up to 40 tries to put one object fully inside the image, 2 px clear of ``occupied``.

    A try that does not fit shrinks the radius (by 0.85), one at or above ``max_area``
    pixels by 0.9. On success ``occupied`` gains the object and its gap; None if no try fits.
    """
    height, width = occupied.shape
    unit = unit_polygon(BUILTIN_CLASSES[label])
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
        if max_area is not None and mask.sum() >= max_area:
            radius *= 0.9
            continue
        occupied |= grown
        return SceneObject(label, poly, mask), (ox, oy, radius, aspect, theta)
    return None


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    specs: list[tuple[int, float]],
    max_rel_area: float | None = None,
) -> Scene:
    """Render one scene with objects ``specs`` = [(class index, radius in px), ...] (largest first).

    Objects that cannot be placed without overlap are dropped (never the first one
    on a large enough image). ``max_rel_area`` keeps later objects clearly smaller than the first
    (below that share of its area). Draws: background, every placement, every texture, noise.
    """
    img, horizon = _render_background(rng, height, width)
    occupied = np.zeros((height, width), dtype=bool)
    placed: list[tuple[SceneObject, _Frame]] = []
    for label, radius in specs:
        max_area = max_rel_area * placed[0][0].area if placed and max_rel_area is not None else None
        found = _place_object(rng, label, radius, occupied, max_area)
        if found is not None:
            placed.append(found)
    for obj, frame in placed:
        _draw_object(img, rng, obj, frame)
    img = img + rng.normal(0.0, 3.0, img.shape).astype(np.float32)  # sensor noise
    return Scene(np.clip(np.rint(img), 0, 255).astype(np.uint8), horizon, [obj for obj, _ in placed])
