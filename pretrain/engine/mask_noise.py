"""Masks as a function of (seed, epoch, sample index): the same whatever the world size, workers or restarts.

MAE and DropPos mask an image by drawing uniform noise per patch and keeping the
patches with the smallest values (``pretrain.models.masking.keep_from_noise``). Drawn
from one generator per process, a sample's mask depends on the rank and on its
position in the batch: a 2 x b run and a 1 x 2b run see different masks, and a
resumed run has to restore the generator. Here the data pipeline draws each
sample's noise from a generator seeded by (seed, epoch, index) and appends it to
the sample; the method turns it into masks (``PretrainMethod.masks_from_noise``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mask_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's masks, unrelated to its augmentation seed."""
    x = _splitmix64(int(seed) ^ 0x6D61736B)  # "mask"
    x = _splitmix64(x ^ int(epoch))
    x = _splitmix64(x ^ int(index))
    return x & ((1 << 63) - 1)


class MaskNoiseDataset(Dataset):
    """Append per-sample mask noise to each sample: ``(*sample, noise_1, ..., noise_k)``.

    Args:
        dataset: takes ResumableSampler keys ``(index, epoch)`` (e.g. a SeededDataset).
        seed: run seed.
        lengths: one noise vector per entry, e.g. (num_patches,) for MAE or
            (num_patches, num_visible) for DropPos (patch mask, position mask).
        copies: noise rows per sample (crops per image); each noise is [copies, length].
    """

    def __init__(self, dataset: Dataset, seed: int, lengths: Sequence[int], copies: int = 1) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.lengths = tuple(int(n) for n in lengths)
        self.copies = int(copies)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.dataset[key]
        g = torch.Generator().manual_seed(mask_seed(self.seed, epoch, index))
        noise = tuple(torch.rand(self.copies, n, generator=g) for n in self.lengths)
        return (*sample, *noise)

    def __getattr__(self, name):  # expose classes, num_skipped ... of the wrapped dataset
        if name == "dataset" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

