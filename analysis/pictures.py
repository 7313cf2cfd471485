"""Pictures that explain a DropPos run without reading the code (matplotlib, Agg, PNG).

    python -m analysis.pictures positions --checkpoint CKPT [--image IMG | --data ROOT --index 0] --out DIR
    python -m analysis.pictures attention --checkpoint CKPT [--image IMG | --data ROOT] --out DIR
    python -m analysis.pictures smoothing --out DIR [--grid 14 --img-size 224 --sigmas 0,0.5,1,2]
    python -m analysis.pictures curves METRICS.json... --out DIR

- positions: where each patch is predicted to belong. With a full DropPos
  checkpoint its own position head is used on the pretraining setup (a random
  25% of the patches visible, 75% of those without position); for any other
  checkpoint the position probe (``analysis.position_probe``) is trained on
  ``--data`` and predicts every patch whose position was dropped. Three panels:
  the input, the image reassembled from the predicted positions, and arrows from
  each true cell to its predicted cell (green exact, orange one cell off, red
  farther).
- attention: DropPos's attentive-reconstruction weights, softmax over the
  patches of cos(cls feature, patch feature) / tau, as a heat map over the image.
- smoothing: the soft position targets for one cell at several sigmas, the
  paper's Gaussian on the true grid next to the reference code's behaviour.
- curves: position-probe accuracy against the share of dropped positions.

Every figure has a fixed pixel size (``FIGSIZE * DPI``), titles, legends and colour bars.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from pretrain.weights import CheckpointError, load_checkpoint_file, load_method_weights, model_state  # noqa: E402
from pretrain.data.transforms import build_eval_transform, normalize_uint8  # noqa: E402
from pretrain.models.droppos import smoothing_matrix  # noqa: E402

from .backbone import LoadedBackbone, load_backbone  # noqa: E402

DPI = 100
FIGSIZE = {"positions": (15.0, 5.4), "attention": (10.0, 4.6), "smoothing": (14.0, 7.0), "curves": (8.0, 5.0)}
COLOURS = {"exact": "#2ca02c", "near": "#ff7f0e", "far": "#d62728"}


def expected_size(kind: str) -> tuple[int, int]:
    """(width, height) in pixels of a picture kind."""
    w, h = FIGSIZE[kind]
    return int(round(w * DPI)), int(round(h * DPI))


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")  # no bbox_inches: the size stays FIGSIZE * DPI
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- inputs
def load_picture_image(
    img_size: int, image: str | Path | None = None, data: str | Path | None = None, index: int = 0
) -> tuple[np.ndarray, torch.Tensor]:
    """One image, eval-transformed at ``img_size``: (uint8 [H, W, 3] for display, normalised [1, 3, H, W])."""
    from pretrain.data.imagefolder import ImageFolderDataset, load_image

    tf = build_eval_transform(img_size, normalize=False)
    if image is not None:
        x = tf(load_image(image, "encoded"))
    else:
        if data is None:
            raise ValueError("give --image or --data")
        from .position_probe import resolve_image_folder

        ds = ImageFolderDataset(resolve_image_folder(data), split="val", transform=tf)
        x, _ = ds[index % len(ds)]
    return x.permute(1, 2, 0).numpy(), normalize_uint8(x)[None]


def _cell_box(cell: int, grid: tuple[int, int], patch: int) -> tuple[int, int]:
    """Top-left pixel (y, x) of a flat cell index."""
    return (cell // grid[1]) * patch, (cell % grid[1]) * patch


def _draw_grid(ax: plt.Axes, grid: tuple[int, int], patch: int) -> None:
    for i in range(1, grid[0]):
        ax.axhline(i * patch - 0.5, color="white", lw=0.4, alpha=0.6)
    for j in range(1, grid[1]):
        ax.axvline(j * patch - 0.5, color="white", lw=0.4, alpha=0.6)


# --------------------------------------------------------------------------- positions
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
        y, x = _cell_box(int(c), grid, patch)
        shown[y : y + patch, x : x + patch] = shown[y : y + patch, x : x + patch] * 0.25 + 96
    axes[0].imshow(shown.clip(0, 255).astype(np.uint8))
    _draw_grid(axes[0], grid, patch)
    for c in true_cells:
        y, x = _cell_box(int(c), grid, patch)
        axes[0].add_patch(Rectangle((x - 0.5, y - 0.5), patch, patch, fill=False, ec="yellow", lw=1.2))
    axes[0].set_title("input: yellow = position dropped" + (", grey = not shown" if len(hidden_cells) else ""))
    # (b) reassembled: kept patches in place, dropped ones at their predicted cell
    canvas = np.full_like(image, 128)
    for c in kept_cells:
        y, x = _cell_box(int(c), grid, patch)
        canvas[y : y + patch, x : x + patch] = image[y : y + patch, x : x + patch]
    landed = np.zeros(grid[0] * grid[1], dtype=int)
    for t, p in zip(true_cells, pred_cells):
        ty, tx = _cell_box(int(t), grid, patch)
        py, px = _cell_box(int(p), grid, patch)
        canvas[py : py + patch, px : px + patch] = image[ty : ty + patch, tx : tx + patch]
        landed[int(p)] += 1
    collisions = int((landed > 1).sum())
    axes[1].imshow(canvas)
    _draw_grid(axes[1], grid, patch)
    axes[1].set_title(f"reassembled from predicted positions\n(grey = no patch; {collisions} cells got several)")
    # (c) arrows from true to predicted cell
    axes[2].imshow((image.astype(np.float32) * 0.45 + 140).clip(0, 255).astype(np.uint8))
    _draw_grid(axes[2], grid, patch)
    half = patch / 2 - 0.5
    for t, p, d in zip(true_cells, pred_cells, cheb):
        ty, tx = _cell_box(int(t), grid, patch)
        py, px = _cell_box(int(p), grid, patch)
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
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.82, bottom=0.1, wspace=0.06)
    return _save(fig, path)


def _decoder_heads(ckpt: dict, decoder_dim: int) -> int:
    cfg = ckpt.get("config")
    if isinstance(cfg, dict):
        heads = (cfg.get("droppos") or {}).get("decoder_heads")
        if heads:
            return int(heads)
    return 16 if decoder_dim % 16 == 0 else max(decoder_dim // 32, 1)  # reference: 512 wide, 16 heads


def droppos_from_checkpoint(path: str | Path, backbone: LoadedBackbone) -> "torch.nn.Module | None":
    """The full DropPos model (encoder + position head) of a checkpoint that holds the head, else None."""
    import copy

    from pretrain.models import DropPos

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickled RNG states and the like: not weights, reported by load_backbone
        ckpt = load_checkpoint_file(path)
    state = model_state(ckpt, path)
    if "decoder_pred.weight" not in state or ("mask_pos_token" not in state and "encoder.mask_pos_token" not in state):
        return None
    dec_dim = int(state["decoder_embed.weight"].shape[0])
    depth = len({k.split(".")[1] for k in state if k.startswith("decoder_blocks.")})
    encoder = copy.deepcopy(backbone.model).cpu()  # same architecture; the weights are loaded below
    cfg = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    d = cfg.get("droppos") or {}
    model = DropPos(
        encoder,
        mask_ratio=float(d.get("mask_ratio", 0.75)),
        pos_drop_ratio=float(d.get("pos_drop_ratio", 0.75)),
        decoder_dim=dec_dim,
        decoder_depth=depth,
        decoder_heads=_decoder_heads(ckpt, dec_dim),
    )
    load_method_weights(model, state, strict=True)
    return model.eval().to(backbone.position_token.device)


@torch.no_grad()
def predict_with_droppos_head(model, imgs: torch.Tensor, seed: int = 0) -> dict[str, np.ndarray]:
    """The method's own prediction on its pretraining setup (random visible patches, dropped positions)."""
    gen = torch.Generator(device=imgs.device).manual_seed(seed)
    masks = model.sample_masks(1, gen, imgs.device)
    tokens = model.encoder.embed_patches(imgs)
    logits = model.forward_head(model.forward_encoder(tokens, masks))[0]  # [V, N]
    keep, dropped = masks.ids_keep[0], masks.pos_dropped[0]
    pred = logits.argmax(-1)
    hidden = sorted(set(range(model.encoder.num_patches)) - set(keep.tolist()))
    return {
        "true": keep[dropped].cpu().numpy(),
        "pred": pred[dropped].cpu().numpy(),
        "kept": keep[~dropped].cpu().numpy(),
        "hidden": np.asarray(hidden, dtype=int),
    }


