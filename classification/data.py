"""Datasets, transforms and loaders of the classification runs.

Training images go through timm's recipe (RandomResizedCrop bicubic, flip,
RandAugment, RandomErasing: the MAE / DeiT recipe), by default with the suite's
fast crop and normalisation around timm's RandAugment (``classification.transforms``,
``aug.pipeline: fast``; ``timm`` runs ``create_transform`` as is), evaluation through the
suite's Resize(size / crop_pct) + CenterCrop (``build_eval_transform``). Sample
augmentation is seeded per (seed, epoch, index) for torch, Python's ``random`` and
numpy alike (timm's augmentations draw from all three), and loaders draw their own
worker seeds from a private generator, so a resumed run sees the same images and
the same random numbers as an uninterrupted one.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset, Sampler

from classification.opencv_geometry import one_opencv_thread
from pretrain.data.imagefolder import ImageFolderDataset, drop_missing_collate
from pretrain.data.loader_timeout import worker_timeout
from pretrain.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, build_eval_transform
from pretrain.engine import distributed as du
from pretrain.engine.sampler import ResumableSampler


class FullySeededDataset(Dataset):
    """Each sample's augmentation is a function of (seed, epoch, index), for torch, ``random`` and numpy.

    Takes the ``(index, epoch)`` keys of :class:`ResumableSampler` (or a plain index).
    The global generators are restored afterwards, so the training step's own random
    numbers (mixup, drop path) do not depend on data loading.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sample_seed = ((self.seed * 1_000_003 + epoch) * 1_000_003 + index) % (2**63 - 1)
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            random.seed(sample_seed)
            np.random.seed(sample_seed % (2**32))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class KeyedDataset(Dataset):
    """Accept ResumableSampler's ``(index, epoch)`` keys for a dataset without randomness (cached features)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        return self.dataset[key[0] if isinstance(key, tuple) else key]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: every sample evaluated exactly once over all ranks."""

    def __init__(self, length: int, rank: int = 0, world: int = 1) -> None:
        self.length, self.rank, self.world = int(length), int(rank), int(world)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world))


def ensure_builtin(cfg: DictConfig) -> None:
    """Generate the built-in ImageFolder at ``data.path``'s parent when asked and missing."""
    root = Path(cfg.data.path)
    if cfg.data.builtin and not (root / cfg.data.train_split).is_dir():
        from pretrain.data.synthetic import make_builtin_dataset

        if du.is_main_process():
            make_builtin_dataset(root.parent, formats=("imagefolder",))
        du.barrier()


