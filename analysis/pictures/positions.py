"""The positions picture: where each patch is predicted to belong.

Three panels: the input (the patches whose position was dropped outlined), the image
reassembled from the predicted positions, and arrows from each true cell to its predicted
cell (green exact, orange one cell off, red farther). The predictions come from a full
DropPos checkpoint's own position head on its pretraining setup, or, for any other
checkpoint, from the position probe trained on ``--data`` (``analysis.position_predictions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from pretrain.weights import CheckpointError

from ..probes.backbone import load_backbone
from .canvas import FIGSIZE, cell_box, draw_grid, finish_figure, load_picture_image, plt
from ..probes.position_predictions import droppos_from_checkpoint, predict_with_droppos_head, predict_with_probe

COLOURS = {"exact": "#2ca02c", "near": "#ff7f0e", "far": "#d62728"}


def plot_position_predictions(
    image: np.ndarray,
    grid: tuple[int, int],
    true_cells: Sequence[int],
    pred_cells: Sequence[int],
    kept_cells: Sequence[int],
    hidden_cells: Sequence[int] = (),
    title: str = "",
    path: str | Path = "positions.png",
) -> Path:
    """Input / reassembled-from-predictions / error arrows for the tokens whose position was dropped.

    Args:
        image: uint8 [H, W, 3].
        grid: (rows, cols) of patches.
        true_cells, pred_cells: flat cell index of every probed token and its prediction.
        kept_cells: cells whose patch kept its true position (drawn in place).
        hidden_cells: cells not shown to the encoder at all (greyed out).
    """
    true_cells, pred_cells = np.asarray(true_cells), np.asarray(pred_cells)
    patch = image.shape[0] // grid[0]
    dy = np.abs(true_cells // grid[1] - pred_cells // grid[1])
    dx = np.abs(true_cells % grid[1] - pred_cells % grid[1])
    cheb = np.maximum(dy, dx)
    n_exact, n_near, n_far = int((cheb == 0).sum()), int((cheb == 1).sum()), int((cheb > 1).sum())
    k = max(len(true_cells), 1)

    fig, axes = plt.subplots(1, 3, figsize=FIGSIZE["positions"])
    # (a) input: dropped-position patches outlined, hidden ones greyed
    shown = image.astype(np.float32).copy()
    for c in hidden_cells:
        y, x = cell_box(int(c), grid, patch)
        shown[y : y + patch, x : x + patch] = shown[y : y + patch, x : x + patch] * 0.25 + 96
    axes[0].imshow(shown.clip(0, 255).astype(np.uint8))
    draw_grid(axes[0], grid, patch)
    for c in true_cells:
        y, x = cell_box(int(c), grid, patch)
        axes[0].add_patch(Rectangle((x - 0.5, y - 0.5), patch, patch, fill=False, ec="yellow", lw=1.2))
    axes[0].set_title("input: yellow = position dropped" + (", grey = not shown" if len(hidden_cells) else ""))
    # (b) reassembled: kept patches in place, dropped ones at their predicted cell
    canvas = np.full_like(image, 128)
    for c in kept_cells:
        y, x = cell_box(int(c), grid, patch)
        canvas[y : y + patch, x : x + patch] = image[y : y + patch, x : x + patch]
    landed = np.zeros(grid[0] * grid[1], dtype=int)
    for t, p in zip(true_cells, pred_cells):
        ty, tx = cell_box(int(t), grid, patch)
        py, px = cell_box(int(p), grid, patch)
        canvas[py : py + patch, px : px + patch] = image[ty : ty + patch, tx : tx + patch]
        landed[int(p)] += 1
    collisions = int((landed > 1).sum())
    axes[1].imshow(canvas)
    draw_grid(axes[1], grid, patch)
    axes[1].set_title(f"reassembled from predicted positions\n(grey = no patch; {collisions} cells got several)")
    # (c) arrows from true to predicted cell
    axes[2].imshow((image.astype(np.float32) * 0.45 + 140).clip(0, 255).astype(np.uint8))
    draw_grid(axes[2], grid, patch)
    half = patch / 2 - 0.5
    for t, p, d in zip(true_cells, pred_cells, cheb):
        ty, tx = cell_box(int(t), grid, patch)
        py, px = cell_box(int(p), grid, patch)
        colour = COLOURS["exact"] if d == 0 else COLOURS["near"] if d == 1 else COLOURS["far"]
        if d == 0:
            axes[2].plot(tx + half, ty + half, "o", color=colour, ms=5)
        else:
            axes[2].annotate(
                "",
                xy=(px + half, py + half),
                xytext=(tx + half, ty + half),
                arrowprops=dict(arrowstyle="->", color=colour, lw=1.3),
            )
    axes[2].legend(
        handles=[
            Line2D([], [], marker="o", ls="", color=COLOURS["exact"], label=f"exact cell ({n_exact}/{k})"),
            Line2D([], [], color=COLOURS["near"], label=f"one cell off ({n_near}/{k})"),
            Line2D([], [], color=COLOURS["far"], label=f"farther ({n_far}/{k})"),
        ],
        loc="lower center",
        bbox_to_anchor=(0.5, -0.2),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    axes[2].set_title(
        f"true cell -> predicted cell\ntop-1 {n_exact / k:.0%}, within one cell {(n_exact + n_near) / k:.0%}"
    )
    return finish_figure(fig, axes, title, path, left=0.02, right=0.98, top=0.82, bottom=0.1, wspace=0.06)


def positions_picture(
    checkpoint: str | Path,
    out: str | Path,
    image: str | Path | None = None,
    data: str | Path | None = None,
    index: int = 0,
    mode: str = "auto",
    drop_ratio: float = 0.75,
    probe_epochs: int = 20,
    seed: int = 0,
    label: str | None = None,
) -> Path:
    """positions_<label>.png for one checkpoint: its DropPos head if it has one (mode auto or head), else the probe."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = load_backbone(checkpoint, device=device)
    shown, imgs = load_picture_image(backbone.img_size, image, data, index)
    imgs = imgs.to(device)
    name = label or backbone.method
    model = droppos_from_checkpoint(checkpoint, backbone) if mode in ("auto", "head") else None
    if mode == "head" and model is None:
        raise CheckpointError(
            f"{checkpoint} holds no DropPos position head (decoder_pred, mask_pos_token) on a standard ViT size"
        )
    if model is not None:
        p = predict_with_droppos_head(model, imgs, seed)
        how = (
            f"DropPos position head; {1 - model.mask_ratio:.0%} of patches shown, "
            f"{model.pos_drop_ratio:.0%} of those without position"
        )
    else:
        if data is None:
            raise ValueError("the probe needs --data to train on (the checkpoint has no position head)")
        from ..probes.position_probe import ProbeSettings, make_loader, probe_drop_ratio, resolve_image_folder

        settings = ProbeSettings(epochs=probe_epochs, seed=seed, num_workers=0, train_images=5000, val_images=500)
        root = resolve_image_folder(data)
        tr = make_loader(root, "train", backbone.img_size, settings.train_images, settings)
        va = make_loader(root, "val", backbone.img_size, settings.val_images, settings)
        res, head = probe_drop_ratio(backbone, tr, va, drop_ratio, settings)
        p = predict_with_probe(backbone, head, imgs, drop_ratio, seed)
        how = f"linear position probe (val top-1 {res.top1:.0%}); all patches shown, {drop_ratio:.0%} without position"
    title = f"{name}: where is each patch predicted to belong?  ({how})"
    return plot_position_predictions(
        shown,
        backbone.grid_size,
        p["true"],
        p["pred"],
        p["kept"],
        p["hidden"],
        title,
        Path(out) / f"positions_{name}.png",
    )
