"""Atomic training checkpoints and automatic resume with fallback to the last good file."""
from __future__ import annotations

import logging
import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import TEMP_NAME
from ..weights import CheckpointError, atomic_torch_save, load_checkpoint_file

log = logging.getLogger(__name__)
_NAME = re.compile(r"^checkpoint-(\d+)\.pth$")


def rng_state() -> dict[str, Any]:
    """Every random generator a step touches (python, numpy, torch CPU and CUDA).

    Stored as tensors, numbers and tuples only (numpy's key as a tensor), so that a
    checkpoint loads with ``torch.load(weights_only=True)``: no pickled object runs.
    """
    kind, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if not state:
        return
    random.setstate(_as_python_state(state["python"]))
    kind, key, *rest = state["numpy"]
    key = key.numpy() if isinstance(key, torch.Tensor) else np.asarray(key)
    np.random.set_state((kind, key.astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(s: Any) -> tuple:
    # tuples may come back as lists after a round trip; random.setstate wants tuples
    return tuple(tuple(x) if isinstance(x, list) else x for x in s)


class CheckpointManager:
    """Numbered checkpoints ``checkpoint-<step>.pth`` in ``directory``, newest kept.

    Writes are atomic (temp file + fsync + rename), so a crash mid-write leaves the
    previous checkpoints intact. ``load_latest`` skips unreadable files with a
    message naming them and returns the newest good one; skipped files can be moved
    aside (``<name>.corrupt``) so they never count as the newest again. Pruning only
    removes files older than the one just written, never the new one.
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)

    def path_for(self, step: int) -> Path:
        return self.directory / f"checkpoint-{step:08d}.pth"

    @staticmethod
    def step_of(path: Path) -> int:
        m = _NAME.match(path.name)
        return int(m.group(1)) if m else -1

    def list(self) -> list[Path]:
        """Checkpoints newest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = self.path_for(step)
        atomic_torch_save(state, path)
        older = [p for p in self.list() if self.step_of(p) < step]
        for old in older[self.keep - 1:]:
            try:
                old.unlink()
            except OSError:
                pass
        return path

    def load_latest(
        self, map_location: str | torch.device = "cpu", quarantine: bool = False
    ) -> tuple[dict[str, Any] | None, Path | None]:
        """The newest readable checkpoint and its path, or (None, None).

        ``quarantine``: rename unreadable ones to ``<name>.corrupt`` (main process only).
        """
        for path in self.list():
            try:
                return load_resume_file(path, map_location), path
            except CheckpointError as exc:
                log.error("skipping unusable checkpoint %s: %s", path, exc)
                print(f"[resume] skipping unusable checkpoint {path}: {exc}", flush=True)
                if quarantine:
                    self._move_aside(path, ".corrupt")
        return None, None

    def discard_newer(self, step: int) -> list[Path]:
        """Rename checkpoints past ``step`` to ``<name>.discarded`` (a run restarted from an
        earlier point would otherwise resume from, or prune against, another timeline)."""
        moved = [self._move_aside(p, ".discarded") for p in self.list() if self.step_of(p) > step]
        return [p for p in moved if p is not None]

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete temporary files a killed writer left behind (``.<name>.tmp<pid>``)."""
        removed = []
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                if TEMP_NAME.match(p.name):
                    try:
                        p.unlink()
                        removed.append(p)
                    except OSError:
                        pass
        return removed

    def _move_aside(self, path: Path, suffix: str) -> Path | None:
        target = path.with_name(path.name + suffix)
        try:
            os.replace(path, target)
        except OSError:
            return None
        print(f"[resume] moved {path.name} aside to {target.name}", flush=True)
        return target


# What older checkpoints of this suite pickled beside tensors: numpy's RNG key (an ndarray).
# Rebuilding an array from its dtype and bytes runs no code, so these are allowed, nothing else.
_NUMPY_ARRAY_GLOBALS = [np.ndarray, np.dtype, np.dtypes.UInt32DType, np.dtypes.Int64DType,
                        getattr(np, "_core", np.core).multiarray._reconstruct]


def peek_resume_file(path: str | os.PathLike) -> dict[str, Any] | None:
    """A training checkpoint's entries without reading its tensors (memory-mapped, weights-only), or
    None when it is not a readable checkpoint of ours: what a run checks before it resumes one."""
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an old (non-zip) file: read it whole; a bad one: not resumable
        try:
            state = load_resume_file(path)
        except CheckpointError:
            return None
    return state if isinstance(state, dict) and "train_state" in state else None


def load_resume_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a full training checkpoint (our own format, including RNG and optimizer).

    Weights-only unpickling: tensors, numbers, strings and containers (plus numpy arrays
    for checkpoints written before the RNG states were tensors). A file that pickles
    anything else (a class, a callable) is refused without running it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"checkpoint file is corrupt or truncated: {path} (UnpicklingError: {exc})") from exc
        try:
            unsafe = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) or "unknown objects"
        except Exception:  # noqa: BLE001 - only used to name what was refused
            unsafe = "unknown objects"
        raise CheckpointError(f"refusing to resume from {path}: it pickles objects that are not training state "
                              f"({unsafe}); loading them could run code") from exc
    except Exception as exc:
        raise CheckpointError(f"checkpoint file is corrupt or truncated: {path} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state or "train_state" not in state:
        # not a resume checkpoint of ours: fall back to the safe reader for a clear message
        load_checkpoint_file(path)
        raise CheckpointError(f"{path} is not a training checkpoint of this suite (no 'train_state')")
    return state
