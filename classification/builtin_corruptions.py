"""An ImageNet-C-style corrupted copy of the built-in val split, in the layout the real ImageNet-C has.

    python -m classification.builtin_corruptions --data data/builtin/imagenet --to data/builtin/variants \
        [--img-size 64] [--crop-pct 0.875] [--corruptions gaussian_noise,defocus_blur,contrast,jpeg_compression] \
        [--severities 1,3,5] [--limit 100]

As the benchmark was made from the ImageNet val images: each val image's eval view (Resize
img/crop_pct + CenterCrop img, bicubic: what the classifier sees) is corrupted with the
benchmark's own corruption functions (the ``imagecorruptions`` package, the ImageNet-C code as a
library) at each severity and written losslessly (PNG, so no extra JPEG artefacts) as
``TO/c/<corruption>/<severity>/<class>/<name>.png``; ``TO/c/prepared.json`` is written last
(its presence = complete), with the same fields ``tools.prepare_data`` writes for ImageNet-C and
``"dataset": "builtin-c"``. Only such a ``TO/c`` (or an unfinished one of this tool, or an empty
folder) is ever replaced: any other ``TO/c`` (a real ImageNet-C, unknown files) is refused in one line.
The corruptions draw from numpy's global generator: it is seeded per (corruption, severity,
image), so the copy is the same on every machine. A second call with the same arguments and
source writes nothing. ``--limit N`` corrupts N val images, evenly spread (every class keeps its
share; the same images ``classification.robustness --val-images N`` picks).

With the pinned stack (numpy 2.x, scikit-image 0.26) 16 of the package's 19 corruptions run;
``glass_blur`` and ``gaussian_blur`` fail (they pass ``multichannel=`` to
``skimage.filters.gaussian``, removed in scikit-image 0.19) and ``fog`` fails (``np.float_``,
removed in numpy 2.0); those are refused here with that reason. The severities' pixel
parameters are the benchmark's (tuned for 224 px): on the 64 px demo view they are stronger.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pretrain.atomic import atomic_write_json
from pretrain.data.imagefolder import ImageFolderDataset
from pretrain.data.transforms import build_eval_transform
from pretrain.engine.cli import run_guarded

from .data import evenly_spread_indices
from .imagenet_variants import PREPARED
from .mce import BENCHMARK, EXTRA, SEVERITIES

DEMO_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast", "jpeg_compression")
DEMO_SEVERITIES = (1, 3, 5)
BROKEN = {
    "glass_blur": "passes multichannel= to skimage.filters.gaussian (removed in scikit-image 0.19)",
    "gaussian_blur": "passes multichannel= to skimage.filters.gaussian (removed in scikit-image 0.19)",
    "fog": "uses np.float_ (removed in numpy 2.0)",
}
LAYOUT = 1
DATASET = "builtin-c"  # prepared.json's "dataset": only a TO/c saying so is ever replaced
UNFINISHED = ".builtin_corruptions-unfinished"  # in TO/c from the first image until prepared.json is written


def _seed(corruption: str, severity: int, index: int) -> int:
    key = f"{corruption}/{severity}/{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def corrupt_view(view: np.ndarray, corruption: str, severity: int, index: int) -> np.ndarray:
    """One uint8 HWC image corrupted by the benchmark's function, numpy's generator seeded per image."""
    from imagecorruptions import corrupt

    state = np.random.get_state()
    try:
        np.random.seed(_seed(corruption, severity, index))
        return corrupt(view, severity=severity, corruption_name=corruption)
    finally:
        np.random.set_state(state)


def _check(corruptions: Sequence[str], severities: Sequence[int], img_size: int = 64, crop_pct: float = 0.875,
           limit: int = 0) -> None:
    if int(img_size) <= 0:
        raise ValueError(f"--img-size must be a positive number of pixels, got {img_size}")
    if not 0.0 < float(crop_pct) <= 1.0:
        raise ValueError(f"--crop-pct must lie in (0, 1], got {crop_pct}")
    if int(limit) < 0:
        raise ValueError(f"--limit must be >= 0 (0 = every image), got {limit}")
    if not corruptions:
        raise ValueError("--corruptions is empty: name at least one corruption")
    known = set(BENCHMARK) | set(EXTRA)
    for c in corruptions:
        if c in BROKEN:
            raise ValueError(f"corruption {c!r} does not run with the pinned stack: imagecorruptions {BROKEN[c]}")
        if c not in known:
            raise ValueError(f"unknown corruption {c!r}; choose from {', '.join(sorted(known - set(BROKEN)))}")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise ValueError(f"severities must lie in {SEVERITIES[0]}..{SEVERITIES[-1]}, got {list(severities)}")


def parse_severities(text: str) -> list[int]:
    """``--severities``: comma-separated integers in 1..5."""
    try:
        severities = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated integers in {SEVERITIES[0]}..{SEVERITIES[-1]} expected, "
                                         f"got {text!r}") from None
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise argparse.ArgumentTypeError(f"severities must lie in {SEVERITIES[0]}..{SEVERITIES[-1]}, got {text!r}")
    return severities


def _replaceable(out: Path) -> bool:
    """Whether ``out`` (TO/c) is there to be replaced: this tool's own copy (complete or unfinished) or empty.

    Anything else (a real ImageNet-C from ``tools.prepare_data``, unknown files) is refused, naming the folder."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"{out} is not a folder; pick another --to")
    prepared = out / PREPARED
    if prepared.is_file():
        try:
            dataset = json.loads(prepared.read_text()).get("dataset")
        except (ValueError, AttributeError):
            dataset = "unreadable"
        if dataset == DATASET:
            return True
        raise ValueError(f"{out} holds a {dataset!r} copy that classification.builtin_corruptions did not write "
                         f"({PREPARED} says so); refusing to replace it: pick another --to or remove it yourself")
    if (out / UNFINISHED).is_file() or not any(out.iterdir()):
        return True
    raise ValueError(f"{out} holds files but no {PREPARED} of classification.builtin_corruptions; refusing to "
                     "replace it: pick another --to or remove it yourself")


