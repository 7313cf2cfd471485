"""Extraction on every core: archive members routed to files in the staging tree.

A dataset module turns an archive into :class:`Job` s: a batch of members and where each
goes (``files``), or one tar inside the archive that becomes one class folder
(``nested``: ImageNet's per-class train tars). :class:`Workers` runs them in worker
processes (forked on Linux, spawned elsewhere; killed with their parent by
``PR_SET_PDEATHSIG``, and they drop the parent's lock files), each opening the
archive itself and reading its members at their offsets, so N cores extract at once and
the archive is never copied. ``workers=1`` runs everything in this process.

Every file is written under a temporary name in the staging tree's ``.tmp/`` and renamed
to its place when complete; a nested class is extracted into ``.tmp/`` whole and renamed
into place as one folder. What exists under its final name is therefore complete, and a
resumed run skips it (:func:`pending`).
"""
from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import os
import shutil
import signal
import sys
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Sequence

from .archives import Archive, Member, iter_nested_tar, open_archive
from .errors import PrepareError

_ARCHIVES: dict[str, Archive] = {}
_PARENT: int | None = None
_COUNTER = itertools.count()
_MADE: set[str] = set()
INHERITED_FDS: set[int] = set()  # the parent's lock files: a forked worker closes its copies


@dataclass(frozen=True)
class Job:
    """Work for one worker: members of ``archive`` written to absolute paths (``tmp``: the temporary folder)."""

    archive: str
    tmp: str
    files: tuple[tuple[Member, str], ...] = ()  # (member, destination file)
    nested: Member | None = None  # a tar in the archive, extracted whole into the folder nested_dest
    nested_dest: str = ""


def _archive(path: str) -> Archive:
    if path not in _ARCHIVES:
        _ARCHIVES[path] = open_archive(path)
    return _ARCHIVES[path]


def _orphaned() -> bool:
    return _PARENT is not None and os.getppid() != _PARENT


def _mkdir(folder: Path) -> None:
    key = str(folder)
    if key not in _MADE:
        folder.mkdir(parents=True, exist_ok=True)
        _MADE.add(key)


def write_atomic(data_or_copy: bytes | Callable[[Path], None], dest: Path, tmp_dir: Path) -> None:
    """Write bytes (or call ``copy(tmp_path)``) under a temporary name, then rename to ``dest``."""
    _mkdir(dest.parent)
    tmp = tmp_dir / f"{os.getpid()}-{next(_COUNTER)}"
    if callable(data_or_copy):
        data_or_copy(tmp)
    else:
        with open(tmp, "wb") as f:
            f.write(data_or_copy)
    os.replace(tmp, dest)


def run_job(job: Job) -> int:
    """Do one job; returns the number of files written."""
    archive = _archive(job.archive)
    tmp = Path(job.tmp)
    if job.nested is not None:
        return _run_nested(archive, job, tmp)
    for k, (member, dest) in enumerate(job.files):
        if k % 64 == 0 and _orphaned():
            os._exit(1)
        write_atomic(lambda p, m=member: archive.copy_to(m, p), Path(dest), tmp)
    return len(job.files)


def _run_nested(archive: Archive, job: Job, tmp: Path) -> int:
    final = Path(job.nested_dest)
    part = tmp / f"{final.name}-{os.getpid()}"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    n = 0
    seen: set[str] = set()
    for name, data in iter_nested_tar(archive, job.nested):
        base = PurePosixPath(name).name
        if base in seen:
            raise PrepareError(f"{archive.path}: member {job.nested.name} holds {base} twice")
        seen.add(base)
        with open(part / base, "wb") as f:
            f.write(data)
        n += 1
        if n % 64 == 0 and _orphaned():
            os._exit(1)
    if n == 0:
        raise PrepareError(f"{archive.path}: member {job.nested.name} holds no files")
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    return n


