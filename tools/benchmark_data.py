"""Input-pipeline benchmark: decoded + augmented images/s per worker, ours vs torchvision / timm.

Pipelines, measured side by side on the same JPEG folder (alternating in rounds so a
change in machine load hits all of them alike):

- ``pretrain/ours``: the suite's pretraining input (``ImageFolderDataset`` +
  ``build_pretrain_transform``: header-sized crop box, reduced JPEG decode, uint8
  antialiased bicubic resize, flip; uint8 batches, normalised in one fused pass by the
  consumer, as the training step does on the device);
- ``pretrain/torchvision``: ``torchvision.datasets.ImageFolder`` + RandomResizedCrop(224,
  scale (0.2, 1), bicubic) + RandomHorizontalFlip + ToTensor + Normalize (PIL);
- ``finetune/ours``: the suite's fine-tuning input (``ImageFolderDataset`` +
  ``classification.transforms.FinetuneTransform``: header-sized crop box, torchvision.io
  decode, uint8 antialiased bicubic resize, flip, timm's RandAugment rand-m9-mstd0.5-inc1
  on the 224 px crop with its geometric ops on OpenCV; uint8 batches, then fused
  normalise + timm's random erasing 0.25 on the batch by the consumer, as the training
  step does on the device);
- ``finetune/torchvision``: ``torchvision.datasets.ImageFolder`` + timm's
  ``create_transform`` with the same recipe, all on PIL images.

Each result has images/s over all workers and per worker, and the per-channel mean / std
of the normalised outputs with the standard error of the mean (the two implementations of
a recipe must agree within a few standard errors).

    python -m tools.benchmark_data --data data/builtin/imagenet --workers 1 --seconds 10
    python -m tools.benchmark_data --data data/builtin/imagenet --make-large 500 --workers 1 --seconds 10
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from pretrain.atomic import atomic_write_json
from tools.bench_cli import run_benchmark_cli
from tools.benchmark_table import pipeline_cells, torchvision_speeds

PIPELINES = ("pretrain/ours", "pretrain/torchvision", "finetune/ours", "finetune/torchvision")


# --------------------------------------------------------------------------- data
def make_large_jpegs(src_root: Path, dst_root: Path, count: int, size: tuple[int, int] = (500, 375),
                     quality: int = 90, noise: float = 25.0, seed: int = 0, split: str = "train") -> Path:
    """An ImageFolder of ``count`` ImageNet-sized JPEGs (``size`` = (width, height)) made from ``src_root``.

    Each source image is upscaled (bicubic) and given Gaussian pixel noise (sigma ``noise``)
    so the files carry as many bytes as ImageNet's training JPEGs (about 110 KB on average;
    sigma 25 at quality 90 gives about 106 KB): entropy decoding, which both pipelines pay
    in full, costs what it costs on ImageNet, not less as it would on smooth content.
    Idempotent: a folder written with the same arguments (``large_jpegs.json``) is reused;
    otherwise the ``large_*.JPEG`` files this function wrote are replaced (nothing else in
    ``dst_root`` is touched).
    """
    if noise < 0:
        raise ValueError(f"--large-noise must be >= 0, got {noise}")
    src = Path(src_root) / split
    dst = Path(dst_root) / split
    manifest = Path(dst_root) / "large_jpegs.json"
    params = {"src": str(Path(src_root).resolve()), "count": count, "size": list(size), "quality": quality,
              "noise": noise, "seed": seed, "split": split}
    existing = sorted(dst.glob("*/large_*.JPEG")) if dst.is_dir() else []
    try:
        written_with = json.loads(manifest.read_text())
    except (OSError, ValueError):  # missing or unreadable: write the folder again
        written_with = None
    if written_with == params and len(existing) == count:
        return Path(dst_root)
    files = sorted(src.glob("*/*"))
    if not files:
        raise FileNotFoundError(f"no images found under {src}")
    for f in existing:  # written by this function with other arguments
        f.unlink()
    rng = np.random.default_rng(seed)
    for i in range(count):
        f = files[i % len(files)]
        img = Image.open(f).convert("RGB").resize(size, Image.BICUBIC)
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, noise, size=(size[1], size[0], 3))
        out = dst / f.parent.name / f"large_{i:06d}.JPEG"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out, quality=quality)
    atomic_write_json(manifest, params)
    return Path(dst_root)


def folder_stats(root: Path, split: str = "train") -> dict[str, Any]:
    files = sorted((Path(root) / split).glob("*/*"))
    sizes = [f.stat().st_size for f in files]
    with Image.open(files[0]) as im:
        w, h = im.size
    return {"images": len(files), "mean_kb": float(np.mean(sizes)) / 1024, "first_size_wh": [w, h]}


# --------------------------------------------------------------------------- pipelines
def build_dataset(name: str, root: Path, split: str, size: int) -> tuple[torch.utils.data.Dataset, Callable | None]:
    """One of ``PIPELINES`` over ``root/split``, and the step that finishes its batches.

    The suite's pipelines deliver uint8 crops, as in training; their finishing step
    (normalisation, and for fine-tuning timm's random erasing) runs on the device in
    training and on the measuring process here, inside the timed loop.
    """
    from torchvision import datasets
    from torchvision import transforms as T

    from pretrain.data.imagefolder import ImageFolderDataset
    from pretrain.data.transforms import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Uint8Normalize,
                                          build_pretrain_transform)

    if name == "pretrain/ours":
        return ImageFolderDataset(root, split, build_pretrain_transform(size, scale=(0.2, 1.0), normalize=False)), \
            Uint8Normalize()
    if name == "pretrain/torchvision":
        tf = T.Compose([
            T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ])
        return datasets.ImageFolder(str(Path(root) / split), transform=tf), None
    if name.startswith("finetune/"):
        from classification.transforms import FinetuneTransform, timm_train_transform

        recipe = dict(scale=(0.08, 1.0), hflip=0.5, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25,
                      re_mode="pixel", re_count=1, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
        if name == "finetune/ours":
            tf = FinetuneTransform(size, normalize=False, **recipe)
            return ImageFolderDataset(root, split, tf), tf.device_finish("cpu")
        return datasets.ImageFolder(str(Path(root) / split), transform=timm_train_transform(size, **recipe)), None
    raise ValueError(f"unknown pipeline {name!r}; choose from {PIPELINES}")


class _Stats:
    """Per-channel mean / std of normalised outputs (float64 sums), and the standard error of
    the mean from the spread of per-image means (samples are independent draws)."""

    def __init__(self) -> None:
        self.n, self.s, self.s2 = 0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
        self.images, self.m, self.m2 = 0, torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        x = x.double().transpose(0, 1).reshape(3, x.shape[0], -1)  # [3, B, pixels]
        self.n += x.shape[1] * x.shape[2]
        self.s += x.sum((1, 2))
        self.s2 += x.square().sum((1, 2))
        per_image = x.mean(2)  # [3, B]
        self.images += per_image.shape[1]
        self.m += per_image.sum(1)
        self.m2 += per_image.square().sum(1)

    def result(self) -> tuple[list[float], list[float], list[float]]:
        mean = self.s / max(self.n, 1)
        std = (self.s2 / max(self.n, 1) - mean.square()).clamp_min(0).sqrt()
        k = max(self.images, 2)
        var_images = ((self.m2 - self.m.square() / k) / (k - 1)).clamp_min(0)
        return mean.tolist(), std.tolist(), (var_images / k).sqrt().tolist()


def make_loader(ds, workers: int, batch: int, seed: int) -> torch.utils.data.DataLoader:
    """The training DataLoader setup (persistent workers, prefetch 4), endless shuffled order."""
    g = torch.Generator().manual_seed(seed)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10 ** 8, generator=g)
    from classification.opencv_geometry import one_opencv_thread

    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                       persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
                                       drop_last=True, worker_init_fn=one_opencv_thread)


def measure(it, seconds: float, stats: _Stats, finish: Callable | None = None,
            in_process: bool = False) -> tuple[int, float]:
    """Images drawn (and finished) from ``it`` in about ``seconds`` of timed work.

    With workers the wall time counts (the output statistics are gathered while the
    workers keep producing); in process (``workers=0``) the statistics are the
    benchmark's own instrumentation and their time is left out.
    """
    n, timed, t0 = 0, 0.0, time.perf_counter()
    while timed < seconds:
        t = time.perf_counter()
        x, _ = next(it)
        if finish is not None:
            x = finish(x)
        if in_process:
            timed += time.perf_counter() - t
            stats.update(x)
        else:
            stats.update(x)
            timed = time.perf_counter() - t0
        n += x.shape[0]
    return n, timed


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.data)
    if args.make_large:
        root = make_large_jpegs(root, Path(args.large_dir), args.make_large, noise=args.large_noise)
    torch.manual_seed(args.seed)
    if args.workers == 0:  # in process: one core, as a DataLoader worker has (torch uses 1 thread there)
        from classification.opencv_geometry import one_opencv_thread

        torch.set_num_threads(1)
        one_opencv_thread()
    names = args.pipelines or list(PIPELINES)
    loaders, iters, stats, counts, secs, finishers = {}, {}, {}, {}, {}, {}
    for name in names:
        dataset, finishers[name] = build_dataset(name, root, args.split, args.size)
        loaders[name] = make_loader(dataset, args.workers, args.batch, args.seed)
        iters[name] = iter(loaders[name])
        stats[name] = _Stats()
        counts[name], secs[name] = 0, 0.0
        for _ in range(args.warmup_batches):  # start workers, fill caches
            next(iters[name])
    per_round = args.seconds / args.rounds
    for r in range(args.rounds):  # alternate the order every round
        for name in (names if r % 2 == 0 else names[::-1]):
            n, dt = measure(iters[name], per_round, stats[name], finishers[name], args.workers == 0)
            counts[name] += n
            secs[name] += dt
    results = []
    for name in names:
        ips = counts[name] / secs[name]
        mean, std, mean_se = stats[name].result()
        results.append({"pipeline": name, "images": counts[name], "seconds": secs[name], "images_per_s": ips,
                        "images_per_s_per_worker": ips / max(args.workers, 1), "mean": mean, "mean_se": mean_se,
                        "std": std})
        del iters[name]
    return {
        "data": str(root),
        "folder": folder_stats(root, args.split),
        "workers": args.workers,
        "batch": args.batch,
        "size": args.size,
        "seconds_per_pipeline": args.seconds,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_avg_1m_end": os.getloadavg()[0],
        "results": results,
        "command": "python -m tools.benchmark_data " + " ".join(args.argv),
    }


def print_report(rep: dict[str, Any]) -> None:
    from tabulate import tabulate

    f = rep["folder"]
    print(f"data: {rep['data']} ({f['images']} images, {f['first_size_wh'][0]}x{f['first_size_wh'][1]}, "
          f"{f['mean_kb']:.1f} KB mean), workers={rep['workers']}, batch={rep['batch']}, "
          f"{rep['seconds_per_pipeline']} s per pipeline in {rep['rounds']} rounds, load avg {rep['load_avg_1m_end']:.2f}")
    speeds = torchvision_speeds(rep)
    rows = [[r["pipeline"], *pipeline_cells(r, speeds)] for r in rep["results"]]
    print(tabulate(rows, headers=("pipeline", "images/s", "per worker", "vs torchvision", "mean (R G B)",
                                  "s.e. of mean", "std (R G B)"), tablefmt="github"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("Input pipeline benchmark")
    p.add_argument("--data", default="data/builtin/imagenet", help="ImageFolder root (holds <split>/<class>/*)")
    p.add_argument("--split", default="train")
    p.add_argument("--workers", type=int, default=1,
                   help="DataLoader workers (0: in this process on one torch thread, the per-core figure)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per pipeline")
    p.add_argument("--rounds", type=int, default=2, help="alternate pipelines in this many rounds")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224, help="output crop size")
    p.add_argument("--warmup-batches", type=int, default=2)
    p.add_argument("--pipelines", nargs="*", choices=PIPELINES, default=None)
    p.add_argument("--make-large", type=int, default=0,
                   help="first write N ImageNet-sized (500x375) JPEGs from --data and measure on them")
    p.add_argument("--large-dir", default="data/bench/imagenet_large")
    p.add_argument("--large-noise", type=float, default=25.0,
                   help="pixel noise sigma of the --make-large JPEGs (25: about ImageNet's 110 KB per file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_benchmark_cli(get_args_parser(), run, print_report, argv)


if __name__ == "__main__":
    sys.exit(main())