@torch.no_grad()
def predict_with_probe(
    backbone: LoadedBackbone, head, imgs: torch.Tensor, drop_ratio: float, seed: int = 0
) -> dict[str, np.ndarray]:
    """All patches visible; a share ``drop_ratio`` lose their position; the probe head predicts them."""
    from .position_probe import dropped_positions, encode_with_dropped_positions

    n = backbone.model.num_patches
    dropped = dropped_positions(1, n, drop_ratio, torch.Generator().manual_seed(seed))[0]
    feats = encode_with_dropped_positions(backbone, imgs, dropped[None].to(imgs.device))[0]
    pred = head.to(feats.device)(feats).argmax(-1).cpu()
    cells = torch.arange(n)
    return {
        "true": cells[dropped].numpy(),
        "pred": pred[dropped].numpy(),
        "kept": cells[~dropped].numpy(),
        "hidden": np.zeros(0, dtype=int),
    }


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
    """positions.png for one checkpoint (DropPos head if present and mode allows, else the probe)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = load_backbone(checkpoint, device=device)
    shown, imgs = load_picture_image(backbone.img_size, image, data, index)
    imgs = imgs.to(device)
    name = label or backbone.method
    model = droppos_from_checkpoint(checkpoint, backbone) if mode in ("auto", "head") else None
    if mode == "head" and model is None:
        raise CheckpointError(f"{checkpoint} holds no DropPos position head (decoder_pred, mask_pos_token)")
    if model is not None:
        p = predict_with_droppos_head(model, imgs, seed)
        how = (
            f"DropPos position head; {1 - model.mask_ratio:.0%} of patches shown, "
            f"{model.pos_drop_ratio:.0%} of those without position"
        )
    else:
        if data is None:
            raise ValueError("the probe needs --data to train on (the checkpoint has no position head)")
        from .position_probe import ProbeSettings, make_loader, probe_drop_ratio, resolve_image_folder

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


# --------------------------------------------------------------------------- attention
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
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.subplots_adjust(left=0.02, right=0.92, top=0.8, bottom=0.04, wspace=0.08)
    return _save(fig, path)


def attention_picture(
    checkpoint: str | Path,
    out: str | Path,
    image: str | Path | None = None,
    data: str | Path | None = None,
    index: int = 0,
    tau: float = 0.1,
    label: str | None = None,
) -> Path:
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


# --------------------------------------------------------------------------- smoothing
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
            ax.set_xticks([])
            ax.set_yticks([])
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
    fig.suptitle(
        f"Position smoothing: soft target over the {grid[0]}x{grid[1]} cells for one patch (colour = target weight)"
    )
    fig.subplots_adjust(left=0.07, right=0.97, top=0.86, bottom=0.08, wspace=0.3, hspace=0.35)
    return _save(fig, path)


# --------------------------------------------------------------------------- curves
def read_probe_metrics(source: str | Path | dict) -> dict:
    """A position_probe_metrics.json (path or dict), checked for what the curves need."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / "position_probe_metrics.json"
    data = json.loads(path.read_text())
    if data.get("task") != "position_probe" or not isinstance(data.get("results"), list):
        raise ValueError(f"{path} is not a position_probe_metrics.json (task/results missing)")
    return data


