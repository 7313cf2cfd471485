"""What every picture shares: pyplot on the Agg backend, fixed pixel sizes, PNG files, the input image.

Every figure has a fixed pixel size (``FIGSIZE * DPI``), so the pictures of different runs
line up in the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pretrain.data.transforms import build_eval_transform, normalize_uint8  # noqa: E402

DPI = 100
FIGSIZE = {"positions": (15.0, 5.4), "attention": (10.0, 4.6), "smoothing": (14.0, 7.0), "curves": (8.0, 5.0),
           "monitors": (15.0, 8.0)}


def expected_size(kind: str) -> tuple[int, int]:
    """(width, height) in pixels of a picture kind."""
    w, h = FIGSIZE[kind]
    return int(round(w * DPI)), int(round(h * DPI))


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG of its fixed size and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")  # no bbox_inches: the size stays FIGSIZE * DPI
    plt.close(fig)
    return path


def finish_figure(fig: plt.Figure, axes: Iterable[plt.Axes], title: str, path: str | Path, **margins: float) -> Path:
    """Image panels without ticks, the title over them, ``margins`` (``subplots_adjust``), saved."""
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.subplots_adjust(**margins)
    return save_figure(fig, path)


def load_picture_image(
    img_size: int, image: str | Path | None = None, data: str | Path | None = None, index: int = 0
) -> tuple[np.ndarray, torch.Tensor]:
    """One image, eval-transformed at ``img_size``: (uint8 [H, W, 3] for display, normalised [1, 3, H, W])."""
    from pretrain.data.decode import load_image
    from pretrain.data.imagefolder import ImageFolderDataset

    tf = build_eval_transform(img_size, normalize=False)
    if image is not None:
        x = tf(load_image(image, "encoded"))
    else:
        if data is None:
            raise ValueError("give --image or --data")
        from ..probes.position_probe import resolve_image_folder

        ds = ImageFolderDataset(resolve_image_folder(data), split="val", transform=tf)
        x, _ = ds[index % len(ds)]
    return x.permute(1, 2, 0).numpy(), normalize_uint8(x)[None]


def cell_box(cell: int, grid: tuple[int, int], patch: int) -> tuple[int, int]:
    """Top-left pixel (y, x) of a flat cell index."""
    return (cell // grid[1]) * patch, (cell % grid[1]) * patch


def draw_grid(ax: plt.Axes, grid: tuple[int, int], patch: int) -> None:
    """Thin white lines between the patches."""
    for i in range(1, grid[0]):
        ax.axhline(i * patch - 0.5, color="white", lw=0.4, alpha=0.6)
    for j in range(1, grid[1]):
        ax.axvline(j * patch - 0.5, color="white", lw=0.4, alpha=0.6)
