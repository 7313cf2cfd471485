"""timm's RandAugment geometric ops (rotate, shear, translate) done by OpenCV.

timm warps with PIL's ``Image.transform(AFFINE)``, the slowest op of the fine-tuning
recipe, paid by a third of all samples (rand-m9-mstd0.5-inc1 draws 2 of 15 ops, each
applied with probability 0.5; 5 of the 15 are geometric). ``cv2.warpAffine`` does the
same warp several times faster (README, Performance).

What is kept from PIL, so that a warped crop matches timm's but for the filter:

- the matrix: PIL maps output pixel centres ``(x + 0.5, y + 0.5)`` through
  ``(a, b, c, d, e, f)`` and samples at the result minus 0.5; OpenCV maps integer pixel
  centres, so its matrix is the same one with the translation shifted by half a pixel;
- the border: PIL fills an output pixel whose mapped centre falls outside the source
  and clamps filter taps at the image edge; here that is ``BORDER_REPLICATE`` plus the
  same outside-mask filled with ``fillcolor``;
- the rounding: PIL's 8-bit filters truncate, so the warp runs in float32 and truncates;
- ``rotate``: PIL's ``Image.rotate`` matrix about the image centre, and its exact fast
  paths (0 degrees: copy, 180: transpose; 90 / 270 on square images: transpose).

The filter is OpenCV's: bilinear is the same interpolation (in 5-bit fixed-point
weights), bicubic is cubic convolution with a = -0.75 where PIL's affine uses a = -1, a
slightly softer kernel. ``aug.pipeline: timm`` runs timm's PIL ops unchanged.
"""
from __future__ import annotations

import functools
import math
import os
import random
from typing import Any, Sequence

import cv2
import numpy as np
from PIL import Image

_CV2_FILTER = {
    Image.Resampling.NEAREST: cv2.INTER_NEAREST,
    Image.Resampling.BILINEAR: cv2.INTER_LINEAR,
    Image.Resampling.BICUBIC: cv2.INTER_CUBIC,
}

