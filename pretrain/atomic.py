"""Atomic file writes: a crash never leaves a half-written file where a reader looks.

Every writer in the suite (checkpoints, metrics JSON, configs, logs, manifests,
stage status) goes through :func:`atomic_write`: the content goes to a temporary
file ``.<name>.tmp<pid>`` in the same folder, is flushed and fsynced, then
renamed over the target (atomic on POSIX), and the folder is fsynced so the
rename survives a power cut. On any error the temporary file is removed.
:data:`TEMP_NAME` matches the temporary names so a restarted run can delete
what a killed writer left behind.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import IO, Any, Callable

TEMP_NAME = re.compile(r"^\..+\.tmp\d+$")


def temp_path(path: Path) -> Path:
    """The temporary name a write to ``path`` uses (one scheme for the whole suite)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file, then move it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (a reader sees the old file or the whole new one)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent))
