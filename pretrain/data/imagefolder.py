"""Image-folder classification dataset (``root/<split>/<class>/*.JPEG``) with fast, checked decoding.

Reads the real ImageNet layout unchanged and the built-in one. Compared with
torchvision's ``ImageFolder`` it:

- decodes JPEG bytes with ``torchvision.io.decode_jpeg`` into a uint8 [3, H, W]
  tensor (other formats, and JPEGs it rejects, go through PIL), so tensor
  transforms (``transforms.py``) run without a PIL round trip; the suite's
  transforms take the undecoded bytes (:class:`EncodedImage`) and decode a JPEG
  at 1/2, 1/4 or 1/8 scale when their crop allows it;
- names the folder or file in every error (missing split, empty folder,
  unreadable or truncated image) instead of a bare PIL error;
- can skip bad files (``skip_bad=True``): the sample is replaced by the next
  readable one, a warning names the first bad file, and ``num_skipped`` counts
  skips across DataLoader workers.
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
from torch.utils.data import Dataset, get_worker_info
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


def decode_pil(data: bytes | bytearray, path: str | Path = "<bytes>") -> Image.Image:
    """Decode any PIL-readable image to RGB; failures raise :class:`BadImageError`."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # truncated files fail here, not lazily later
        return img if img.mode == "RGB" else img.convert("RGB")
    except Exception as e:  # PIL raises OSError, UnidentifiedImageError, ValueError, SyntaxError...
        raise BadImageError(path, e) from e


def decode_image(data: bytes | bytearray, path: str | Path = "<bytes>") -> torch.Tensor:
    """Decode image bytes to a uint8 RGB tensor [3, H, W].

    JPEGs (by magic number) go through ``torchvision.io.decode_jpeg`` (libjpeg-turbo,
    raises on truncated data); everything else, and JPEGs it cannot handle, through PIL.
    """
    if len(data) == 0:
        raise BadImageError(path, "empty file")
    if data[:2] == b"\xff\xd8":
        try:
            buf = data if isinstance(data, bytearray) else bytearray(data)
            return decode_jpeg(torch.frombuffer(buf, dtype=torch.uint8), mode=ImageReadMode.RGB)
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

    ``size`` reads only the header. ``decode(reduce)`` returns a uint8 tensor
    [3, ceil(H / reduce), ceil(W / reduce)]; reduce 2, 4 or 8 uses libjpeg's scaled
    IDCT through PIL's ``draft`` (several times cheaper than a full decode) and is
    exact 1 for other formats. Errors raise :class:`BadImageError` naming the file.
    """

    __slots__ = ("data", "path", "_size")

    def __init__(self, data: bytes | bytearray, path: str | Path = "<bytes>") -> None:
        self.data, self.path, self._size = data, path, None

    @property
    def is_jpeg(self) -> bool:
        return self.data[:2] == b"\xff\xd8"

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) from the header."""
        if self._size is None and self.is_jpeg:
            self._size = jpeg_size(self.data)
        if self._size is None:
            try:
                w, h = Image.open(io.BytesIO(self.data)).size
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
            img.draft("RGB", (max(w // reduce, 1), max(h // reduce, 1)))
            img.load()
            img = img if img.mode == "RGB" else img.convert("RGB")
        except Exception as e:
            raise BadImageError(self.path, e) from e
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)


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


def scan_samples(
    folder: Path,
    classes: Sequence[str],
    extensions: Sequence[str] = IMG_EXTENSIONS,
    allow_empty: bool = False,
) -> list[tuple[str, int]]:
    """(path, class index) of every image below each class folder, sorted per class."""
    exts = tuple(e.lower() for e in extensions)
    samples: list[tuple[str, int]] = []
    empty = []
    for idx, name in enumerate(classes):
        found = []
        for dirpath, dirnames, filenames in os.walk(folder / name, followlinks=True):
            dirnames.sort()
            found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.lower().endswith(exts)]
        if not found:
            empty.append(str(folder / name))
        samples += [(p, idx) for p in found]
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(exts)}) found in the class folders of {folder}")
    if empty and not allow_empty:
        more = f" (and {len(empty) - 3} more)" if len(empty) > 3 else ""
        raise FileNotFoundError(f"class folders without images: {', '.join(empty[:3])}{more}")
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
        skip_bad: replace unreadable files by the next readable sample instead of raising.
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
        if input_kind is None:
            input_kind = "tensor" if transform is None else getattr(transform, "input_kind", "pil")
        if input_kind not in ("encoded", "tensor", "pil"):
            raise ValueError(f"input_kind must be 'encoded', 'tensor' or 'pil', got {input_kind!r}")
        self.input_kind = input_kind
        self.classes = find_classes(folder)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = scan_samples(folder, self.classes, extensions, allow_empty)
        self.targets = [t for _, t in self.samples]
        self.bad_files: set[str] = set()  # seen by this process
        # One shared-memory slot per DataLoader worker (slot 0: main process): race-free counts
        # that survive fork and spawn.
        self._skipped = torch.zeros(_COUNTER_SLOTS, dtype=torch.int64).share_memory_()
        self._warned = False

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_skipped(self) -> int:
        """Bad-file skips so far, summed over this process and its DataLoader workers."""
        return int(self._skipped.sum())

    def load(self, index: int) -> tuple[Any, int]:
        """Untransformed image (as ``input_kind``) and class index of sample ``index``."""
        path, target = self.samples[index]
        return load_image(path, self.input_kind), target

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        for attempt in range(len(self.samples)):
            i = (index + attempt) % len(self.samples)
            try:
                img, target = self.load(i)
                if self.transform is not None:  # inside: an "encoded" transform decodes here
                    img = self.transform(img)
                break
            except BadImageError as e:
                if not self.skip_bad:
                    raise
                self._record_bad(e)
        else:
            raise BadImageError(self.root, "no readable image in the dataset")
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def _record_bad(self, err: BadImageError) -> None:
        info = get_worker_info()
        self._skipped[0 if info is None else 1 + info.id % (_COUNTER_SLOTS - 1)] += 1
        self.bad_files.add(err.path)
        if not self._warned:
            self._warned = True
            warnings.warn(f"skipping bad image ({err}); further skips are counted in num_skipped", stacklevel=3)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, samples={len(self)}, classes={len(self.classes)}, "
                f"transform={self.transform!r})")