def affine(img: Image.Image, matrix: Sequence[float], resample: Any = Image.Resampling.BICUBIC,
           fillcolor: Any = None) -> Image.Image:
    """``img.transform(img.size, Image.AFFINE, matrix, resample, fillcolor=fillcolor)`` done by OpenCV.

    ``matrix`` = (a, b, c, d, e, f) maps output (x, y) to source (a x + b y + c, d x + e y + f),
    PIL's convention. Output size = input size. RGB and L images (what RandAugment sees).
    """
    if img.mode not in ("RGB", "L"):
        raise ValueError(f"affine: RGB or L images only, got mode {img.mode!r}")
    try:
        flags = _CV2_FILTER[resample]
    except KeyError:
        raise ValueError(f"affine: resample must be PIL NEAREST, BILINEAR or BICUBIC, got {resample!r}") from None
    a, b, c, d, e, f = (float(v) for v in matrix)
    w, h = img.size
    src = np.asarray(img, dtype=np.float32)  # [H, W, C] (or [H, W]); float: OpenCV's cubic warp is faster on it
    m = np.array([[a, b, c + 0.5 * (a + b - 1.0)], [d, e, f + 0.5 * (d + e - 1.0)]])
    out = cv2.warpAffine(src, m, (w, h), flags=flags | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    out = np.clip(out, 0.0, 255.0, out=out).astype(np.uint8)  # truncates, as PIL's 8-bit filters do
    # PIL's fill rule: the output pixel centre maps outside [0, w) x [0, h)
    xc = np.arange(w, dtype=np.float64) + 0.5
    yc = np.arange(h, dtype=np.float64)[:, None] + 0.5
    xs, ys = a * xc + (b * yc + c), d * xc + (e * yc + f)  # [H, W]
    outside = (xs < 0) | (xs >= w) | (ys < 0) | (ys >= h)
    if outside.any():
        fill = _fill_image(out.shape, 0 if fillcolor is None else fillcolor)
        cv2.copyTo(fill, outside.view(np.uint8), out)  # much faster than out[outside] = fill
    return Image.fromarray(out)  # uint8 [H, W, 3] -> RGB, [H, W] -> L


@functools.lru_cache(maxsize=8)
def _fill_image_cached(shape: tuple[int, ...], fill: tuple[int, ...] | int) -> np.ndarray:
    img = np.empty(shape, dtype=np.uint8)
    img[...] = fill  # slow for a per-channel colour (numpy broadcasts 3 values at a time): done once
    img.flags.writeable = False
    return img


def _fill_image(shape: tuple[int, ...], fill: Any) -> np.ndarray:
    """A read-only uint8 image of ``shape`` filled with ``fill`` (a number or one value per channel)."""
    return _fill_image_cached(tuple(shape), tuple(int(v) for v in fill) if isinstance(fill, (tuple, list)) else int(fill))


def _tf_kwargs(kwargs: dict) -> dict:
    """timm's op kwargs for :func:`affine`: ``fillcolor``, and ``resample`` as one filter or a
    list to draw from with Python's ``random`` (the draw timm makes, so its random stream is kept)."""
    resample = kwargs.get("resample", Image.Resampling.BICUBIC)
    if isinstance(resample, (list, tuple)):
        resample = random.choice(resample)
    return {"fillcolor": kwargs.get("fillcolor"), "resample": resample}


def shear_x(img: Image.Image, factor: float, **kwargs: Any) -> Image.Image:
    return affine(img, (1, factor, 0, 0, 1, 0), **_tf_kwargs(kwargs))


def shear_y(img: Image.Image, factor: float, **kwargs: Any) -> Image.Image:
    return affine(img, (1, 0, 0, factor, 1, 0), **_tf_kwargs(kwargs))


def translate_x_abs(img: Image.Image, pixels: float, **kwargs: Any) -> Image.Image:
    return affine(img, (1, 0, pixels, 0, 1, 0), **_tf_kwargs(kwargs))


def translate_y_abs(img: Image.Image, pixels: float, **kwargs: Any) -> Image.Image:
    return affine(img, (1, 0, 0, 0, 1, pixels), **_tf_kwargs(kwargs))


def translate_x_rel(img: Image.Image, pct: float, **kwargs: Any) -> Image.Image:
    return translate_x_abs(img, pct * img.size[0], **kwargs)


def translate_y_rel(img: Image.Image, pct: float, **kwargs: Any) -> Image.Image:
    return translate_y_abs(img, pct * img.size[1], **kwargs)


def rotate(img: Image.Image, degrees: float, **kwargs: Any) -> Image.Image:
    """``img.rotate(degrees, resample, fillcolor=...)`` (about the centre, same size) done by OpenCV."""
    tf = _tf_kwargs(kwargs)
    angle = degrees % 360.0
    w, h = img.size
    if angle == 0:  # PIL's exact fast paths
        return img.copy()
    if angle == 180:
        return img.transpose(Image.Transpose.ROTATE_180)
    if angle in (90, 270) and w == h:
        return img.transpose(Image.Transpose.ROTATE_90 if angle == 90 else Image.Transpose.ROTATE_270)
    rad = -math.radians(angle)
    cos, sin = round(math.cos(rad), 15), round(math.sin(rad), 15)
    cx, cy = w / 2, h / 2
    # output -> source: translate to the centre, rotate, translate back (PIL's Image.rotate)
    matrix = (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)
    return affine(img, matrix, **tf)


def one_opencv_thread(worker_id: int | None = None) -> None:
    """A DataLoader ``worker_init_fn``: OpenCV on one thread, as torch already is in workers.

    OpenCV starts a thread per core for each warp; with one DataLoader worker per core
    that only oversubscribes the machine (and in a per-core benchmark it would borrow a
    second core). A forked worker already has one thread (:func:`_stop_pool_before_fork`),
    so this is then a no-op: it never touches the thread pool a fork left behind.
    """
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


_threads_before_fork: list[int] = []


def _stop_pool_before_fork() -> None:
    """``os.fork`` hook: stop OpenCV's thread pool so that the child inherits none.

    A forked child gets OpenCV's pool bookkeeping but not its threads; resizing that pool
    in the child (``cv2.setNumThreads``, as every DataLoader worker's ``worker_init_fn``
    does) waits for the missing threads forever. This is what happened whenever the
    parent had warped an image (a notebook preview, an evaluation in process) before its
    DataLoader forked workers. With one thread the pool is shut down cleanly in the
    parent, so the child starts with OpenCV on one thread and no pool.
    """
    _threads_before_fork.append(cv2.getNumThreads())
    if _threads_before_fork[-1] != 1:
        cv2.setNumThreads(1)


def _restore_pool_after_fork() -> None:
    """``os.fork`` hook (parent side): OpenCV's thread count back to what it was; the pool
    restarts at the parent's next parallel OpenCV call."""
    if _threads_before_fork:
        before = _threads_before_fork.pop()
        if before != 1:
            cv2.setNumThreads(before)


os.register_at_fork(before=_stop_pool_before_fork, after_in_parent=_restore_pool_after_fork)


# timm's op names (``timm.data.auto_augment.NAME_TO_OP``) -> the functions that replace them
_OPS = {
    "Rotate": rotate,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x_abs,
    "TranslateY": translate_y_abs,
    "TranslateXRel": translate_x_rel,
    "TranslateYRel": translate_y_rel,
}


def use_opencv_geometry(transform: Any) -> int:
    """Swap the geometric ops of a timm ``RandAugment`` / ``AutoAugment`` instance for these.

    Only this instance changes (timm's op table is left alone). Returns the number of
    ops replaced; other transforms (e.g. ColorJitter) are left as they are.
    """
    ops = list(getattr(transform, "ops", []))
    for policy in getattr(transform, "policy", []):  # AutoAugment: a list of sub-policies
        ops.extend(policy)
    n = 0
    for op in ops:
        fn = _OPS.get(getattr(op, "name", None))
        if fn is not None:
            op.aug_fn = fn
            n += 1
    return n
