"""The suite's own checks (``pretrain.data.validate``) on a staged tree, before it moves into place.

An ImageNet-sized split is decoded class folder by class folder on every core
(``validate_imagefolder`` on each ``<wnid>/`` folder is a flat-folder check), so a split
that holds an unreadable image never appears complete. COCO and ADE20K go through
``validate_coco_json`` / ``validate_ade20k`` as they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import PrepareError
from .extract import Workers

_SHOWN = 3


def _check_folder(args: tuple[str, int | None]) -> list[str]:
    from pretrain.data.validate import DatasetError, validate_imagefolder

    folder, max_files = args
    try:
        validate_imagefolder(folder, max_files=max_files)
    except DatasetError as exc:
        return exc.problems
    return []


def image_folders(split_dir: Path) -> list[Path]:
    """The class folders of ``split_dir`` (sorted, hidden ones skipped)."""
    return [d for d in sorted(split_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")]


def validate_classes(split_dir: Path, workers: Workers, max_files: int | None, progress: bool = True) -> int:
    """Decode the images of every class folder under ``split_dir`` (``max_files`` per folder when set);
    returns the folders checked, or raises :class:`PrepareError` naming the first bad files."""
    from tqdm.auto import tqdm

    folders = image_folders(split_dir)
    problems: list[str] = []
    with tqdm(total=len(folders), desc=f"validate {split_dir.name}", unit="class", disable=not progress,
              leave=False) as bar:
        def done(_: Any, found: list[str]) -> None:
            problems.extend(found)
            bar.update(1)

        workers.map(_check_folder, [(str(f), max_files) for f in folders], done)
    if problems:
        raise PrepareError(f"{split_dir}: {len(problems)} unreadable image(s) ({'; '.join(problems[:_SHOWN])}); "
                           "the split stays in the staging tree (--skip-validate moves it in anyway)")
    return len(folders)


def dataset_error_line(exc: Exception, what: str) -> PrepareError:
    """A :class:`PrepareError` from ``pretrain.data.validate``'s DatasetError (its first problems)."""
    problems = getattr(exc, "problems", [str(exc)])
    return PrepareError(f"{what}: {len(problems)} problem(s): {'; '.join(problems[:_SHOWN])}")
