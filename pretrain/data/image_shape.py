"""Which image shapes detection and segmentation can train on: one rule for the validator and the loaders.

Detectron2's and MMSeg's training pipelines rescale every image to a fixed scale (ViTDet's
large-scale jitter down to 0.1 of 1024 px; MMSeg's 2048 x 512 with ratios 0.5 to 2). An
image far wider than high (or the reverse), e.g. 4000 x 1, has its short side rescaled
below one pixel and the resize fails deep inside the library with a traceback that names
no file (``height and width must be > 0``, ``inv_scale_x > 0``). The COCO and ADE20K
validators refuse such images, and the loaders (``detection.compat.name_unreadable_images``,
``segmentation.runner_setup.refuse_unusable_images``) check every image they read by the
same :func:`shape_problem`, raising :class:`UnusableImageError` naming the file.
"""
from __future__ import annotations

from pathlib import Path

from .decode import BadImageError

MAX_ASPECT_RATIO = 16.0  # longer side / shorter side; photos of COCO and ADE20K stay far below


class UnusableImageError(BadImageError):
    """An image that decodes but cannot be trained on (its shape); the message names the file."""

    def __init__(self, path: str | Path, reason: object) -> None:
        RuntimeError.__init__(self, f"cannot train on image file {path}: {reason}")
        self.path = str(path)
        self.reason = str(reason)


def shape_problem(width: int, height: int) -> str | None:
    """Why a ``width`` x ``height`` image cannot be trained on, or None."""
    if width < 1 or height < 1:
        return f"it is {width} x {height} pixels"
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        return (f"it is {width} x {height} pixels, an aspect ratio of {ratio:.4g}:1 (at most {MAX_ASPECT_RATIO:g}:1: "
                "rescaled for training, its short side would shrink below a pixel)")
    return None


def check_image_shape(path: str | Path, width: int, height: int) -> None:
    """Raise :class:`UnusableImageError` naming ``path`` when its shape breaks :func:`shape_problem`."""
    problem = shape_problem(width, height)
    if problem is not None:
        raise UnusableImageError(path, problem)