def build_train_transform(cfg: DictConfig, normalize: bool = True):
    """The training pipeline of the ``aug`` section.

    ``aug.pipeline: fast`` (default) is :class:`classification.transforms.FinetuneTransform`
    (bicubic crops only; ``aug.geometry`` picks OpenCV or PIL for RandAugment's rotate /
    shear / translate); with ``normalize=False`` it returns uint8 crops and its
    ``device_finish`` normalises and erases the batch on the device. ``timm`` is timm's
    ``create_transform`` on PIL images (normalised tensors, whatever ``normalize`` says).
    """
    from classification.transforms import FinetuneTransform, timm_train_transform

    a = cfg.aug
    if a.pipeline not in ("fast", "timm"):
        raise ValueError(f"aug.pipeline must be 'fast' or 'timm', got {a.pipeline!r}")
    if a.pipeline == "fast" and a.interpolation != "bicubic":
        raise ValueError(f"aug.pipeline=fast resizes with bicubic only; got aug.interpolation={a.interpolation!r} "
                         "(use aug.pipeline=timm for other filters)")
    kwargs = dict(scale=tuple(a.scale), hflip=float(a.hflip), auto_augment=a.auto_augment or None,
                  color_jitter=a.color_jitter, re_prob=float(a.reprob), re_mode=a.remode, re_count=int(a.recount),
                  mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    if a.pipeline == "fast":
        return FinetuneTransform(int(cfg.model.img_size), normalize=normalize, geometry=a.get("geometry", "opencv"),
                                 **kwargs)
    return timm_train_transform(int(cfg.model.img_size), interpolation=a.interpolation, **kwargs)


def batch_finish(transform, device: torch.device):
    """What the training step applies to a uint8 batch on ``device``: the transform's
    ``device_finish`` (normalise + random erasing), else plain normalisation."""
    from pretrain.data.transforms import Uint8Normalize

    finish = getattr(transform, "device_finish", None)
    return finish(device) if finish is not None else Uint8Normalize()


def evenly_spread_indices(n: int, limit: int) -> list[int]:
    """``limit`` of the indices 0 .. n-1 evenly spread, first and last included (in a class-sorted
    image folder every class keeps its share); all ``n`` when ``limit`` is 0 or not below ``n``.

    The one rule of ``data.limit``, ``classification.robustness --val-images`` and
    ``classification.builtin_corruptions --limit``: they pick the same images."""
    if not limit or limit >= n:
        return list(range(n))
    return torch.linspace(0, n - 1, limit).round().long().tolist()


def image_dataset(cfg: DictConfig, split: str, transform, substitute: bool = True) -> Dataset:
    """ImageFolder split with a transform, limited to ``data.limit`` images when set (evenly spread).

    With ``data.skip_bad`` a bad training image is replaced by the next readable one
    (``substitute``); an evaluation split drops it instead (``substitute=False``), so an
    accuracy is never computed over duplicated images, and reports the smaller n.
    """
    ds = ImageFolderDataset(cfg.data.path, split=split, transform=transform, skip_bad=bool(cfg.data.skip_bad),
                            substitute=substitute)
    limit = int(cfg.data.limit)
    if limit and limit < len(ds):
        sub = torch.utils.data.Subset(ds, evenly_spread_indices(len(ds), limit))  # every class stays present
        sub.classes = ds.classes
        return sub
    return ds


def eval_dataset(cfg: DictConfig, split: str | None = None) -> Dataset:
    """Evaluation split with the reference eval transform (Resize size / crop_pct, CenterCrop, bicubic);
    unreadable images are dropped (with ``data.skip_bad``), never replaced."""
    transform = build_eval_transform(int(cfg.model.img_size), crop_pct=float(cfg.data.crop_pct))
    return image_dataset(cfg, split or cfg.data.val_split, transform, substitute=False)


def train_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    workers: int,
    device: torch.device,
    keyed_only: bool = False,
) -> tuple[DataLoader, ResumableSampler]:
    """Shuffled, resumable, per-sample seeded training loader (drop_last, DDP-sharded)."""
    sampler = ResumableSampler(dataset, num_replicas=du.get_world_size(), rank=du.get_rank(), shuffle=True, seed=seed,
                               drop_last=True)
    wrapped = KeyedDataset(dataset) if keyed_only else FullySeededDataset(dataset, seed=seed)
    loader = DataLoader(
        wrapped,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),  # worker seeds never touch the global generator
        worker_init_fn=one_opencv_thread,
        timeout=worker_timeout(workers),  # a hung worker fails with a message instead of blocking forever
    )
    return loader, sampler


def eval_loader(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> DataLoader:
    """This rank's disjoint share of ``dataset``, in order, no padding; skipped (None) samples left out."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), du.get_rank(), du.get_world_size()),
        collate_fn=drop_missing_collate,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=one_opencv_thread,
        timeout=worker_timeout(workers),
    )


def num_classes_of(dataset: Dataset, configured: int | None) -> int:
    """Classes to predict: the configured number, or the dataset's class folders."""
    found = len(dataset.classes)
    if configured is None:
        return found
    if int(configured) < found:
        raise ValueError(f"model.num_classes={configured} but the dataset has {found} class folders")
    return int(configured)


def split_names(cfg: DictConfig) -> Sequence[str]:
    return cfg.data.train_split, cfg.data.val_split
