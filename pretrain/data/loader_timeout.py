"""How long a DataLoader waits for its workers before it fails with a message instead of hanging.

A worker that blocks (a deadlock inherited through ``fork``, a stalled network file
system) would leave ``next(loader)`` waiting forever with nothing on screen. Every
worker loader of the suite passes ``timeout=worker_timeout(workers)``: torch then raises
``RuntimeError('DataLoader timed out after N seconds')`` and the command line turns that
into one ``error:`` line (:func:`timed_out_message`). The limit is generous (a batch
normally takes well under a second per worker); ``DROPPOS_WORKER_TIMEOUT`` sets it in
seconds, ``0`` waits forever as torch does by default.
"""
from __future__ import annotations

import os
import re

WORKER_TIMEOUT_ENV = "DROPPOS_WORKER_TIMEOUT"
DEFAULT_WORKER_TIMEOUT_S = 600.0

_TORCH_TIMEOUT = re.compile(r"DataLoader timed out after (\d+(?:\.\d+)?) seconds")


def worker_timeout(num_workers: int) -> float:
    """``DataLoader(timeout=...)`` for a loader with ``num_workers`` workers: 0 in process (torch
    allows a timeout only with workers), else ``DROPPOS_WORKER_TIMEOUT`` or 600 s."""
    if int(num_workers) <= 0:
        return 0.0
    raw = os.environ.get(WORKER_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_WORKER_TIMEOUT_S
    from pretrain.engine.config import ConfigError  # a bad setting is a configuration error (exit 2)

    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{WORKER_TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"{WORKER_TIMEOUT_ENV}={raw!r} must be a finite number of seconds >= 0 (0: wait forever)")
    return value


def timed_out_message(exc: BaseException) -> str | None:
    """A one-line explanation when ``exc`` is torch's DataLoader timeout, else None."""
    if not isinstance(exc, RuntimeError):
        return None
    found = _TORCH_TIMEOUT.search(str(exc))
    if found is None:
        return None
    return (f"no batch came from the DataLoader workers for {float(found.group(1)):g} s: a worker hung or is far too slow "
            f"(set {WORKER_TIMEOUT_ENV}=SECONDS to wait longer, 0 to wait forever; data.num_workers=0 loads in process)")