def _init_worker(parent: int) -> None:
    global _PARENT
    _PARENT = parent
    for fd in INHERITED_FDS:
        try:
            os.close(fd)
        except OSError:
            pass
    _ARCHIVES.clear()  # the parent's open archives share file offsets: open our own
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the parent (kill -9)
        except (OSError, AttributeError):
            pass
    if _orphaned():
        os._exit(1)


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Workers:
    """A pool of extraction processes (or this process alone with ``n=1``), used as a context manager."""

    def __init__(self, n: int) -> None:
        self.n = max(1, int(n))
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self._pool = ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context(method),
                                             initializer=_init_worker, initargs=(os.getpid(),))
        return self._pool

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], done: Callable[[Any, Any], object]) -> None:
        """``fn(item)`` for every item, ``done(item, result)`` in this process as each finishes;
        the first failure cancels the rest and is raised."""
        if self.n == 1 or len(items) <= 1:
            for item in items:
                done(item, fn(item))
            return
        pool = self._executor()
        futures = {pool.submit(fn, item): item for item in items}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for fut in finished:
                exc = fut.exception()
                if exc is not None:
                    for other in pending:
                        other.cancel()
                    raise exc
                done(futures[fut], fut.result())


def run_jobs(workers: Workers, jobs: Sequence[Job], bar: Any, per_file: bool = True) -> int:
    """Run extraction jobs, advancing ``bar`` by files (``per_file``) or jobs; returns files written."""
    total = [0]

    def done(job: Job, n: int) -> None:
        total[0] += n
        bar.update(n if per_file else 1)

    workers.map(run_job, jobs, done)
    return total[0]


def pending(routes: Iterable[tuple[Member, Path]]) -> Iterator[tuple[Member, Path]]:
    """The routed members whose file is not yet in place (absent, or of another size)."""
    for member, dest in routes:
        try:
            if dest.stat().st_size == member.size:
                continue
        except FileNotFoundError:
            pass
        yield member, dest


def chunk_jobs(
    archive: Archive, todo: Sequence[tuple[Member, Path]], tmp: Path, per_job: int = 256
) -> list[Job]:
    """Batch (member, absolute destination) pairs into jobs of ``per_job`` files in archive order."""
    if not archive.random_access:
        raise ValueError("chunk_jobs needs a random-access archive")
    jobs = []
    for start in range(0, len(todo), per_job):
        chunk = todo[start:start + per_job]
        jobs.append(Job(str(archive.path), str(tmp), tuple((m, str(d)) for m, d in chunk)))
    return jobs


def stream_into(
    archive: Archive, route: Callable[[Member], Path | None], tmp: Path, bar: Any
) -> int:
    """Single pass over a compressed archive: write each routed member not yet in place; returns files written."""
    n = 0
    for member, data in archive.stream():
        dest = route(member)
        if dest is None:
            continue
        try:
            if dest.stat().st_size == member.size:
                bar.update(1)
                continue
        except FileNotFoundError:
            pass
        write_atomic(data, dest, tmp)
        n += 1
        bar.update(1)
    return n


def extract_routed(
    archive: Archive,
    route: Callable[[Member], Path | None],
    workers: Workers,
    tmp: Path,
    desc: str,
    progress: bool = True,
) -> list[Path]:
    """Extract every member ``route`` gives a destination (None: skip it); returns all routed destinations.

    Random-access archives go through the worker pool, after a free-space check for the
    files still missing; compressed tars are streamed in this process.
    """
    from tqdm.auto import tqdm

    from .staging import check_free_space

    if not archive.random_access:
        routed: list[Path] = []

        def keep(member: Member) -> Path | None:
            dest = route(member)
            if dest is not None:
                routed.append(dest)
            return dest

        with tqdm(desc=desc, unit="img", disable=not progress, leave=False) as bar:
            stream_into(archive, keep, tmp, bar)
        return routed
    routes = [(m, d) for m in archive.members() if (d := route(m)) is not None]
    todo = list(pending(routes))
    check_free_space(tmp, sum(m.size for m, _ in todo), f"{desc} ({len(todo)} files)")
    with tqdm(total=len(routes), initial=len(routes) - len(todo), desc=desc, unit="img",
              disable=not progress, leave=False) as bar:
        run_jobs(workers, chunk_jobs(archive, todo, tmp), bar)
    return [d for _, d in routes]


def count_files(folder: Path) -> dict[str, int]:
    """Files per sub-folder (relative, ``/``-separated; ``.`` for the folder itself), hidden files skipped."""
    counts: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        n = sum(1 for f in filenames if not f.startswith(".") and f != "prepared.json")
        if n:
            counts[Path(dirpath).relative_to(folder).as_posix()] = n
    return counts
