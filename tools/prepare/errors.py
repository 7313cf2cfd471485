"""The one error type of dataset preparation: a single line naming the file or option at fault.

``tools.prepare_data`` prints ``error: <message>`` for it (no traceback) and exits 1.
:func:`os_error_line` turns the operating system's errors that bad input causes (a full
disk, a read-only or unwritable target) into such a line.
"""
from __future__ import annotations

import errno
import os


class PrepareError(RuntimeError):
    """Bad input or a failed check; ``str(exc)`` is one line for the user."""


def os_error_line(exc: OSError, work: str | os.PathLike | None = None) -> str:
    """One line for an OSError met while writing (``work``: the staging tree that is kept for a resume)."""
    where = exc.filename or "the target"
    kept = f"; finished work is kept in {work} and a rerun resumes" if work else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing {where}: free some space and rerun{kept}"
    if exc.errno == errno.EROFS:
        return f"cannot write {where}: read-only file system (choose a writable --to)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"cannot write {where}: permission denied (choose a writable --to)"
    return f"{where}: {exc.strerror or exc}{kept}"
