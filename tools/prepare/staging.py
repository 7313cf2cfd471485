"""The temporary tree, and moving finished parts into place: never a half-written tree that looks finished.

Layout under the target ``ROOT`` (the ``--to`` folder):

- ``ROOT/.prepare_data/<dataset>/<unit>/``: a unit (a split, a corruption, a whole
  variant) while it is written; a file gets its final name there only once complete
  (written under ``.prepare_data/<dataset>/.tmp/`` and renamed), so an interrupted run
  (``kill -9``, a power cut's lost page cache aside) resumes by skipping what exists;
- ``ROOT/.prepare_data/<dataset>/state.json``: what the staged work was made from (the
  sources' paths, sizes and mtimes); a run from other sources starts over;
- ``ROOT/.prepare_data/<dataset>.lock``: one run per dataset and target at a time.

When a unit is complete, counted and validated, :meth:`Staging.commit` renames it to its
final place (one rename on the same file system) and records it in the dataset's
``prepared.json``. A final place that already holds a recorded unit is left alone
unless ``--overwrite``; one that holds something else is refused (``--overwrite``
replaces it, moving the old tree aside until the new one is in). A crash between the
rename and the manifest update is repaired on the next start (``state.json`` names the
unit being committed).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from pretrain.atomic import atomic_write_text

from .errors import PrepareError, os_error_line
from .extract import INHERITED_FDS

WORK_DIR = ".prepare_data"
MANIFEST = "prepared.json"
LAYOUT_VERSION = 1


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or {} if it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


class Staging:
    """The temporary tree of one dataset under ``root``, its lock, and its manifest in ``dataset_dir``.

    Args:
        root: the ``--to`` folder (created).
        dataset: the dataset's command name (names the work folder and the lock).
        dataset_dir: where the finished units and ``prepared.json`` go (``root`` or a sub-folder).
        fingerprint: what the staged work is made from; a different one discards it.
        overwrite: redo and replace units that are already complete.
        log: prints one line (the CLI's ``print``).
    """

    def __init__(
        self,
        root: Path,
        dataset: str,
        dataset_dir: Path,
        fingerprint: dict[str, Any],
        overwrite: bool = False,
        log: Callable[[str], object] = print,
    ) -> None:
        self.root, self.dataset, self.dataset_dir = Path(root), dataset, Path(dataset_dir)
        self.overwrite, self.log = overwrite, log
        self.work = self.root / WORK_DIR / dataset
        self.tmp = self.work / ".tmp"
        self.state_path = self.work / "state.json"
        self.manifest_path = self.dataset_dir / MANIFEST
        try:
            self.work.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.root / WORK_DIR / f"{dataset}.lock", "a")
        except OSError as exc:
            raise PrepareError(os_error_line(exc)) from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrepareError(f"another tools.prepare_data run is preparing {dataset} in {root} "
                               f"(lock {self._lock.name})") from None
        INHERITED_FDS.add(self._lock.fileno())
        state = read_json(self.state_path)
        if state and state.get("fingerprint") != fingerprint:
            self.log(f"{dataset}: staged work in {self.work} was made from other sources: starting over")
            self._clear_work()
            state = {}
        self.state = {"fingerprint": fingerprint, "committing": state.get("committing")}
        self._repair_commit()
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.work / ".trash", ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        write_json(self.state_path, self.state)

    # ------------------------------------------------------------------ manifest
    def manifest(self) -> dict[str, Any]:
        """The dataset's ``prepared.json`` ({} before the first unit is in)."""
        return read_json(self.manifest_path)

    def _write_manifest(self, data: dict[str, Any], where: Path | None = None) -> None:
        data.setdefault("dataset", self.dataset)
        data["layout"] = LAYOUT_VERSION
        write_json(where or self.manifest_path, data)

    def update_manifest(self, **fields: Any) -> None:
        """Set top-level fields of ``prepared.json`` (only once the dataset folder exists)."""
        data = self.manifest()
        data.update(fields)
        self._write_manifest(data)

    # ------------------------------------------------------------------ units
    def final_path(self, unit: str) -> Path:
        return self.dataset_dir if unit == "." else self.dataset_dir / unit

    def is_done(self, unit: str) -> bool:
        """True when ``unit`` is complete in place and recorded, and ``--overwrite`` was not asked."""
        if self.overwrite:
            return False
        return unit in self.manifest().get("units", {}) and self.final_path(unit).exists()

    def check_target(self, unit: str) -> None:
        """Refuse a final place that holds something this tool did not write (unless ``--overwrite``)."""
        final = self.final_path(unit)
        recorded = unit in self.manifest().get("units", {})
        if unit == "." and final.exists() and not recorded and not self.overwrite and any(final.iterdir()):
            raise PrepareError(f"{final} exists and was not written by tools.prepare_data (no {MANIFEST}): "
                               "--overwrite replaces it, or choose another --to")
        if unit != "." and final.exists() and not recorded and not self.overwrite:
            raise PrepareError(f"{final} exists and was not written by tools.prepare_data (not in {self.manifest_path}): "
                               "--overwrite replaces it, or choose another --to")

    def kept_whole(self, what: str) -> dict[str, Any] | None:
        """For a dataset that is one unit: its manifest if it is complete in place (logged as kept, the
        work folder removed), else None after checking that its place may be written."""
        if self.is_done("."):
            counts = self.manifest().get("counts")
            self.log(f"{what} kept  {self.dataset_dir}" + (f"  ({counts})" if counts else ""))
            self.finish()
            return self.manifest()
        self.check_target(".")
        return None

    def unit_dir(self, unit: str) -> Path:
        """The folder a unit is written into (created)."""
        path = self.work / ("_dataset" if unit == "." else unit)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, unit: str, info: dict[str, Any], fields: dict[str, Any] | None = None) -> Path:
        """Move the finished unit into place and record ``info`` for it in the manifest; returns its place.

        ``unit == "."`` is a dataset that is one unit (a variant, ADE20K): its manifest is written
        into it before the rename, so it appears complete in one step.
        """
        src, final = self.unit_dir(unit), self.final_path(unit)
        data = self.manifest() if unit != "." else {}
        data.update(fields or {})
        data.setdefault("units", {})[unit] = info
        self.state["committing"] = {"unit": unit, "manifest": data}
        write_json(self.state_path, self.state)
        if unit == ".":
            self._write_manifest(data, src / MANIFEST)
        final.parent.mkdir(parents=True, exist_ok=True)
        trash = None
        if final.exists():
            trash = self.work / ".trash" / f"{unit.replace('/', '_')}-{os.getpid()}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(final, trash)
        os.replace(src, final)
        if unit != ".":
            self._write_manifest(data)
        self.state["committing"] = None
        write_json(self.state_path, self.state)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return final

    def _repair_commit(self) -> None:
        pending = self.state.get("committing")
        if not pending:
            return
        unit = pending["unit"]
        src = self.work / ("_dataset" if unit == "." else unit)
        if not src.exists() and self.final_path(unit).exists():  # renamed, manifest not yet written
            if unit != ".":
                self._write_manifest(pending["manifest"])
        self.state["committing"] = None

    def finish(self) -> None:
        """Remove the (now empty) work folder and release the lock."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.close()

    def close(self) -> None:
        if not self._lock.closed:
            INHERITED_FDS.discard(self._lock.fileno())
        try:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
        except (OSError, ValueError):
            pass

    def _clear_work(self) -> None:
        for entry in self.work.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Refuse to start when the files still to write do not fit on ``folder``'s file system."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise PrepareError(f"not enough disk space on {folder}: {what} needs {needed / 1e9:.2f} GB, "
                           f"{free / 1e9:.2f} GB free")
