"""The labelled images of a low-shot protocol, and the held-out part of them that picks the regularisation.

A subset is named either

- ``per_class:N``: N train images of every class, drawn with ``subset_seed`` (the same draw for
  every backbone and every transfer seed, like a fixed subset file), or
- a list file (relative to the data root, or absolute), one image per line as ``<class>/<file>``
  relative to the train split (the ImageNet 1 % / 10 % lists ``python -m tools.prepare_data
  imagenet-lowshot`` writes to ``IMAGENET/lowshot/``), ``<split>/<class>/<file>``, or SimCLR's bare
  ``<wnid>_<n>.JPEG`` (the class is the name's prefix).

Every class must keep at least one image (a class without any is an error naming it). The
regularisation is chosen on a held-out part of the subset itself, never on val: of each
class with n >= 2 images, max(1, round(holdout * n)) (at most n - 1) are held out; a class with
a single image stays entirely in the fit part. With one image per class nothing can be held out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch


class LowShotError(ValueError):
    """A low-shot subset that cannot be used (one line naming the subset and what is wrong)."""


@dataclass
class Subset:
    """Which train images (dataset indices) a low-shot protocol labels, and where the list came from."""

    name: str
    key: str
    indices: list[int]
    source: str


def subset_key(spec: str) -> str:
    """A name for metrics and tables: ``per_class:1`` -> ``per_class_1``, ``lowshot/1percent.txt`` -> ``1percent``."""
    if spec.startswith("per_class:"):
        return f"per_class_{spec.split(':', 1)[1]}"
    return Path(spec).stem


def per_class(targets: Sequence[int], classes: Sequence[str], n: int, seed: int) -> list[int]:
    """``n`` indices of every class, drawn without replacement from a generator seeded by ``seed``."""
    if n < 1:
        raise LowShotError(f"per_class:{n}: the number of images per class must be >= 1")
    by_class: dict[int, list[int]] = {c: [] for c in range(len(classes))}
    for i, t in enumerate(targets):
        by_class[int(t)].append(i)
    g = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c, items in by_class.items():
        if len(items) < n:
            raise LowShotError(f"per_class:{n}: class {classes[c]!r} has only {len(items)} train images")
        order = torch.randperm(len(items), generator=g).tolist()
        chosen += sorted(items[j] for j in order[:n])
    return sorted(chosen)


def from_list(path: Path, samples: Sequence[tuple[str, int]], split_dir: Path) -> list[int]:
    """Dataset indices of the files a list names (lines as in the module doc, relative to ``split_dir``)."""
    if not path.is_file():
        raise LowShotError(f"low-shot list not found: {path} (python -m tools.prepare_data imagenet-lowshot "
                           "writes IMAGENET/lowshot/{1percent,10percent}.txt)")
    where = {os.path.relpath(p, split_dir).replace(os.sep, "/"): i for i, (p, _) in enumerate(samples)}
    out, unknown = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if "/" not in name:  # SimCLR's lists: n01440764_10026.JPEG
            name = f"{name.split('_', 1)[0]}/{name}"
        elif name.startswith(f"{split_dir.name}/") and name not in where:
            name = name[len(split_dir.name) + 1:]
        if name not in where:
            unknown.append(f"line {n}: {line.strip()}")
            continue
        out.append(where[name])
    if unknown:
        raise LowShotError(f"{path}: {len(unknown)} listed images are not in {split_dir} (first: {unknown[0]})")
    return sorted(set(out))


def resolve(spec: str, samples: Sequence[tuple[str, int]], classes: Sequence[str], root: Path, seed: int,
            split: str = "train") -> Subset:
    """The subset a spec names (lists relative to ``root``, their lines to ``root/split``); every class needs an image."""
    if spec.startswith("per_class:"):
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise LowShotError(f"{spec!r}: expected per_class:N with an integer N") from None
        indices, source = per_class([t for _, t in samples], classes, n, seed), f"drawn with subset_seed {seed}"
    else:
        path = Path(spec) if Path(spec).is_absolute() else root / spec
        indices, source = from_list(path, samples, root / split), str(path)
    present = {samples[i][1] for i in indices}
    empty = [classes[c] for c in range(len(classes)) if c not in present]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise LowShotError(f"low-shot subset {spec}: class {empty[0]!r}{more} has no image; every class needs one")
    return Subset(spec, subset_key(spec), indices, source)


def holdout_mask(labels: Sequence[int], holdout: float, seed: int) -> torch.Tensor:
    """[N] bool, True = held out to pick the regularisation (per class, see the module doc)."""
    if not 0.0 < holdout < 1.0:
        raise LowShotError(f"lowshot.holdout must lie in (0, 1), got {holdout}")
    labels = torch.as_tensor(list(labels))
    mask = torch.zeros(len(labels), dtype=torch.bool)
    g = torch.Generator().manual_seed(int(seed) + 1)
    for c in labels.unique().tolist():
        items = (labels == c).nonzero().flatten()
        n = len(items)
        if n < 2:
            continue
        k = min(n - 1, max(1, int(round(holdout * n))))
        mask[items[torch.randperm(n, generator=g)[:k]]] = True
    return mask
