"""The attention picture: DropPos's attentive-reconstruction weights as a heat map over the image.

The weights are a softmax over the patches of cos(cls feature, patch feature) / tau, all
patches shown with their positions (as the method weighs its reconstruction targets).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..probes.backbone import LoadedBackbone, load_backbone
from .canvas import FIGSIZE, finish_figure, load_picture_image, plt


@torch.no_grad()
def attentive_weights(backbone: LoadedBackbone, imgs: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """DropPos's attentive-reconstruction weights over all patches: [B, N], rows sum to 1."""
    vit = backbone.model
    b = imgs.shape[0]
    x = torch.cat([vit.cls_with_pos(b), vit.embed_patches(imgs) + vit.pos_embed_patches()], dim=1)
    x = vit.forward_encoder_tokens(x)
    sim = F.cosine_similarity(x[:, :1].float(), x[:, 1:].float(), dim=-1)
    return torch.softmax(sim / tau, dim=-1)


def plot_attention_map(image: np.ndarray, weights: np.ndarray, tau: float, title: str, path: str | Path) -> Path:
    """Image and the weight map (one value per patch) over it, with a colour bar."""
    h, w = image.shape[:2]
    fig, axes = plt.subplots(1, 2, figsize=FIGSIZE["attention"])
    axes[0].imshow(image)
    axes[0].set_title("input")
    axes[1].imshow(image)
    im = axes[1].imshow(
        weights, cmap="inferno", alpha=0.65, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest"
    )
    axes[1].set_title(f"attentive-reconstruction weight per patch\nsoftmax over patches of cos(cls, patch) / {tau}")
    cbar = fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
    cbar.set_label("weight (sums to 1 over the image)")
    return finish_figure(fig, axes, title, path, left=0.02, right=0.92, top=0.8, bottom=0.04, wspace=0.08)


def attention_picture(
    checkpoint: str | Path,
    out: str | Path,
    image: str | Path | None = None,
    data: str | Path | None = None,
    index: int = 0,
    tau: float = 0.1,
    label: str | None = None,
) -> Path:
    """attention_<label>.png for one checkpoint (any method's encoder)."""
    backbone = load_backbone(checkpoint)
    shown, imgs = load_picture_image(backbone.img_size, image, data, index)
    wts = attentive_weights(backbone, imgs, tau)[0].reshape(backbone.grid_size).numpy()
    name = label or backbone.method
    return plot_attention_map(
        shown,
        wts,
        tau,
        f"{name}: which patches attentive reconstruction weighs most",
        Path(out) / f"attention_{name}.png",
    )
