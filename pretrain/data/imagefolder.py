"""Image-folder classification dataset (``root/<split>/<class>/*.JPEG``) with fast, checked decoding (``decode.py``).

Reads the real ImageNet layout unchanged and the built-in one. Compared with
torchvision's ``ImageFolder`` it:

- decodes JPEG bytes with ``torchvision.io.decode_jpeg`` into a uint8 [3, H, W]
  tensor (other formats, and JPEGs it rejects, go through PIL), so tensor
  transforms (``transforms.py``) run without a PIL round trip; the suite's
  transforms take the undecoded bytes (:class:`EncodedImage`) and decode a JPEG
  at 1/2, 1/4 or 1/8 scale when their crop allows it;
- shows every image upright: the EXIF orientation tag (1-8) of a JPEG, PNG, TIFF or
  WebP file is applied to the pixels on every decode path (full, reduced, PIL), and
  ``EncodedImage.size`` is the upright size, as Detectron2's ``read_image`` and MMCV's
  ``imread`` / ``imfrombytes`` (colour images) do; label maps are never rotated
  (``docs/faults.md``, "EXIF orientation");
- names the folder or file in every error (missing split, empty folder,
  unreadable or truncated image) instead of a bare PIL error;
- can skip bad files (``skip_bad=True``): a training sample is replaced by the next
  readable one (``substitute=True``), an evaluation sample is dropped (``substitute=False``:
  the item is None, :func:`drop_missing_collate` leaves it out, so n shrinks and no image
  is counted twice). A warning names the first bad file; ``num_skipped`` counts each bad
  file once each time its own index is drawn (so once per epoch, not once per failed read,
  whatever the replacements re-read), and ``bad_files`` names them, both across DataLoader
  workers (shared memory).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from .decode import BadImageError, load_image

_COUNTER_SLOTS = 257
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def find_classes(folder: Path) -> list[str]:
    """Sorted class folder names (hidden folders ignored); errors name ``folder``."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"no class folders found in {folder} (expected {folder}/<class>/<image>)")
    return classes


def walk_images(
    top: str | os.PathLike, extensions: Sequence[str] = IMG_EXTENSIONS, seen: dict[tuple[int, int], str] | None = None
) -> tuple[list[str], list[str]]:
    """(image files below ``top`` in sorted walk order, symlink loops met) with symbolic links followed.

    A folder reached a second time (a link to itself or to an ancestor, or two links to
    one folder; ``seen`` carries the folders already walked, e.g. the other classes of a
    split) is not entered again: each file is listed once, and the loop is named as
    ``link -> the folder it repeats``.
    """
    exts = tuple(e.lower() for e in extensions)
    found: list[str] = []
    loops: list[str] = []
    seen = {} if seen is None else seen
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            loops.append(f"{dirpath} -> {seen[key]}")
            dirnames[:] = []  # do not descend again
            continue
        seen[key] = dirpath
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(exts)]
    return found, loops


def scan_class_folders(
    folder: Path, classes: Sequence[str], extensions: Sequence[str] = IMG_EXTENSIONS
) -> tuple[list[tuple[str, int]], list[str], list[str]]:
    """(samples as (path, class index), class folders without images, symlink loops met) of a split."""
    samples: list[tuple[str, int]] = []
    empty: list[str] = []
    loops: list[str] = []
    st = os.stat(folder)
    seen = {(st.st_dev, st.st_ino): str(folder)}  # a link back to the split, or into another class, repeats files
    for idx, name in enumerate(classes):
        found, met = walk_images(folder / name, extensions, seen)
        if not found:
            empty.append(str(folder / name))
        samples += [(p, idx) for p in found]
        loops += met
    return samples, empty, loops


def split_problems(folder: Path, samples: Sequence, empty: Sequence[str], extensions: Sequence[str] = IMG_EXTENSIONS,
                   allow_empty: bool = False) -> list[str]:
    """What makes a split unusable for training or evaluation, one message each: the rule the
    loaders apply (they raise the first) and the validator reports (all of them)."""
    exts = tuple(e.lower() for e in extensions)
    if not samples:
        return [f"no images ({', '.join(exts)}) found in the class folders of {folder}"]
    if empty and not allow_empty:
        more = f" (and {len(empty) - 3} more)" if len(empty) > 3 else ""
        return [f"class folders without images: {', '.join(empty[:3])}{more}"]
    return []


