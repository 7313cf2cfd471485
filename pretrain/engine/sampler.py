"""Data order that survives a restart: a resumable sampler and per-sample seeded augmentation.

The sampler yields ``(index, epoch)`` pairs; ``SeededDataset`` seeds the random
transforms from (seed, epoch, index) so an image gets the same crop whether
the run was interrupted or not, whichever worker loads it.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """DistributedSampler (works with one process too) that can start mid-epoch.

    ``set_epoch(e)`` fixes the permutation; ``set_start(k)`` skips this rank's first
    ``k`` samples (the ones a resumed run already trained on).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0, drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        for i in indices[self.start:]:
            yield (i, self.epoch)

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededDataset(Dataset):
    """Wrap a dataset so each sample's random augmentation is a function of (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sample_seed = (self.seed * 1_000_003 + epoch) * 1_000_003 + index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed % (2**63 - 1))
            return self.dataset[index]

    def __getattr__(self, name):  # expose classes, samples, skipped ... of the wrapped dataset
        if name == "dataset" or name.startswith("__"):  # never forward __getitems__ & co.
            raise AttributeError(name)
        return getattr(self.dataset, name)
