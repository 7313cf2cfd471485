"""Position-prediction linear probe: how well do frozen patch features know where they are?

    python -m analysis.position_probe --checkpoint outputs/demo/droppos/pretrain/backbone.pth \
        --data data/builtin [--drop-ratio 0.75 | --sweep 0,0.25,0.5,0.75,1.0] [--output DIR]

For every image, a share ``drop_ratio`` of the patches lose their position
embedding (replaced as the checkpoint's method expects, see
``analysis.backbone``); all N patches and the cls token go through the frozen
encoder; a linear classifier over the N grid cells is trained on the final
(normed) features of the tokens whose position was dropped, and evaluated on
the val split: top-1 accuracy and within-one-cell accuracy (Chebyshev distance
<= 1). With ``drop_ratio`` 0 nothing is dropped and the probe reads every token
(position given). The dropped sets are drawn from a fixed seed, so every
checkpoint sees the same ones.

Features are extracted once per drop ratio without gradients and cached; the
head (feature standardisation + Linear(D, N)) trains with AdamW on the cache.
Writes ``position_probe_metrics.json`` in ``--output``. The probe's pieces (dropped sets,
encoding, head, training) are ``classification.position_probe``, shared with the online
monitor of pretraining (``pretrain.engine.monitors``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from classification.position_probe import (
    PositionHead,
    chance_within1,
    dropped_positions,
    encode_dropped,
    evaluate_position_head,
    steps_per_pass,
    train_position_head,
)
from pretrain.atomic import atomic_write_text

from .backbone import REPLACEMENTS, LoadedBackbone, load_backbone, random_backbone
from ..cli import run_command

METRICS_FILE = "position_probe_metrics.json"


@dataclass
class ProbeSettings:
    """How the probe samples tokens and trains its head."""

    epochs: int = 20
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024
    seed: int = 0
    train_images: int = 20000  # at most this many training images (0 = all)
    val_images: int = 5000
    tokens_per_image: int = 64  # at most this many probed tokens per image (0 = all)
    extract_batch: int = 128
    num_workers: int = 2
    skip_bad: bool = False  # leave unreadable images out (listed in the metrics) instead of stopping


# --------------------------------------------------------------------------- tokens
@torch.no_grad()
def encode_with_dropped_positions(backbone: LoadedBackbone, imgs: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """All N patches + cls through the backbone's encoder, dropped positions replaced by its
    position token: [B, N, D] (normed); :func:`classification.position_probe.encode_dropped`."""
    return encode_dropped(backbone.model, backbone.position_token, imgs, dropped)


# --------------------------------------------------------------------------- data
def resolve_image_folder(root: str | Path) -> Path:
    """An ImageFolder root (train/, val/), the built-in data root, or 'builtin' (generated if missing)."""
    root = Path(root)
    if str(root) == "builtin":
        root = Path("data/builtin")
        if not (root / "imagenet" / "val").is_dir():
            from pretrain.data.synthetic import make_builtin_dataset

            make_builtin_dataset(root, formats=("imagefolder",))
    for cand in (root, root / "imagenet"):
        if (cand / "train").is_dir() and (cand / "val").is_dir():
            return cand
    raise FileNotFoundError(f"no ImageFolder with train/ and val/ found at {root} (nor at {root / 'imagenet'})")


def make_loader(
    root: Path, split: str, img_size: int, limit: int, settings: ProbeSettings
) -> torch.utils.data.DataLoader:
    """Eval-transformed images of one split, in file order, at most ``limit`` (evenly spread over classes)."""
    from pretrain.data.imagefolder import ImageFolderDataset, drop_missing_collate
    from pretrain.data.loader_timeout import worker_timeout
    from pretrain.data.transforms import build_eval_transform

    # with skip_bad an unreadable image is left out (never replaced by another one)
    ds = ImageFolderDataset(root, split=split, transform=build_eval_transform(img_size), skip_bad=settings.skip_bad,
                            substitute=False)
    if limit and limit < len(ds):
        step = len(ds) / limit
        ds = torch.utils.data.Subset(ds, [int(i * step) for i in range(limit)])
    return torch.utils.data.DataLoader(
        ds, batch_size=settings.extract_batch, shuffle=False, num_workers=settings.num_workers, persistent_workers=False,
        collate_fn=drop_missing_collate, timeout=worker_timeout(settings.num_workers),  # a hung worker fails, named
    )


def skipped_files(loader: torch.utils.data.DataLoader) -> dict:
    """The unreadable files a ``make_loader`` loader left out: count and names (metrics JSON)."""
    from pretrain.data.imagefolder import BadImageTally

    summary, _ = BadImageTally(loader.dataset).summary([BadImageTally(loader.dataset).state()])
    return {"bad_files": summary["bad_files"], "bad_file_names": summary["bad_file_names"]}


@torch.no_grad()
def extract_features(
    backbone: LoadedBackbone,
    loader: torch.utils.data.DataLoader,
    drop_ratio: float,
    seed: int,
    tokens_per_image: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [M, D] (float16) and true cells [M] of the probed tokens of every image."""
    n = backbone.model.num_patches
    device = backbone.position_token.device
    gen = torch.Generator().manual_seed(seed)
    feats, labels = [], []
    for batch in loader:
        if batch is None:  # only unreadable images (skip_bad)
            continue
        imgs = batch[0]
        b = imgs.shape[0]
        dropped = dropped_positions(b, n, drop_ratio, gen)
        probed = dropped if drop_ratio > 0 else torch.ones_like(dropped)
        if tokens_per_image and tokens_per_image < n:
            # keep the first tokens_per_image probed cells in a random order
            score = torch.rand(b, n, generator=gen) + (~probed).float() * 2
            keep = torch.argsort(score, dim=1)[:, :tokens_per_image]
            sub = torch.zeros_like(probed).scatter_(1, keep, True)
            probed = probed & sub
        out = encode_with_dropped_positions(backbone, imgs.to(device), dropped.to(device)).float().cpu()
        rows, cells = probed.nonzero(as_tuple=True)
        feats.append(out[rows, cells].half())
        labels.append(cells)
    return torch.cat(feats), torch.cat(labels)


