"""Polygons of the built-in dataset: the ten class outlines, their area and their pixel mask.

Why one module: the mask a scene draws, the COCO polygon it stores and the area a
test checks must all come from the same outline and the same rasterisation rule
(a pixel belongs to a polygon when its centre lies inside).
"""
from __future__ import annotations

import math

import numpy as np


def _regular(n: int, radius: float = 1.0, start_deg: float = -90.0, ry: float | None = None) -> np.ndarray:
    ang = np.deg2rad(start_deg) + 2 * np.pi * np.arange(n) / n
    return np.stack([radius * np.cos(ang), (ry if ry is not None else radius) * np.sin(ang)], 1)


def unit_polygon(shape: str) -> np.ndarray:
    """Outline [V, 2] of a class shape in unit coordinates (x right, y down, radius about 1)."""
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