def _source_id(val: ImageFolderDataset) -> str:
    digest = hashlib.sha256()
    for path, target in val.samples:
        p = Path(path)
        digest.update(f"{p.parent.name}/{p.name}:{p.stat().st_size}:{target}\n".encode())
    return digest.hexdigest()


def make_corrupted_copy(
    data: str | Path,
    to: str | Path,
    img_size: int = 64,
    crop_pct: float = 0.875,
    corruptions: Sequence[str] = DEMO_CORRUPTIONS,
    severities: Sequence[int] = DEMO_SEVERITIES,
    split: str = "val",
    limit: int = 0,
) -> Path:
    """Write ``to/c`` from ``data/split``; returns the folder. Idempotent for the same arguments and source."""
    _check(corruptions, severities, img_size, crop_pct, limit)
    val = ImageFolderDataset(Path(data), split, transform=build_eval_transform(img_size, crop_pct, normalize=False))
    out = Path(to) / "c"
    chosen = evenly_spread_indices(len(val), limit)
    params = {"img_size": int(img_size), "crop_pct": float(crop_pct), "corruptions": list(corruptions),
              "severities": [int(s) for s in severities], "source": str(val.root), "source_id": _source_id(val),
              "images": chosen}
    prepared = out / PREPARED
    if _replaceable(out):
        try:
            if json.loads(prepared.read_text()).get("built_from") == params:
                return out
        except (OSError, ValueError, AttributeError):
            pass
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / UNFINISHED).write_text("classification.builtin_corruptions is writing this copy\n")
    counts: dict[str, int] = {}
    t0 = time.time()
    for index in chosen:
        view, target = val[index]
        hwc = view.permute(1, 2, 0).numpy()
        name = Path(val.samples[index][0]).stem + ".png"
        cls = val.classes[target]
        for corruption in corruptions:
            for severity in severities:
                folder = out / corruption / str(severity) / cls
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(corrupt_view(hwc, corruption, severity, index)).save(folder / name)
                key = f"{corruption}/{severity}"
                counts[key] = counts.get(key, 0) + 1
    atomic_write_json(prepared, {
        "dataset": "builtin-c", "layout": LAYOUT, "classes": list(val.classes),
        "imagenet_indices": None,  # not ImageNet classes: no AlexNet normalisation applies
        "corruptions": [c for c in BENCHMARK if c in corruptions], "extra_corruptions": [c for c in EXTRA if c in corruptions],
        "counts": counts, "partial": sorted(severities) != list(SEVERITIES), "built_from": params,
        "sources": [{"path": str(val.root), "images": len(val), "used": len(chosen)}],
        "made_by": "imagecorruptions 1.1.2 (the ImageNet-C corruption code) on the eval view, PNG",
        "seconds": round(time.time() - t0, 1),
    })
    (out / UNFINISHED).unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageFolder root holding the split (the built-in imagenet/)")
    p.add_argument("--to", required=True, help="variants folder; the copy goes to TO/c")
    p.add_argument("--split", default="val")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--crop-pct", type=float, default=0.875)
    p.add_argument("--corruptions", default=",".join(DEMO_CORRUPTIONS))
    p.add_argument("--severities", type=parse_severities, default=list(DEMO_SEVERITIES),
                   help=f"comma separated, in {SEVERITIES[0]}..{SEVERITIES[-1]} (default: "
                        f"{','.join(map(str, DEMO_SEVERITIES))})")
    p.add_argument("--limit", type=int, default=0, help="corrupt this many val images, evenly spread (0 = all)")
    args = p.parse_args(argv)

    def run() -> None:
        t0 = time.time()
        out = make_corrupted_copy(args.data, args.to, args.img_size, args.crop_pct,
                                  [c for c in args.corruptions.split(",") if c], args.severities, args.split, args.limit)
        print(f"[builtin_corruptions] {out} ready ({time.time() - t0:.1f} s)")

    return run_guarded(run, known=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
