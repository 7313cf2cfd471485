"""What every dataset preparation shares: its options, source roles, checksums and count checks."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .checksums import DigestCache, verify_archives
from .errors import PrepareError
from .extract import Workers
from .staging import WORK_DIR, Staging


@dataclass
class Context:
    """One ``tools.prepare_data DATASET`` run.

    Attributes:
        dataset: the command name (``imagenet``, ``coco``, ...).
        sources: the ``--from`` arguments as given (``PATH`` or ``ROLE=PATH``).
        to: the target root.
        verify: check published checksums (``--no-verify`` turns it off).
        allow_partial: accept counts below the published ones (a subset).
        overwrite: redo and replace complete units.
        workers: extraction / validation processes.
        progress: show progress bars.
        validate: run ``pretrain.data.validate`` on the staged tree before it moves in.
        validate_max_files: decode only the first N images per class folder.
        options: dataset-specific options (``val_labels``, ``lowshot``, ``seed``, ...).
        log: prints one line.
    """

    dataset: str
    sources: list[str]
    to: Path
    verify: bool = True
    allow_partial: bool = False
    overwrite: bool = False
    workers: int = 1
    progress: bool = True
    validate: bool = True
    validate_max_files: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], object] = print
    partial: bool = False  # set when a count below the published one was accepted

    def split_roles(self, roles: tuple[str, ...], guess: Callable[[Path], str]) -> dict[str, Path]:
        """{role: path} from ``--from``: ``ROLE=PATH`` as given, else ``guess(path)`` (one source per role)."""
        out: dict[str, Path] = {}
        for spec in self.sources:
            role, _, rest = spec.partition("=")
            if rest and role in roles:
                path = Path(rest).expanduser()
            else:
                path = Path(spec).expanduser()
                if not path.exists():
                    raise PrepareError(f"--from {spec}: no such file or folder")
                role = guess(path)
            if not path.exists():
                raise PrepareError(f"--from {spec}: no such file or folder")
            if role in out:
                raise PrepareError(f"--from: two sources for the {role} role: {out[role]} and {path}")
            out[role] = path
        return out

    def fingerprint(self, sources: dict[str, Path]) -> dict[str, Any]:
        """What staged work depends on: each source's resolved path, size and mtime."""
        out = {}
        for role, path in sorted(sources.items()):
            st = path.stat()
            out[role] = [str(path.resolve()), st.st_size if path.is_file() else 0, st.st_mtime_ns]
        return {"dataset": self.dataset, "sources": out}

    def staging(self, sources: dict[str, Path], dataset_dir: Path) -> Staging:
        return Staging(self.to, self.dataset, dataset_dir, self.fingerprint(sources), self.overwrite, self.log)

    def check_sources(self, sources: dict[str, Path], official: dict[str, str]) -> dict[str, dict]:
        """Published checksums of the sources whose role has an official archive; {role: record}."""
        records: dict[str, dict] = {}
        for role, path in sources.items():
            records[role] = {"path": str(path.resolve()), "bytes": path.stat().st_size if path.is_file() else None,
                             "verified": False}
        if not self.verify:
            return records
        cache = DigestCache(self.to / WORK_DIR / "checksums.json")
        pairs = [(path, official[role]) for role, path in sources.items() if role in official and path.is_file()]
        found = verify_archives(pairs, cache, workers=min(4, self.workers), progress=self.progress)
        for role, path in sources.items():
            records[role].update(found.get(str(path), {"verified": False}))
        return records

    def check_count(self, what: str, images: int, classes: int | None, published: tuple[int, int | None]) -> None:
        """Compare with the published count; below it is accepted only with ``--allow-partial``."""
        p_images, p_classes = published
        same = images == p_images and (p_classes is None or classes == p_classes)
        if same:
            return
        cls = f" in {classes} classes" if classes is not None else ""
        pcls = f" in {p_classes}" if p_classes is not None else ""
        if self.allow_partial and images <= p_images and (p_classes is None or (classes or 0) <= p_classes):
            self.partial = True
            return
        raise PrepareError(f"{what}: {images:,} images{cls}, the published count is {p_images:,}{pcls} "
                           f"({'--allow-partial accepts a subset' if images < p_images else 'more than published'}; "
                           "the staged files are kept for a rerun)")

    def pool(self) -> Workers:
        return Workers(self.workers)


def is_under(path: Path, folder: Path) -> bool:
    """True when ``path`` is ``folder`` or inside it (resolved)."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
        return True
    except ValueError:
        return False