# --------------------------------------------------------------------------- head
def train_head(feats: torch.Tensor, labels: torch.Tensor, num_positions: int, settings: ProbeSettings) -> PositionHead:
    """AdamW with a cosine schedule on cached features: ``settings.epochs`` full passes over shuffled minibatches."""
    steps = settings.epochs * steps_per_pass(feats.shape[0], settings.batch_size)
    return train_position_head(feats, labels, num_positions, steps=steps, lr=settings.lr,
                               weight_decay=settings.weight_decay, batch_size=settings.batch_size, seed=settings.seed)


evaluate_head = evaluate_position_head  # top-1 and within-one-cell accuracy (fractions)


# --------------------------------------------------------------------------- run
@dataclass
class ProbeResult:
    drop_ratio: float
    top1: float
    within1: float
    chance: float
    chance_within1: float
    train_top1: float
    num_train_tokens: int
    num_val_tokens: int
    probed: str


def probe_drop_ratio(
    backbone: LoadedBackbone,
    train_loader: torch.utils.data.DataLoader,
    val_loader: torch.utils.data.DataLoader,
    drop_ratio: float,
    settings: ProbeSettings,
) -> tuple[ProbeResult, PositionHead]:
    """Extract, train and evaluate the probe at one drop ratio."""
    grid = backbone.grid_size
    n = backbone.model.num_patches
    tr_x, tr_y = extract_features(backbone, train_loader, drop_ratio, settings.seed, settings.tokens_per_image)
    va_x, va_y = extract_features(backbone, val_loader, drop_ratio, settings.seed + 1, settings.tokens_per_image)
    if tr_x.shape[0] == 0:
        raise ValueError(f"drop ratio {drop_ratio} drops no position on a {grid} grid: nothing to probe")
    head = train_head(tr_x, tr_y, n, settings)
    val = evaluate_head(head, va_x, va_y, grid)
    train = evaluate_head(head, tr_x, tr_y, grid)
    result = ProbeResult(
        drop_ratio=float(drop_ratio),
        top1=val["top1"],
        within1=val["within1"],
        chance=1.0 / n,
        chance_within1=chance_within1(grid),
        train_top1=train["top1"],
        num_train_tokens=int(tr_x.shape[0]),
        num_val_tokens=int(va_x.shape[0]),
        probed="dropped" if drop_ratio > 0 else "all (no position dropped)",
    )
    return result, head


