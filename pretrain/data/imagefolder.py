"""Image-folder classification dataset (``root/<split>/<class>/*.JPEG``) with fast, checked decoding.

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

import io
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

_COUNTER_SLOTS = 257
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class BadImageError(RuntimeError):
    """An image file that cannot be read or decoded; the message names the file."""

    def __init__(self, path: str | Path, reason: object) -> None:
        super().__init__(f"cannot read image file {path}: {reason}")
        self.path = str(path)
        self.reason = str(reason)

    def __reduce__(self):  # survives the trip from a DataLoader worker
        return (type(self), (self.path, self.reason))


def read_bytes(path: str | Path) -> bytearray:
    """The file's bytes in a writable buffer (so torch can wrap them without a copy)."""
    try:
        with open(path, "rb") as f:
            buf = bytearray(os.fstat(f.fileno()).st_size)
            n = f.readinto(buf)
    except OSError as e:
        raise BadImageError(path, e) from e
    return buf if n == len(buf) else buf[:n]


def jpeg_orientation(data: bytes | bytearray) -> int:
    """The EXIF orientation tag (1-8) of a JPEG, read from its APP1 segment (1 when absent)."""
    pos, n = 2, len(data)
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _SOF_MARKERS or marker == 0xDA:  # the EXIF block comes before the frame
            return 1
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker == 0xE1 and bytes(data[pos + 4:pos + 10]) == b"Exif\0\0":
            return _tiff_orientation(bytes(data[pos + 10:pos + 2 + length]))
        pos += 2 + length
    return 1


def _tiff_orientation(tiff: bytes) -> int:
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    for k in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            break
        if int.from_bytes(tiff[entry:entry + 2], order) == 0x0112:
            value = int.from_bytes(tiff[entry + 8:entry + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a [C, H, W] tensor (what PIL's ``ImageOps.exif_transpose`` does)."""
    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1, -2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return img.rot90(-1, (-2, -1))
    if orientation == 7:
        return img.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return img.rot90(1, (-2, -1))
    return img


def _upright(img: Image.Image) -> Image.Image:
    """PIL image with its EXIF orientation applied (unchanged without the tag)."""
    if img.getexif().get(0x0112, 1) in (1, None):
        return img
    from PIL import ImageOps

    return ImageOps.exif_transpose(img)


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit greyscale image (PIL modes ``I;16*``, and ``I`` as 16-bit PNGs and TIFFs open) as
    8-bit ``L``, 0..65535 scaled to 0..255; other images unchanged.

    PIL's own ``convert("RGB")`` clips such pixels at 255, so almost every 16-bit photo
    would turn pure white."""
    if not (img.mode.startswith("I;16") or img.mode == "I"):
        return img
    wide = np.asarray(img).astype(np.int64).clip(0, 65535)
    return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def decode_pil(data: bytes | bytearray, path: str | Path = "<bytes>") -> Image.Image:
    """Decode any PIL-readable image to an upright (EXIF orientation applied) RGB image (16-bit
    greyscale scaled to 8 bits, :func:`to_8bit`); failures raise :class:`BadImageError`."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # truncated files fail here, not lazily later
        img = to_8bit(_upright(img))
        return img if img.mode == "RGB" else img.convert("RGB")
    except Exception as e:  # PIL raises OSError, UnidentifiedImageError, ValueError, SyntaxError...
        raise BadImageError(path, e) from e


def decode_image(data: bytes | bytearray, path: str | Path = "<bytes>") -> torch.Tensor:
    """Decode image bytes to an upright uint8 RGB tensor [3, H, W] (EXIF orientation applied).

    JPEGs (by magic number) go through ``torchvision.io.decode_jpeg`` (libjpeg-turbo,
    raises on truncated data); everything else, and JPEGs it cannot handle, through PIL.
    """
    if len(data) == 0:
        raise BadImageError(path, "empty file")
    if data[:2] == b"\xff\xd8":
        try:
            buf = data if isinstance(data, bytearray) else bytearray(data)
            img = decode_jpeg(torch.frombuffer(buf, dtype=torch.uint8), mode=ImageReadMode.RGB)
            return orient(img, jpeg_orientation(data))
        except RuntimeError:
            pass  # PIL decides: it reads some JPEG flavours libjpeg's torch binding refuses
    img = decode_pil(data, path)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame codes (not DHT/JPG/DAC)


def jpeg_size(data: bytes | bytearray) -> tuple[int, int] | None:
    """(height, width) from a JPEG's start-of-frame segment, or None if not found (a few us)."""
    pos, n = 2, len(data)
    while pos + 9 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _SOF_MARKERS:
            return (data[pos + 5] << 8) | data[pos + 6], (data[pos + 7] << 8) | data[pos + 8]
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:  # segments without a length
            pos += 2
            continue
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return None


class EncodedImage:
    """Undecoded image bytes, so a transform can pick a reduced JPEG decode (DCT scaling).

    ``size`` reads only the header and is the upright size (EXIF orientation applied,
    as by every decode). ``decode(reduce)`` returns a uint8 tensor
    [3, ceil(H / reduce), ceil(W / reduce)]; reduce 2, 4 or 8 uses libjpeg's scaled
    IDCT through PIL's ``draft`` (several times cheaper than a full decode) and is
    exact 1 for other formats. Errors raise :class:`BadImageError` naming the file.
    """

    __slots__ = ("data", "path", "_size", "_orientation")

    def __init__(self, data: bytes | bytearray, path: str | Path = "<bytes>") -> None:
        self.data, self.path, self._size, self._orientation = data, path, None, None

    @property
    def orientation(self) -> int:
        """EXIF orientation of a JPEG (1-8; 1: stored upright); other formats: 1 (PIL applies theirs)."""
        if self._orientation is None:
            self._orientation = jpeg_orientation(self.data) if self.is_jpeg else 1
        return self._orientation

    @property
    def is_jpeg(self) -> bool:
        return self.data[:2] == b"\xff\xd8"

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) from the header."""
        if self._size is None and self.is_jpeg:
            size = jpeg_size(self.data)
            if size is not None:
                self._size = size[::-1] if self.orientation >= 5 else size  # 5-8 swap the sides
        if self._size is None:
            try:
                with Image.open(io.BytesIO(self.data)) as img:
                    w, h = img.size
                    if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                        w, h = h, w
            except Exception as e:
                raise BadImageError(self.path, e) from e
            self._size = (h, w)
        return self._size

    def decode(self, reduce: int = 1) -> torch.Tensor:
        if reduce == 1 or not self.is_jpeg:
            return decode_image(self.data, self.path)
        h, w = self.size
        try:
            img = Image.open(io.BytesIO(self.data))
            if self.orientation >= 5:  # size is upright; the draft wants the stored sides
                h, w = w, h
            img.draft("RGB", (max(w // reduce, 1), max(h // reduce, 1)))
            img.load()
            img = img if img.mode == "RGB" else img.convert("RGB")
        except Exception as e:
            raise BadImageError(self.path, e) from e
        return orient(torch.from_numpy(np.array(img)).permute(2, 0, 1), self.orientation)


def load_image(path: str | Path, kind: str = "tensor") -> torch.Tensor | Image.Image | EncodedImage:
    """Read one file as a uint8 tensor [3, H, W], a PIL RGB image or an :class:`EncodedImage`."""
    data = read_bytes(path)
    if kind == "tensor":
        return decode_image(data, path)
    if kind == "pil":
        return decode_pil(data, path)
    if kind == "encoded":
        return EncodedImage(data, path)
    raise ValueError(f"kind must be 'tensor', 'pil' or 'encoded', got {kind!r}")


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
