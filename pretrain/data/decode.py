"""Decoding one image file, checked and upright: bytes -> uint8 tensor, PIL image or undecoded bytes.

JPEG bytes go through ``torchvision.io.decode_jpeg`` (a uint8 [3, H, W] tensor, so the tensor
transforms need no PIL round trip); other formats, and JPEGs it rejects, through PIL.
The EXIF orientation tag (1-8) of a JPEG, PNG, TIFF or WebP file is applied on every path,
16-bit images are scaled to 8 bits, and every error names the file (:class:`BadImageError`).
:class:`EncodedImage` keeps the bytes for transforms that decode a JPEG at reduced scale.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg


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
