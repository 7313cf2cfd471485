"""The exact on-disk cache of frozen-encoder features, shared by every frozen-feature protocol.

A frozen encoder in eval mode gives the same features for the same images every time, so
the linear probe, k-NN and the attentive probe (and anything else that encodes a split
once, without augmentation) can share one feature pass per backbone and split. An entry
is found by the SHA-256 of a key that holds everything the features depend on:

- the weights: the checkpoint file's SHA-256 (``none`` for a random initialisation) and
  a digest of the encoder's loaded state (every tensor's name, dtype, shape and bytes:
  this covers a random initialisation's seed, a resized position table, ``model.rel_pos``);
- the architecture and pooling (``vit_<size>_patch<p>_<img>``, ``global_pool``);
- the data: the split folder, every file's relative path, class, size and modification
  time in dataset order (``data.limit`` subsets included), the class list;
- the transform: its type and settings (size, crop_pct, normalisation ...);
- how it was computed: precision, batch size, device type, CPU threads, world size, the
  versions of torch / timm / numpy / Pillow / OpenCV, and the SHA-256 of the suite's source
  files of the encoder, the transform and the image reader.

A changed checkpoint, file, transform or code therefore gives another key and never
reads a stale entry. The whole key is stored inside the entry and compared on reading
(a different key, or an unreadable entry, is recomputed, saying so). Writes are atomic and
one process at a time computes a missing entry (a ``fcntl`` lock per entry), so two stages
that start together make one pass, not two.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from pretrain.data.imagefolder import ImageFolderDataset

KEY_VERSION = 1
ENTRY_SUFFIX = ".features.pt"
_VERSIONED = ("torch", "timm", "numpy", "PIL", "cv2")


class FeatureCacheError(OSError):
    """A cache folder that cannot be used (not a folder, not writable), naming it."""


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_digest(key: dict[str, Any]) -> str:
    """SHA-256 of a key (canonical JSON: sorted keys, no spaces)."""
    return _sha256_bytes(json.dumps(key, sort_keys=True, separators=(",", ":")).encode())


def state_digest(module: nn.Module) -> str:
    """SHA-256 over every tensor of ``module.state_dict()``: name, dtype, shape and bytes, in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def image_folder_of(dataset: Dataset) -> tuple[ImageFolderDataset, list[int]]:
    """The ImageFolderDataset below ``dataset`` (Subsets unwrapped) and the indices it reads, in order."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        indices = [int(dataset.indices[i]) for i in indices]
        dataset = dataset.dataset
    if not isinstance(dataset, ImageFolderDataset):
        raise TypeError(f"the feature cache keys image folders only, got {type(dataset).__name__}")
    return dataset, indices


def data_identity(dataset: Dataset) -> dict[str, Any]:
    """The split folder, its classes and a digest of every file read (relative path, class, size, mtime)."""
    folder, indices = image_folder_of(dataset)
    digest = hashlib.sha256()
    root = Path(folder.root)
    for i in indices:
        path, target = folder.samples[i]
        st = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}|{target}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return {"folder": str(root.resolve()), "classes": list(folder.classes), "images": len(indices),
            "files": digest.hexdigest(), "target_transform": repr(folder.target_transform)}


def transform_identity(dataset: Dataset) -> dict[str, Any]:
    """The eval transform's type and plain settings (numbers, strings, tuples), and its repr."""
    folder, _ = image_folder_of(dataset)
    t = folder.transform
    plain = (bool, int, float, str, type(None))
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(t).items())
                if not k.startswith("_") and (isinstance(v, plain) or
                                              (isinstance(v, tuple) and all(isinstance(x, plain) for x in v)))}
    return {"type": f"{type(t).__module__}.{type(t).__qualname__}", "repr": repr(t), "settings": settings,
            "input_kind": folder.input_kind}


def _source_digest(objects: list[Any]) -> dict[str, str]:
    """SHA-256 of the source file of each object's module that belongs to this repository."""
    root = Path(__file__).resolve().parents[1]
    files: dict[str, str] = {}
    for obj in objects:
        try:
            path = Path(inspect.getsourcefile(obj) or "").resolve()
        except TypeError:
            continue
        if path.is_file() and root in path.parents:
            files[str(path.relative_to(root))] = _sha256_bytes(path.read_bytes())
    return dict(sorted(files.items()))


def code_identity(encoder: nn.Module, dataset: Dataset) -> dict[str, Any]:
    """Library versions and the suite's source files that compute the features (model, transform, reader)."""
    folder, _ = image_folder_of(dataset)
    classes = {type(m) for m in encoder.modules()} | {type(folder.transform), ImageFolderDataset}
    versions = {}
    for name in _VERSIONED:
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None) if module is not None else None
    return {"versions": versions, "sources": _source_digest(sorted(classes, key=lambda c: c.__qualname__))}


def compute_identity(batch_size: int, precision: str, device: torch.device, world: int) -> dict[str, Any]:
    """How the pass runs: numbers can depend on the batch, the precision, the device and the CPU threads."""
    return {"batch_size": int(batch_size), "precision": precision, "device": device.type, "world_size": int(world),
            "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None}


class FeatureCache:
    """A folder of exact feature entries (one file per key); see the module docstring."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise FeatureCacheError(f"feature_cache={self.folder} is not a folder")

    def path(self, key: dict[str, Any]) -> Path:
        """Where the entry of ``key`` lives: ``<folder>/<view>-<sha256 of the key>.features.pt``."""
        return self.folder / f"{key['view']}-{key_digest(key)}{ENTRY_SUFFIX}"

    def read(self, key: dict[str, Any]) -> tuple[dict[str, torch.Tensor] | None, str]:
        """(tensors, '') of the entry of ``key``; (None, why) when there is none or it cannot be used."""
        path = self.path(key)
        if not path.is_file():
            return None, "not cached"
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated by a crash outside the atomic write, disk error ...
            return None, f"unreadable entry {path} ({type(exc).__name__}), recomputed"
        if not isinstance(entry, dict) or entry.get("key_json") != json.dumps(key, sort_keys=True):
            return None, f"entry {path} holds another key, recomputed"
        return {"features": entry["features"], "labels": entry["labels"]}, ""

    def write(self, key: dict[str, Any], features: torch.Tensor, labels: torch.Tensor) -> Path:
        """Store an entry atomically (a reader sees no entry or the whole of it)."""
        from pretrain.weights import CheckpointError, atomic_torch_save

        path = self.path(key)
        try:
            atomic_torch_save({"key_json": json.dumps(key, sort_keys=True), "features": features.contiguous(),
                               "labels": labels}, path)
        except (CheckpointError, OSError) as exc:
            raise FeatureCacheError(f"feature_cache: could not write {path}: {exc}") from None
        return path

    @contextlib.contextmanager
    def lock(self, key: dict[str, Any]) -> Iterator[None]:
        """Hold the entry's lock file (``fcntl.flock``): one process computes a missing entry at a time."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.path(key).with_suffix(".lock"), "a")
        except OSError as exc:
            raise FeatureCacheError(f"feature_cache={self.folder} cannot be used: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
