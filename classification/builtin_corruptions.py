"""An ImageNet-C-style corrupted copy of the built-in val split, in the layout the real ImageNet-C has.

    python -m classification.builtin_corruptions --data data/builtin/imagenet --to data/builtin/variants \
        [--img-size 64] [--crop-pct 0.875] [--corruptions gaussian_noise,defocus_blur,contrast,jpeg_compression] \
        [--severities 1,3,5] [--limit 100]

As the benchmark was made from the ImageNet val images: each val image's eval view (Resize
img/crop_pct + CenterCrop img, bicubic: what the classifier sees) is corrupted with the
benchmark's own corruption functions (the ``imagecorruptions`` package, the ImageNet-C code as a
library) at each severity and written losslessly (PNG, so no extra JPEG artefacts) as
``TO/c/<corruption>/<severity>/<class>/<name>.png``; ``TO/c/prepared.json`` is written last
(its presence = complete), with the same fields ``tools.prepare_data`` writes for ImageNet-C.
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
import torch
from PIL import Image

from pretrain.atomic import atomic_write_json
from pretrain.data.imagefolder import ImageFolderDataset
from pretrain.data.transforms import build_eval_transform

from .imagenet_variants import PREPARED
from .mce import BENCHMARK, EXTRA

DEMO_CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast", "jpeg_compression")
DEMO_SEVERITIES = (1, 3, 5)
BROKEN = {
    "glass_blur": "passes multichannel= to skimage.filters.gaussian (removed in scikit-image 0.19)",
    "gaussian_blur": "passes multichannel= to skimage.filters.gaussian (removed in scikit-image 0.19)",
    "fog": "uses np.float_ (removed in numpy 2.0)",
}
LAYOUT = 1


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


def _check(corruptions: Sequence[str], severities: Sequence[int]) -> None:
    known = set(BENCHMARK) | set(EXTRA)
    for c in corruptions:
        if c in BROKEN:
            raise ValueError(f"corruption {c!r} does not run with the pinned stack: imagecorruptions {BROKEN[c]}")
        if c not in known:
            raise ValueError(f"unknown corruption {c!r}; choose from {', '.join(sorted(known - set(BROKEN)))}")
    bad = [s for s in severities if s not in (1, 2, 3, 4, 5)]
    if bad or not severities:
        raise ValueError(f"severities must lie in 1..5, got {list(severities)}")


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
    _check(corruptions, severities)
    val = ImageFolderDataset(Path(data), split, transform=build_eval_transform(img_size, crop_pct, normalize=False))
    out = Path(to) / "c"
    chosen = list(range(len(val)))
    if limit and limit < len(val):
        chosen = torch.linspace(0, len(val) - 1, limit).round().long().tolist()
    params = {"img_size": int(img_size), "crop_pct": float(crop_pct), "corruptions": list(corruptions),
              "severities": [int(s) for s in severities], "source": str(val.root), "source_id": _source_id(val),
              "images": chosen}
    prepared = out / PREPARED
    if prepared.is_file():
        try:
            if json.loads(prepared.read_text()).get("built_from") == params:
                return out
        except ValueError:
            pass
    if out.exists():
        shutil.rmtree(out)
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
        "counts": counts, "partial": sorted(severities) != [1, 2, 3, 4, 5], "built_from": params,
        "sources": [{"path": str(val.root), "images": len(val), "used": len(chosen)}],
        "made_by": "imagecorruptions 1.1.2 (the ImageNet-C corruption code) on the eval view, PNG",
        "seconds": round(time.time() - t0, 1),
    })
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ImageFolder root holding the split (the built-in imagenet/)")
    p.add_argument("--to", required=True, help="variants folder; the copy goes to TO/c")
    p.add_argument("--split", default="val")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--crop-pct", type=float, default=0.875)
    p.add_argument("--corruptions", default=",".join(DEMO_CORRUPTIONS))
    p.add_argument("--severities", default=",".join(map(str, DEMO_SEVERITIES)))
    p.add_argument("--limit", type=int, default=0, help="corrupt this many val images, evenly spread (0 = all)")
    args = p.parse_args(argv)
    try:
        severities = [int(s) for s in args.severities.split(",") if s]
        t0 = time.time()
        out = make_corrupted_copy(args.data, args.to, args.img_size, args.crop_pct,
                                  [c for c in args.corruptions.split(",") if c], severities, args.split, args.limit)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[builtin_corruptions] {out} ready ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
