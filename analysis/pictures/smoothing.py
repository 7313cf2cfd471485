"""The smoothing picture: DropPos's soft position targets for one cell at several sigmas.

Top row: the paper's Gaussian on the true grid, rows normalised; bottom row: the reference
code's behaviour (its grid, column-normalised, cut to N) (``pretrain.models.droppos.smoothing_matrix``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.lines import Line2D

from pretrain.models.droppos import smoothing_matrix

from .canvas import FIGSIZE, finish_figure, plt


def plot_smoothing_targets(
    path: str | Path,
    grid: tuple[int, int] = (14, 14),
    img_size: int = 224,
    sigmas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    cell: tuple[int, int] | None = None,
) -> Path:
    """Target distribution of one true cell at several sigmas: paper (top) vs reference code (bottom)."""
    cell = cell or (grid[0] // 2, grid[1] // 2)
    row = cell[0] * grid[1] + cell[1]
    fig, axes = plt.subplots(2, len(sigmas), figsize=FIGSIZE["smoothing"], squeeze=False)
    for r, mode in enumerate(("paper", "reference")):
        for c, sigma in enumerate(sigmas):
            target = smoothing_matrix(grid, float(sigma), mode, img_size=img_size)[row]
            ax = axes[r, c]
            im = ax.imshow(target.reshape(grid).numpy(), cmap="viridis")
            ax.plot(cell[1], cell[0], marker="*", color="red", ms=9, ls="")
            ax.set_title(f"{mode}, sigma = {sigma:g}\nrow sum {float(target.sum()):.2f}", fontsize=9)
            cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            cbar.ax.tick_params(labelsize=7)
    axes[0, 0].set_ylabel("paper: Gaussian on the\ntrue grid, rows sum to 1")
    axes[1, 0].set_ylabel(
        f"reference code: {img_size // grid[1]}x{img_size // grid[1]} grid,\n" "column-normalised, cut to N"
    )
    fig.legend(
        handles=[Line2D([], [], marker="*", ls="", color="red", label=f"true cell (row {cell[0]}, col {cell[1]})")],
        loc="lower center",
        ncol=1,
        frameon=False,
    )
    title = f"Position smoothing: soft target over the {grid[0]}x{grid[1]} cells for one patch (colour = target weight)"
    margins = dict(left=0.07, right=0.97, top=0.86, bottom=0.08, wspace=0.3, hspace=0.35)
    return finish_figure(fig, axes.ravel(), title, path, **margins)