def scan_samples(
    folder: Path,
    classes: Sequence[str],
    extensions: Sequence[str] = IMG_EXTENSIONS,
    allow_empty: bool = False,
) -> list[tuple[str, int]]:
    """(path, class index) of every image below each class folder, sorted per class, each file once
    (symlink loops are named in a warning and not followed twice)."""
    samples, empty, loops = scan_class_folders(folder, classes, extensions)
    problems = split_problems(folder, samples, empty, extensions, allow_empty)
    if problems:
        raise FileNotFoundError(problems[0])
    if loops:
        more = f" (and {len(loops) - 3} more)" if len(loops) > 3 else ""
        warnings.warn(f"{folder}: symbolic link loops not followed again (each file counted once): "
                      f"{', '.join(loops[:3])}{more}", stacklevel=2)
    return samples


class ImageFolderDataset(Dataset):
    """Classification dataset over ``root/<split>/<class>/*`` returning (image, class index).

    Args:
        root: dataset root (holding the split folders) or, with ``split=None``, the split folder.
        split: split folder name ("train", "val") or None.
        transform: applied to the image. It receives what its ``input_kind`` attribute
            asks for: "encoded" (an :class:`EncodedImage`; the suite's transforms, which
            then choose a reduced decode), "tensor" (uint8 [3, H, W]) or, without the
            attribute, "pil" (a PIL RGB image: torchvision / timm transforms).
            No transform: a uint8 tensor.
        target_transform: applied to the class index.
        skip_bad: do not raise on unreadable files (see ``substitute``).
        substitute: with ``skip_bad``, replace a bad sample by the next readable one
            (training); False returns None for it (evaluation: see :func:`drop_missing_collate`).
        input_kind: force "encoded", "tensor" or "pil" input for the transform.
        extensions: file name endings counted as images (case-insensitive).
        allow_empty: accept class folders without images.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        *,
        skip_bad: bool = False,
        substitute: bool = True,
        input_kind: str | None = None,
        extensions: Sequence[str] = IMG_EXTENSIONS,
        allow_empty: bool = False,
    ) -> None:
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}")
        folder = root / split if split else root
        if not folder.is_dir():
            present = sorted(e.name for e in os.scandir(root) if e.is_dir())
            raise FileNotFoundError(f"split folder not found: {folder} (folders in {root}: {present})")
        self.root = folder
        self.transform = transform
        self.target_transform = target_transform
        self.skip_bad = skip_bad
        self.substitute = substitute
        if input_kind is None:
            input_kind = "tensor" if transform is None else getattr(transform, "input_kind", "pil")
        if input_kind not in ("encoded", "tensor", "pil"):
            raise ValueError(f"input_kind must be 'encoded', 'tensor' or 'pil', got {input_kind!r}")
        self.input_kind = input_kind
        self.classes = find_classes(folder)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = scan_samples(folder, self.classes, extensions, allow_empty)
        self.targets = [t for _, t in self.samples]
        # Shared memory, so DataLoader workers (fork or spawn) report to the main process without races:
        # one counter slot per worker (slot 0: main process) and one "known bad" flag per file.
        self._skipped = torch.zeros(_COUNTER_SLOTS, dtype=torch.int64).share_memory_()
        self._bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()
        self._warned = False

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_skipped(self) -> int:
        """Bad samples drawn so far (each bad file once per draw of its index, i.e. once an epoch),
        summed over this process and its DataLoader workers."""
        return int(self._skipped.sum())

    @property
    def bad_files(self) -> list[str]:
        """Paths of the files found unreadable so far (here or in a DataLoader worker), sorted."""
        return sorted(self.samples[i][0] for i in self._bad.nonzero().flatten().tolist())

    def load(self, index: int) -> tuple[Any, int]:
        """Untransformed image (as ``input_kind``) and class index of sample ``index``."""
        path, target = self.samples[index]
        return load_image(path, self.input_kind), target

    def _read(self, index: int) -> tuple[Any, int]:
        img, target = self.load(index)
        if self.transform is not None:  # inside: an "encoded" transform decodes here
            img = self.transform(img)
        return img, target

    def __getitem__(self, index: int) -> tuple[Any, Any] | None:
        if not self.skip_bad:
            img, target = self._read(index)
        else:
            for attempt in range(len(self.samples)):
                i = (index + attempt) % len(self.samples)
                try:  # read again even if known bad: the augmentation's random draws stay the same
                    found = self._read(i)  # whatever another worker found first
                except BadImageError as e:
                    self._note_bad(i, e)
                    found = None
                if found is not None:
                    img, target = found
                    break
                if attempt == 0:  # its own draw: counted once, whoever found it bad
                    self._count_skip()
                    if not self.substitute:
                        return None
            else:
                raise BadImageError(self.root, "no readable image in the dataset")
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def _count_skip(self) -> None:
        info = get_worker_info()
        self._skipped[0 if info is None else 1 + info.id % (_COUNTER_SLOTS - 1)] += 1

    def _note_bad(self, index: int, err: BadImageError) -> None:
        self._bad[index] = True
        if not self._warned:
            self._warned = True
            warnings.warn(f"skipping bad image ({err}); further skips are counted in num_skipped", stacklevel=3)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)}, classes={len(self.classes)}, "
                f"transform={self.transform!r})")


def drop_missing_collate(batch: list) -> Any:
    """``default_collate`` without the None items (bad files skipped by an evaluation split);
    None for a batch of bad files only."""
    kept = [b for b in batch if b is not None]
    return default_collate(kept) if kept else None


class BadImageTally:
    """The bad-file skips of one run over its restarts: what this process counted plus what the
    checkpoint it resumed from had saved (per rank, in the trainer's ``rank_extra``).

    ``state()`` goes into every checkpoint; ``restore(saved, main)`` reads it back (the main
    process takes over the saved count, so that a sum over ranks counts it once);
    ``summary(states)`` turns the states of all ranks into the metrics record.
    """

    LISTED = 10  # bad file names written to the metrics JSON (the log lists them all)

    def __init__(self, dataset: Dataset | None) -> None:
        while dataset is not None and not isinstance(dataset, ImageFolderDataset):  # Subset & co.
            dataset = getattr(dataset, "dataset", None)
        self.dataset = dataset
        self._skips_before = 0
        self._files_before: set[str] = set()

    def state(self) -> dict[str, Any]:
        skips = self._skips_before + (self.dataset.num_skipped if self.dataset is not None else 0)
        files = self._files_before.union(self.dataset.bad_files if self.dataset is not None else ())
        return {"bad_image_skips": skips, "bad_files": sorted(files)}

    def restore(self, saved: Sequence[dict[str, Any]], main: bool) -> None:
        self._skips_before = sum(int(r.get("bad_image_skips", 0)) for r in saved) if main else 0
        self._files_before = {f for r in saved for f in r.get("bad_files", ())}

    def summary(self, states: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
        """({"bad_image_skips", "bad_files", "bad_file_names" (the first few)}, every bad file)."""
        files = sorted({f for s in states for f in s.get("bad_files", ())})
        skips = sum(int(s.get("bad_image_skips", 0)) for s in states)
        return {"bad_image_skips": skips, "bad_files": len(files), "bad_file_names": files[: self.LISTED]}, files


def skip_message(summary: dict[str, Any], files: Sequence[str], split: str = "") -> str:
    """One log line: how many draws were skipped, of how many files, and every file's name."""
    where = f" in {split}" if split else ""
    names = f": {', '.join(files)}" if files else ""
    return (f"skipped {summary['bad_image_skips']} samples{where} (each unreadable file once per epoch) "
            f"from {summary['bad_files']} unreadable files (data.skip_bad=true){names}")
