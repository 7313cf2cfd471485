"""Robustness of a fine-tuned classifier: ImageNetV2, -R, -A, -Sketch, -C, ReaL and the position rows.

    python -m classification.robustness --checkpoint FT.pth --sets v2,r,a,sketch,c,real,position \
        --variants VARIANTS --imagenet IMAGENET [--output DIR]

``FT.pth`` is the fine-tuning run's ``best.pth`` (or its run folder): the whole classifier, head
included (``classification.finetuned``). The sets (layouts: ``classification.imagenet_variants``):

- ``v2``, ``sketch``: top-1 / top-5 over all outputs (their classes are the classifier's).
- ``r``, ``a``: top-1 / top-5 over the 200 outputs of the set's classes only (timm's index files).
- ``c``: top-1 per corruption and severity, the unnormalised mean error, CE per corruption, mCE
  normalised by AlexNet's published errors and relative mCE (``classification.mce``; relative mCE
  needs the clean error, i.e. ``--imagenet``). Its images are already the 224-px centre crops,
  so they get Resize(img) + CenterCrop(img) (crop_pct 1), as the benchmark's own evaluation.
- ``real``: ReaL top-1 / top-5 on the ImageNet-1K val images of ``--imagenet`` (labels from
  ``--real-labels``, else ``VARIANTS/real/real_labels.json``, else the file timm ships).
- ``position``: the position-specific rows (``classification.position_robustness``) on the
  ``--imagenet`` val split.

``--val-images N`` limits the ImageNet val pass (clean, ReaL, position) to N images evenly
spread (0 = all; the demo's corrupted copy is made from the same N, so its clean row and its
corrupted rows see the same images).

Every number goes to ``robustness_metrics.json`` (written atomically) with its protocol. A
missing variant folder, a folder with the wrong class set, or a checkpoint without a
classification head stops with one line.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from pretrain.atomic import atomic_write_json
from pretrain.data.imagefolder import ImageFolderDataset
from pretrain.data.transforms import build_eval_transform
from pretrain.engine.cli import run_guarded
from pretrain.engine.config import ConfigError
from pretrain.engine.trainer import resolve_precision
from pretrain.models.masking import num_kept

from . import mce
from .data import evenly_spread_indices
from .finetuned import load_finetuned, resolve_path
from .imagenet_variants import (
    REAL_LABELS,
    VARIANTS,
    VariantError,
    check_classes,
    corruption_sets,
    load_real_labels,
    open_variant,
)
from .position_robustness import PROTOCOL as POSITION_PROTOCOL
from .position_robustness import Perturbation, default_perturbations, perturbed_logits
from .scoring import HitCounter, TopKRecorder, predict, real_accuracy

METRICS_FILE = "robustness_metrics.json"
SETS = ("v2", "r", "a", "sketch", "c", "real", "position")
NEEDS_IMAGENET = ("real", "position")


def parse_sets(text: str) -> list[str]:
    """Comma-separated set names, each one of SETS."""
    sets = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in sets if s not in SETS]
    if bad or not sets:
        raise argparse.ArgumentTypeError(f"unknown sets {bad or text!r}; choose from {', '.join(SETS)}")
    return sets


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _shuffles(text: str) -> list[int | str]:
    return [x.strip() if x.strip() == "grid" else int(x) for x in text.split(",") if x.strip()]


class PositionRows:
    """Consumer of the clean ImageNet pass: top-1 of every perturbation on the same images."""

    def __init__(self, model, perturbations: Sequence[Perturbation], seed: int) -> None:
        self.model, self.perturbations, self.seed = model, list(perturbations), seed
        self.counters = {p.name: HitCounter() for p in self.perturbations}

    def __call__(self, logits, targets, indices, images) -> None:
        ids = indices.tolist()
        for p in self.perturbations:
            out = logits if p.kind == "clean" else perturbed_logits(self.model, images, p, self.seed, ids)
            self.counters[p.name](out.float(), targets)

    def result(self) -> dict[str, Any]:
        rows = {p.name: {"kind": p.kind, "value": p.value, **self.counters[p.name].result()}
                for p in self.perturbations}
        return {"rows": rows, "protocol": {k: v for k, v in POSITION_PROTOCOL.items()
                                           if any(p.kind == k for p in self.perturbations)}}


def position_perturbations(args: argparse.Namespace, img_size: int, grid: int, num_patches: int) -> list[Perturbation]:
    """The rows of ``--shuffles``, ``--drops`` and ``--occlusions`` for a classifier of ``img_size`` px and a
    ``grid`` x ``grid`` patch grid, checked before any image is read (a ConfigError naming the option)."""
    for k in args.shuffles:
        side = grid if k == "grid" else k
        if side < 1 or img_size % side:
            raise ConfigError(f"--shuffles {k}: the {img_size}-px eval view cannot be cut into {side}x{side} equal "
                              "blocks (blocks per side must divide the image size, or 'grid')")
    for r in args.drops:
        if not 0.0 <= r < 1.0 or num_kept(num_patches, r) < 1:
            raise ConfigError(f"--drops {r:g}: a share of patch tokens removed must lie in [0, 1) and keep at least "
                              f"one of the {num_patches} patches")
    for r in args.occlusions:
        if not 0.0 < r < 1.0:
            raise ConfigError(f"--occlusions {r:g}: an occluded share of the image area must lie in (0, 1)")
    try:
        return default_perturbations(grid, args.shuffles, args.drops, args.occlusions)
    except ValueError as exc:  # a row named twice
        raise ConfigError(f"--shuffles / --drops / --occlusions: {exc}") from None


def output_folder(args: argparse.Namespace) -> Path:
    """``--output`` (default: robustness/ beside the checkpoint's run folder), made and checked writable
    before any forward pass, so an unwritable folder fails at once, not after the whole evaluation."""
    out = Path(args.output) if args.output is not None else resolve_path(args.checkpoint).parent.parent / "robustness"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise OSError(f"--output {out} cannot be written ({exc.strerror or exc}): nothing was evaluated") from None
    return out


def check_request(args: argparse.Namespace) -> list[str]:
    """The requested sets (each once) after the checks that need no file: the device, the folders they need."""
    resolve_device(args.device)
    sets = list(dict.fromkeys(args.sets))
    if any(s in VARIANTS and s != "real" for s in sets) and args.variants is None:
        raise ConfigError(f"--sets {','.join(sets)} needs --variants (the folder tools.prepare_data wrote)")
    if any(s in NEEDS_IMAGENET for s in sets) and args.imagenet is None:
        raise ConfigError(f"--sets {','.join(s for s in sets if s in NEEDS_IMAGENET)} needs --imagenet (its val split)")
    return sets


def resolve_device(name: str) -> torch.device:
    """``--device``: auto (cuda when there is a GPU), cpu or cuda (a ConfigError when there is none)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda, but torch sees no CUDA GPU here: use --device cpu (or auto)")
    return torch.device(name)


def evenly_spread(dataset, limit: int):
    """``limit`` images of ``dataset`` evenly spread (every class keeps its share), or the dataset itself."""
    if not limit or limit >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, evenly_spread_indices(len(dataset), limit))


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Every requested set -> the metrics dict (also written to ``--output``/robustness_metrics.json)."""
    sets = check_request(args)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    clf = load_finetuned(args.checkpoint, args.classes, device)
    perturbations = (position_perturbations(args, clf.img_size, clf.model.grid_size[0], clf.model.num_patches)
                     if "position" in sets else None)
    eval_tf = build_eval_transform(clf.img_size, crop_pct=clf.crop_pct)
    common = dict(batch_size=args.batch_size, workers=args.workers, device=device, precision=precision)
    model = clf.model
    metrics: dict[str, Any] = {
        "task": "robustness", "checkpoint": clf.path, "arch": clf.arch, "global_pool": clf.global_pool,
        "num_classes": len(clf.classes), "classes_from": clf.classes_from, "img_size": clf.img_size,
        "crop_pct": clf.crop_pct, "seed": args.seed, "device": str(device), "precision": precision,
        "variants": str(args.variants) if args.variants else None, "imagenet": str(args.imagenet) if args.imagenet else None,
        "sets_requested": sets, "notes": list(clf.notes), "clean": None, "sets": {}, "seconds": {},
    }
    eval_view = f"Resize({int(clf.img_size / clf.crop_pct)}) + CenterCrop({clf.img_size}), bicubic"

    # the ImageNet val pass: clean top-1 (relative mCE), ReaL, position rows
    if args.imagenet is not None:
        t0 = time.time()
        full = ImageFolderDataset(Path(args.imagenet), "val", transform=eval_tf, skip_bad=args.skip_bad, substitute=False)
        check_classes(full.root, full.classes, clf.classes, "classes of the classifier")
        val = evenly_spread(full, args.val_images)
        sample_of = (lambda i: full.samples[val.indices[i]][0]) if val is not full else (lambda i: full.samples[i][0])
        clean = HitCounter()
        consumers: list = [clean]
        recorder = TopKRecorder() if "real" in sets else None
        if recorder is not None:
            consumers.append(recorder)
            labels, labels_from = load_real_labels(args.real_labels or _prepared_real(args.variants), clf.classes)
        position = None
        if perturbations is not None:
            position = PositionRows(model, perturbations, args.seed)
            consumers.append(position)
        predict(lambda x, _: model(x), val, consumers=consumers, **common)
        limited = f", {len(val)} of its {len(full)} images evenly spread" if val is not full else ""
        metrics["clean"] = {**clean.result(), "protocol": f"val split of --imagenet{limited}; {eval_view}"}
        if recorder is not None:
            top5, idx = recorder.collected()
            names = [sample_of(i) for i in idx]
            metrics["sets"]["real"] = {**real_accuracy(top5, names, labels), "labels": labels_from,
                                       "protocol": "ReaL (Beyer et al. 2020): right at k when one of the k best "
                                                   "outputs is among the image's ReaL labels; images without "
                                                   f"ReaL labels left out; {eval_view}"}
        if position is not None:
            metrics["sets"]["position"] = {**position.result(), "grid": model.grid_size[0], "images": len(val),
                                           "seed": args.seed, "view": eval_view}
        metrics["seconds"]["imagenet_val"] = time.time() - t0

    for name in [s for s in sets if s in ("v2", "r", "a", "sketch")]:
        t0 = time.time()
        vs = open_variant(args.variants, name, eval_tf, clf.classes, args.skip_bad)
        counter = HitCounter(vs.mask)
        predict(lambda x, _: model(x), vs.dataset, consumers=[counter], **common)
        scored = (f"argmax over the {len(vs.mask)} outputs of its classes (timm's imagenet_{name}_indices.txt rule)"
                  if vs.mask is not None else "argmax over every output")
        metrics["sets"][name] = {**counter.result(), "classes": len(vs.classes), "folder": str(vs.folder),
                                 "partial": vs.partial, "protocol": f"{VARIANTS[name][0]}: {scored}; {eval_view}"}
        metrics["seconds"][name] = time.time() - t0

    if "c" in sets:
        t0 = time.time()
        c_tf = build_eval_transform(clf.img_size, crop_pct=1.0)
        errors: dict[str, dict[int, float]] = {}
        top1: dict[str, dict[str, float]] = {}
        images = 0
        for corruption, severity, vs in corruption_sets(args.variants, c_tf, clf.classes, args.corruptions, args.skip_bad):
            counter = HitCounter()
            predict(lambda x, _: model(x), vs.dataset, consumers=[counter], **common)
            r = counter.result()
            errors.setdefault(corruption, {})[severity] = 1.0 - r["top1"] / 100.0
            top1.setdefault(corruption, {})[str(severity)] = r["top1"]
            images += r["images"]
        clean_error = 1.0 - metrics["clean"]["top1"] / 100.0 if metrics["clean"] else None
        summary = mce.summarize(errors, clean_error)
        metrics["sets"]["c"] = {
            "top1": top1, "images": images, **summary,
            "mean_top1": 100.0 - summary["mean_error"] if summary["mean_error"] is not None else None,
            "protocol": (f"ImageNet-C layout c/<corruption>/<severity>/; Resize({clf.img_size}) + CenterCrop("
                         f"{clf.img_size}) (crop_pct 1: the images are the benchmark's centre crops); CE(c) = "
                         "sum_s E(c,s) / sum_s E_AlexNet(c,s), mCE = mean CE over the 15 corruptions (percent); "
                         "relative CE(c) = sum_s (E(c,s) - E_clean) / sum_s (E_AlexNet(c,s) - E_AlexNet_clean); "
                         "mean_error: unnormalised mean over every corruption and severity present"),
        }
        metrics["seconds"]["c"] = time.time() - t0
    return metrics


def _prepared_real(variants: Path | None) -> Path | None:
    if variants is None:
        return None
    path = Path(variants) / "real" / REAL_LABELS
    return path if path.is_file() else None


def summary_lines(metrics: dict[str, Any]) -> list[str]:
    """One line per set for the terminal."""
    out = []
    if metrics["clean"]:
        out.append(f"clean val: top1 {metrics['clean']['top1']:.2f} ({metrics['clean']['images']} images)")
    for name, m in metrics["sets"].items():
        if name == "c":
            rel = m["relative_mce"]
            mce_text = (f"mCE {m['mce']:.1f}, relative mCE {'n/a' if rel is None else f'{rel:.1f}'}"
                        if m["mce"] is not None else "mCE needs all 15 corruptions")
            out.append(f"c: mean top1 {m['mean_top1']:.2f} over {len(m['top1'])} corruptions; {mce_text}")
        elif name == "position":
            out.append("position: " + ", ".join(f"{k} {v['top1']:.1f}" for k, v in m["rows"].items()))
        else:
            out.append(f"{name}: top1 {m['top1']:.2f} ({m.get('images', m.get('images_scored'))} images)")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the fine-tuned classifier (best.pth or its run folder)")
    p.add_argument("--sets", type=parse_sets, required=True, help=f"comma separated, of {', '.join(SETS)}")
    p.add_argument("--variants", type=Path, default=None, help="the folder tools.prepare_data wrote the variants to")
    p.add_argument("--imagenet", type=Path, default=None, help="ImageNet-1K root (val/): clean error, real, position")
    p.add_argument("--real-labels", type=Path, default=None, help="ReaL labels (default: VARIANTS/real, else timm's)")
    p.add_argument("--classes", default=None, help="the classifier's classes (text file or class folders)")
    p.add_argument("--corruptions", type=lambda s: [c for c in s.split(",") if c], default=None,
                   help="ImageNet-C corruptions to read (default: every folder present)")
    p.add_argument("--shuffles", type=_shuffles, default=[2, 4, "grid"], help="blocks per side ('grid' = patches)")
    p.add_argument("--drops", type=_floats, default=[0.25, 0.5, 0.75], help="shares of patch tokens removed")
    p.add_argument("--occlusions", type=_floats, default=[0.25, 0.5], help="occluded shares of the image area")
    p.add_argument("--val-images", type=int, default=0, help="images of the val pass, evenly spread (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="draws the shuffles, drop sets and occluder places")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--skip-bad", action="store_true", help="drop unreadable images instead of stopping")
    p.add_argument("--output", type=Path, default=None, help="default: robustness/ beside the checkpoint's folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> None:
        if args.batch_size < 1 or args.workers < 0 or args.val_images < 0:
            raise ConfigError("--batch-size must be >= 1, --workers and --val-images >= 0")
        check_request(args)
        out = output_folder(args)
        metrics = evaluate(args)
        path = atomic_write_json(out / METRICS_FILE, metrics)
        print("\n".join(summary_lines(metrics)))
        print(f"[robustness] wrote {path}", flush=True)

    return run_guarded(run, known=(VariantError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
