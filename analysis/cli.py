"""How the analysis commands end: what they wrote on stdout and 0, or a user's error on stderr and 1."""

from __future__ import annotations

import sys
from typing import Callable

from pretrain.weights import CheckpointError

USER_ERRORS: tuple[type[Exception], ...] = (CheckpointError, FileNotFoundError, ValueError)


def run_command(action: Callable[[], str], errors: tuple[type[Exception], ...] = USER_ERRORS) -> int:
    """Run ``action`` and print the message it returns; one of ``errors`` (an unreadable
    checkpoint, a missing file, a bad value) becomes ``error: ...`` on stderr, exit code 1."""
    try:
        message = action()
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(message)
    return 0