def plot_probe_curves(
    sources: Sequence[str | Path | dict], path: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Top-1 (solid) and within-one-cell (dashed) probe accuracy against drop ratio, one colour per checkpoint."""
    fig, ax = plt.subplots(figsize=FIGSIZE["curves"])
    chance = None
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for i, src in enumerate(sources):
        m = read_probe_metrics(src)
        rows = sorted(m["results"], key=lambda r: r["drop_ratio"])
        x = [r["drop_ratio"] for r in rows]
        name = labels[i] if labels else m.get("label") or m.get("method") or Path(str(m.get("checkpoint"))).parent.name
        colour = colours[i % len(colours)]
        ax.plot(x, [100 * r["top1"] for r in rows], "-o", color=colour)
        ax.plot(x, [100 * r["within1"] for r in rows], "--s", color=colour, ms=4)
        handles.append(Patch(color=colour, label=name))
        chance = rows[0]["chance"] if rows else chance
    if chance is not None:
        ax.axhline(100 * chance, color="grey", ls=":", lw=1)
    handles += [
        Line2D([], [], color="black", ls="-", marker="o", label="top-1 (exact cell)"),
        Line2D([], [], color="black", ls="--", marker="s", ms=4, label="within one cell"),
        Line2D([], [], color="grey", ls=":", label="chance (top-1)"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("share of position embeddings dropped")
    ax.set_ylabel("position accuracy on held-out images (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Linear position probe on frozen features")
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.11)
    return _save(fig, path)


# --------------------------------------------------------------------------- CLI
def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("droppos pictures", add_help=True)
    sub = p.add_subparsers(dest="kind", required=True)
    for kind in ("positions", "attention"):
        s = sub.add_parser(kind)
        s.add_argument("--checkpoint", required=True)
        s.add_argument("--image", default=None, help="an image file (default: --data's val split)")
        s.add_argument("--data", default=None, help="ImageFolder root or 'builtin'")
        s.add_argument("--index", type=int, default=0, help="which val image")
        s.add_argument("--label", default=None)
        s.add_argument("--out", default="outputs/pictures")
        if kind == "positions":
            s.add_argument("--mode", choices=["auto", "head", "probe"], default="auto")
            s.add_argument("--drop-ratio", type=float, default=0.75)
            s.add_argument("--seed", type=int, default=0)
        else:
            s.add_argument("--tau", type=float, default=0.1)
    s = sub.add_parser("smoothing")
    s.add_argument("--grid", type=int, default=14)
    s.add_argument("--img-size", type=int, default=224)
    s.add_argument("--sigmas", type=_floats, default=[0.0, 0.5, 1.0, 2.0])
    s.add_argument("--out", default="outputs/pictures")
    s = sub.add_parser("curves")
    s.add_argument("metrics", nargs="+", help="position_probe_metrics.json files (or their folders)")
    s.add_argument("--labels", default=None, help="comma-separated names, one per file")
    s.add_argument("--out", default="outputs/pictures")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if args.kind == "positions":
            path = positions_picture(
                args.checkpoint,
                args.out,
                args.image,
                args.data,
                args.index,
                args.mode,
                args.drop_ratio,
                seed=args.seed,
                label=args.label,
            )
        elif args.kind == "attention":
            path = attention_picture(args.checkpoint, args.out, args.image, args.data, args.index, args.tau, args.label)
        elif args.kind == "smoothing":
            path = plot_smoothing_targets(
                Path(args.out) / "smoothing_targets.png", (args.grid, args.grid), args.img_size, args.sigmas
            )
        else:
            labels = args.labels.split(",") if args.labels else None
            path = plot_probe_curves(args.metrics, Path(args.out) / "position_probe_curves.png", labels)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[pictures] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