def run_probe(
    checkpoint: str | Path,
    data: str | Path,
    drop_ratios: list[float],
    settings: ProbeSettings | None = None,
    replacement: str = "auto",
    output: str | Path | None = None,
    num_heads: int | None = None,
    label: str | None = None,
    verbose: bool = True,
    img_size: int | None = None,
    random_arch: str | None = None,
) -> dict:
    """Probe one checkpoint (``"none"``: a random ``random_arch`` ViT) at several drop ratios;
    returns (and writes, if ``output``) the metrics."""
    settings = settings or ProbeSettings()
    t0 = time.time()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(checkpoint) == "none":
        if random_arch is None:
            raise ValueError("--checkpoint none (random initialisation) needs --random-arch, e.g. vit_tiny_patch8_64")
        backbone = random_backbone(random_arch, settings.seed, device)
    else:
        backbone = load_backbone(checkpoint, replacement, num_heads, device, img_size)
    root = resolve_image_folder(data)
    train_loader = make_loader(root, "train", backbone.img_size, settings.train_images, settings)
    val_loader = make_loader(root, "val", backbone.img_size, settings.val_images, settings)
    if verbose:
        print(
            f"[position_probe] {checkpoint}: method={backbone.method} {backbone.arch()} grid={backbone.grid_size} "
            f"replacement={backbone.replacement} "
            f"train={len(train_loader.dataset)} val={len(val_loader.dataset)} images",
            flush=True,
        )
        for note in backbone.notes:
            print(f"[position_probe]   note: {note}", flush=True)
    results = []
    for ratio in drop_ratios:
        res, _ = probe_drop_ratio(backbone, train_loader, val_loader, ratio, settings)
        results.append(asdict(res))
        if verbose:
            print(
                f"[position_probe]   drop {ratio:.2f}: top1 {res.top1:.4f} within1 {res.within1:.4f} "
                f"(chance {res.chance:.4f} / {res.chance_within1:.4f}; train top1 {res.train_top1:.4f})",
                flush=True,
            )
    metrics = {
        "task": "position_probe",
        "checkpoint": str(checkpoint),
        "label": label or backbone.method,
        "method": backbone.method,
        "format": backbone.source_format,
        "arch": backbone.arch(),
        "grid": list(backbone.grid_size),
        "replacement": backbone.replacement,
        "notes": backbone.notes,
        "data": str(root),
        "train_images": len(train_loader.dataset),
        "val_images": len(val_loader.dataset),
        "settings": asdict(settings),
        "skipped": {"train": skipped_files(train_loader), "val": skipped_files(val_loader)},
        "results": results,
        "wall_seconds": time.time() - t0,
    }
    for split, skipped in metrics["skipped"].items():
        if skipped["bad_files"] and verbose:
            print(f"[position_probe] left out {skipped['bad_files']} unreadable {split} images (--skip-bad): "
                  f"{', '.join(skipped['bad_file_names'])}", flush=True)
    if output is not None:
        write_metrics(metrics, output)
    return metrics


