"""Ctrl-C during an end-to-end run or an ablation sweep: the stage processes stop, one line says so.

Without this, a Ctrl-C ended in a traceback (from the thread pool or the stage's output
loop) and, when only the parent got the signal (``kill -INT``), left the stages of a
``--jobs`` run training on with nobody reading their output. Every stage process is
tracked while it runs; an interrupt terminates each (SIGTERM, SIGKILL after a grace
period), the interrupted stages are recorded as such in their run's status file, and
the command prints one line and exits 130 (the shell's code for SIGINT). Nothing
finished is lost: checkpoints and metrics files are written atomically, so running the
same command again skips the finished stages and resumes the interrupted ones.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from typing import Callable

EXIT_CODE = 130
GRACE_S = 10.0
INTERRUPTED_REASON = "interrupted (Ctrl-C)"

_LOCK = threading.Lock()
_LIVE: dict[int, tuple[str, subprocess.Popen]] = {}
_STOPPED: list[str] = []
_EVENT = threading.Event()


def track(tag: str, proc: subprocess.Popen) -> None:
    """Register a running stage process (``tag``: ``method/stage``)."""
    with _LOCK:
        _LIVE[proc.pid] = (tag, proc)


def untrack(proc: subprocess.Popen) -> None:
    with _LOCK:
        _LIVE.pop(proc.pid, None)


def interrupted() -> bool:
    """True once an interrupt stopped the stages."""
    return _EVENT.is_set()


def stop_all(grace: float = GRACE_S) -> list[str]:
    """Terminate every tracked stage process (SIGKILL after ``grace`` seconds); the tags stopped so far."""
    _EVENT.set()
    with _LOCK:
        live = list(_LIVE.values())
    for tag, proc in live:
        if proc.poll() is None:
            proc.terminate()
        if tag not in _STOPPED:
            _STOPPED.append(tag)
    for _, proc in live:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return list(_STOPPED)


def message(stopped: list[str]) -> str:
    """The one line an interrupted run ends with."""
    which = f"stopped {len(stopped)} running stage(s): {', '.join(stopped)}; " if stopped else ""
    return (f"interrupted (Ctrl-C): {which}finished stages are kept; run the same command again to continue "
            "(an interrupted stage resumes from its last checkpoint)")


def run_interruptible(fn: Callable[[], int]) -> int:
    """``fn()``, or, on Ctrl-C, the stages stopped, one line on stderr and exit code 130."""
    try:
        return fn()
    except KeyboardInterrupt:
        stopped = stop_all()
        print(message(stopped), file=sys.stderr, flush=True)
        return EXIT_CODE
