"""Pictures that explain a DropPos run without reading the code (matplotlib, Agg, PNG).

    python -m analysis.pictures positions --checkpoint CKPT [--image IMG | --data ROOT --index 0] --out DIR
    python -m analysis.pictures attention --checkpoint CKPT [--image IMG | --data ROOT] --out DIR
    python -m analysis.pictures smoothing --out DIR [--grid 14 --img-size 224 --sigmas 0,0.5,1,2]
    python -m analysis.pictures curves METRICS.json... --out DIR

- positions: where each patch is predicted to belong. With a full DropPos
  checkpoint (on a standard ViT size) its own position head is used on the pretraining setup (a random
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
One module per picture kind (``positions``, ``attention``,
``smoothing``, ``probe_curves``; what they share: ``canvas``); this one is the
command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .attention import attention_picture
from ..cli import run_command
from ..probes.position_probe import with_bad_image_hint
from .positions import positions_picture
from .probe_curves import plot_probe_curves
from .smoothing import plot_smoothing_targets

__all__ = ["attention_picture", "plot_probe_curves", "plot_smoothing_targets", "positions_picture"]


def _floats(text: str) -> list[float]:
    """Comma-separated numbers (``--sigmas``)."""
    return [float(t) for t in text.split(",") if t.strip()]


def get_args_parser() -> argparse.ArgumentParser:
    """The options of ``python -m analysis.pictures``: one subcommand per picture kind."""
    p = argparse.ArgumentParser("droppos pictures", add_help=True)
    sub = p.add_subparsers(dest="kind", required=True)
    for kind in ("positions", "attention"):
        s = sub.add_parser(kind)
        s.add_argument("--checkpoint", required=True)
        s.add_argument("--image", default=None, help="an image file (default: --data's val split)")
        s.add_argument("--data", default=None, help="ImageFolder root or 'builtin'")
        s.add_argument("--index", type=int, default=0, help="which val image")
        s.add_argument("--label", default=None)
        s.add_argument("--skip-bad", action="store_true",
                       help="with --data: draw the next readable val image if this one cannot be read")
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


def readable_index(data: str, index: int) -> int:
    """The first val image of ``data`` from ``index`` on that decodes (each unreadable one is named)."""
    from pretrain.data.decode import BadImageError
    from pretrain.data.imagefolder import ImageFolderDataset

    from ..probes.position_probe import resolve_image_folder

    ds = ImageFolderDataset(resolve_image_folder(data), split="val")
    for k in range(len(ds)):
        i = (index + k) % len(ds)
        try:
            ds[i]
            return i
        except BadImageError as exc:
            print(f"[pictures] skipped unreadable val image #{i} ({exc})", flush=True)
    raise ValueError(f"no readable image in the val split of {data}")


def draw(args: argparse.Namespace) -> Path:
    """The picture the parsed options ask for."""
    if getattr(args, "skip_bad", False) and args.image is None and args.data is not None:
        args.index = readable_index(args.data, args.index)
    if args.kind == "positions":
        return positions_picture(
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
    if args.kind == "attention":
        return attention_picture(args.checkpoint, args.out, args.image, args.data, args.index, args.tau, args.label)
    if args.kind == "smoothing":
        return plot_smoothing_targets(
            Path(args.out) / "smoothing_targets.png", (args.grid, args.grid), args.img_size, args.sigmas
        )
    labels = args.labels.split(",") if args.labels else None
    return plot_probe_curves(args.metrics, Path(args.out) / "position_probe_curves.png", labels)


def main(argv: list[str] | None = None) -> int:
    """Draw one picture; 1 with the reason on stderr if the inputs do not allow it."""
    args = get_args_parser().parse_args(argv)
    hint = "pass --skip-bad to draw the next readable image, or another --index / --image"
    return run_command(with_bad_image_hint(lambda: f"[pictures] wrote {draw(args)}", hint))

if __name__ == "__main__":
    sys.exit(main())
