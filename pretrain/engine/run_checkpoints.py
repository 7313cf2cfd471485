"""Atomic training checkpoints and automatic resume with fallback to the last good file."""
from __future__ import annotations

import logging
import os
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
    """Every random generator a step touches (python, numpy, torch CPU and CUDA)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    if not state:
        return
    random.setstate(_as_python_state(state["python"]))
    np.random.set_state(state["numpy"])
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


def load_resume_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a full training checkpoint (our own format, including RNG and optimizer)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"checkpoint file is corrupt or truncated: {path} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "model" not in state or "train_state" not in state:
        # not a resume checkpoint of ours: fall back to the safe reader for a clear message
        load_checkpoint_file(path)
        raise CheckpointError(f"{path} is not a training checkpoint of this suite (no 'train_state')")
    return state
