"""Benchmark ImageNet preparation: images per second extracted and written, per core.

    python -m tools.benchmark_prepare [--classes 24] [--per-class 130] [--workers 1 2] [--validate]

Builds a synthetic ``ILSVRC2012_img_train.tar`` in the official nested layout (one
``nXXXXXXXX.tar`` per class) with ImageNet-sized JPEGs (500 x 375, noise-textured to
about ImageNet's 110 KB per file; a pool of distinct images reused), then times
``tools.prepare_data imagenet`` on it (``--no-verify --skip-validate``: the extraction and
writing alone) for each ``--workers`` count, each into a fresh target. It prints images/s,
MB/s, images/s per core, the md5 rate (the ``--verify`` pass over the archive), with
``--validate`` the decode rate of ``pretrain.data.validate`` per core, and projects the full
ImageNet train tar (1,281,167 images) on 8 cores from the per-core rates.

The archive is freshly written, so it is read from the page cache: the figures are the
CPU and write cost (the timing ends after ``os.sync()``: the files are on disk). On a real disk the full tar is read once (about 140 GB at ImageNet's
file sizes), so the projection is a lower bound when the disk delivers less than
(projected images/s x 110 KB) per second.
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

FULL_TRAIN = 1_281_167


def imagenet_like_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct 500 x 375 JPEGs of about 110 KB (smooth colour field + pixel noise, quality 90)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    for _ in range(count):
        base = np.stack([128 + 90 * np.sin(xx / rng.uniform(20, 90) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(20, 90))
                         for _ in range(3)], -1)
        img = np.clip(base + rng.normal(0, 22, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def build_train_tar(path: Path, classes: int, per_class: int, pool: list[bytes]) -> tuple[int, int]:
    """The nested train tar; returns (images, bytes of image data)."""
    from tools.prepare.imagenet_labels import imagenet_wnids

    wnids = imagenet_wnids()[:classes]
    total = 0
    with tarfile.open(path, "w") as outer:
        for k, wnid in enumerate(wnids):
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tf:
                for i in range(per_class):
                    data = pool[(k * per_class + i) % len(pool)]
                    info = tarfile.TarInfo(f"{wnid}_{i}.JPEG")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
                    total += len(data)
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = inner.tell()
            inner.seek(0)
            outer.addfile(info, inner)
    return classes * per_class, total


def time_prepare(archive: Path, target: Path, workers: int) -> float:
    """Wall seconds of ``tools.prepare_data imagenet`` (extraction + writing) into a fresh ``target``."""
    from tools.prepare.context import Context
    from tools.prepare.imagenet import prepare_imagenet

    shutil.rmtree(target, ignore_errors=True)
    ctx = Context("imagenet", [f"train={archive}"], target, verify=False, allow_partial=True, workers=workers,
                  progress=False, validate=False, log=lambda line: None)
    start = time.perf_counter()
    prepare_imagenet(ctx)
    os.sync()  # the files are on disk, not only in the page cache
    return time.perf_counter() - start


def time_validate(split: Path, workers: int) -> float:
    import pretrain.data.validate  # noqa: F401  (torch is imported before the clock starts, and forked)
    from tools.prepare.extract import Workers
    from tools.prepare.validation import validate_classes

    with Workers(workers) as pool:
        start = time.perf_counter()
        validate_classes(split, pool, None, progress=False)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("python -m tools.benchmark_prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=24)
    p.add_argument("--per-class", type=int, default=130, help="ImageNet has 732-1300 per class")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pool", type=int, default=48, help="distinct JPEGs reused through the archive")
    p.add_argument("--validate", action="store_true", help="also time pretrain.data.validate's decode")
    p.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed)")
    args = p.parse_args(argv)
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="bench_prepare_"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        archive = scratch / "ILSVRC2012_img_train.tar"
        images, nbytes = build_train_tar(archive, args.classes, args.per_class, imagenet_like_jpegs(args.pool))
        print(f"archive: {images} images in {args.classes} classes, {nbytes / images / 1e3:.0f} KB per image, "
              f"{archive.stat().st_size / 1e6:.0f} MB (built in {time.perf_counter() - t0:.1f} s)")
        from tools.prepare.checksums import file_digest

        t0 = time.perf_counter()
        file_digest(archive, "md5")
        md5_rate = archive.stat().st_size / (time.perf_counter() - t0)
        print(f"md5 (the --verify pass): {md5_rate / 1e6:.0f} MB/s, one core; the full train tar "
              f"(~{FULL_TRAIN * nbytes / images / 1e9:.0f} GB at these sizes) in {FULL_TRAIN * nbytes / images / md5_rate / 60:.1f} min")
        per_core = {}
        print(f"{'workers':>7s} {'wall s':>8s} {'images/s':>9s} {'MB/s':>7s} {'img/s/core':>10s} {'full tar, 8 cores':>18s}")
        for w in args.workers:
            seconds = time_prepare(archive, scratch / f"out{w}", w)
            rate = images / seconds
            per_core[w] = rate / w
            full = FULL_TRAIN / (8 * per_core[w]) / 60
            print(f"{w:7d} {seconds:8.2f} {rate:9.0f} {nbytes / seconds / 1e6:7.0f} {per_core[w]:10.0f} {full:15.1f} min")
        if args.validate:
            split = scratch / f"out{args.workers[0]}" / "train"
            for w in args.workers:
                seconds = time_validate(split, w)
                rate = images / seconds / w
                print(f"validate (decode every image), {w} worker(s): {images / seconds:.0f} images/s, "
                      f"{rate:.0f} per core; full train on 8 cores: {FULL_TRAIN / (8 * rate) / 60:.1f} min")
        best = max(per_core.values())
        print(f"projection: the full ImageNet train tar ({FULL_TRAIN:,} images) extracts in "
              f"{FULL_TRAIN / (8 * best) / 60:.1f} min on 8 cores at {best:.0f} images/s per core "
              "(archive read from the page cache, files synced to disk; a slower disk caps it)")
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