def with_bad_image_hint(action: Callable[[], str], hint: str) -> Callable[[], str]:
    """``action``, with an unreadable image (here or in a DataLoader worker) turned into a ValueError
    that names the file and ``hint``: the command then ends with one ``error:`` line, no traceback."""
    from pretrain.engine.cli import bad_image_error, debug_enabled

    def wrapped() -> str:
        try:
            return action()
        except RuntimeError as exc:
            message = bad_image_error(exc)
            if message is None:
                raise
            if debug_enabled():
                traceback.print_exc()
            raise ValueError(f"{message} ({hint})") from exc

    return wrapped


def write_metrics(metrics: dict, output: str | Path) -> Path:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    path = out / METRICS_FILE
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return path


def parse_ratios(text: str) -> list[float]:
    try:
        ratios = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not ratios or any(not 0.0 <= r <= 1.0 for r in ratios):
        raise argparse.ArgumentTypeError(f"drop ratios must lie in [0, 1], got {text!r}")
    return ratios


def add_settings_args(p: argparse.ArgumentParser) -> None:
    """The probe's training settings (:class:`ProbeSettings`) as options; read back with :func:`settings_from_args`."""
    d = ProbeSettings()
    for name in ("epochs", "batch_size", "seed", "train_images", "val_images", "tokens_per_image", "extract_batch",
                 "num_workers"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable images out (named in the metrics)")


def settings_from_args(args: argparse.Namespace) -> ProbeSettings:
    return ProbeSettings(**{k: getattr(args, k) for k in asdict(ProbeSettings())})


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("position-prediction linear probe", add_help=True)
    p.add_argument("--checkpoint", required=True, help="any checkpoint pretrain.weights reads, or none (random init)")
    p.add_argument("--random-arch", default=None, help="with --checkpoint none: the ViT, e.g. vit_tiny_patch8_64")
    p.add_argument("--data", default="builtin", help="ImageFolder root with train/ and val/, or 'builtin'")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--drop-ratio", type=float, default=None, help="share of positions dropped (default 0.75)")
    g.add_argument(
        "--sweep", type=parse_ratios, default=None, help="comma-separated drop ratios, e.g. 0,0.25,0.5,0.75,1.0"
    )
    p.add_argument(
        "--replacement",
        choices=REPLACEMENTS,
        default="auto",
        help="what replaces a dropped position (auto: DropPos mask_pos_token, else zero)",
    )
    p.add_argument("--output", default=None, help=f"folder for {METRICS_FILE} (default: beside the checkpoint)")
    p.add_argument("--label", default=None, help="name of this checkpoint in tables and pictures")
    p.add_argument("--num-heads", type=int, default=None, help="attention heads for non-standard widths")
    p.add_argument(
        "--img-size",
        type=int,
        default=None,
        help="probe at this input size (default: the checkpoint's; the position table is resized)",
    )
    add_settings_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    """Probe one checkpoint and write its metrics; 1 with the reason on stderr if it cannot be read."""
    args = get_args_parser().parse_args(argv)
    ratios = args.sweep or [0.75 if args.drop_ratio is None else args.drop_ratio]
    if any(not 0.0 <= r <= 1.0 for r in ratios):
        print(f"error: drop ratios must lie in [0, 1], got {ratios}", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    if args.checkpoint == "none" and (args.random_arch is None or args.output is None):
        print("error: --checkpoint none (random initialisation) needs --random-arch and --output", file=sys.stderr)
        return 2
    output = args.output or str(Path(args.checkpoint).parent / "position_probe")

    def probe() -> str:
        metrics = run_probe(
            args.checkpoint,
            args.data,
            ratios,
            settings,
            args.replacement,
            output,
            args.num_heads,
            args.label,
            img_size=args.img_size,
            random_arch=args.random_arch,
        )
        return f"[position_probe] wrote {Path(output) / METRICS_FILE} ({metrics['wall_seconds']:.0f} s)"

    return run_command(with_bad_image_hint(probe, "pass --skip-bad to leave unreadable images out"))


if __name__ == "__main__":
    sys.exit(main())
