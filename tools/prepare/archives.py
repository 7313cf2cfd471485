"""Read the official archives in place: tar (indexed or streamed), zip, or an extracted folder.

Nothing is ever written next to, or into, a source. An uncompressed tar (ImageNet's train
and val tars, ImageNet-R / -A / -C) is indexed once (headers only, seeking over the data),
then any worker reads any member with ``os.pread`` at its offset, so extraction runs in
parallel without a second copy of the archive on disk; a tar inside it (ImageNet's
per-class train tars) is streamed from that byte range. A compressed tar (ImageNetV2's
``.tar.gz``) can only be read front to back: :meth:`Archive.stream`. Zip members are read
by name (the central directory is the index). A folder stands in for an already extracted
archive (the Kaggle ImageNet tree).

A truncated or damaged archive raises :class:`PrepareError` naming it: a tar member whose
data runs past the end of the file, a tar without its end-of-archive blocks, a zip
without its central directory, a CRC mismatch.
"""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from .errors import PrepareError

_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


@dataclass(frozen=True)
class Member:
    """One file in an archive: its name (``/``-separated, relative), size and, for a tar, data offset."""

    name: str
    size: int
    offset: int = -1


def clean_name(name: str, archive: Path) -> str:
    """A member name without ``./`` prefixes; names that could escape the target are refused."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    if not parts or name.startswith("/") or ".." in parts:
        raise PrepareError(f"{archive}: unsafe member name {name!r} (absolute or with '..')")
    return "/".join(parts)


class _Slice(io.RawIOBase):
    """Read-only file object over bytes [start, start + size) of an open file descriptor."""

    def __init__(self, fd: int, start: int, size: int) -> None:
        self.fd, self.start, self.size, self.pos = fd, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        data = os.pread(self.fd, n, self.start + self.pos)
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


class Archive:
    """Base class: ``members()``, ``read(member)``, ``open(member)`` and ``stream()``."""

    random_access = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._members: list[Member] | None = None

    def members(self) -> list[Member]:
        raise NotImplementedError

    def first(self) -> Member | None:
        """The first member in archive order (None: empty), without listing them all where the format allows."""
        return next(iter(self.members()), None)

    def read(self, member: Member) -> bytes:
        with self.open(member) as f:
            return f.read()

    def open(self, member: Member) -> BinaryIO:
        raise NotImplementedError

    def stream(self) -> Iterator[tuple[Member, bytes]]:
        """Every member with its bytes, in archive order."""
        for m in self.members():
            yield m, self.read(m)

    def copy_to(self, member: Member, dest: Path) -> None:
        """Write the member's bytes to ``dest`` (a folder source copies in the kernel)."""
        data = self.read(member)
        with open(dest, "wb") as f:
            f.write(data)

    def close(self) -> None:
        pass


class TarArchive(Archive):
    """An uncompressed tar, indexed by seeking over the member data."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._fd: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def members(self) -> list[Member]:
        if self._members is None:
            self._members = list(index_tar(self.path))
        return self._members

    def first(self) -> Member | None:
        if self._members is not None:
            return next(iter(self._members), None)
        headers = index_tar(self.path)
        try:
            return next(headers, None)
        finally:
            headers.close()

    def open(self, member: Member) -> BinaryIO:
        return io.BufferedReader(_Slice(self._descriptor(), member.offset, member.size), 1 << 20)

    def read(self, member: Member) -> bytes:
        data = os.pread(self._descriptor(), member.size, member.offset)
        if len(data) != member.size:
            raise PrepareError(f"{self.path}: truncated archive: member {member.name} ends past the end of the file")
        return data

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def index_tar(path: Path) -> Iterator[Member]:
    """The regular-file members of an uncompressed tar, from its headers; checks it is complete."""
    size = path.stat().st_size
    try:
        tf = tarfile.open(path, "r:")
    except tarfile.TarError as exc:
        raise PrepareError(f"{path}: not a readable tar archive ({exc})") from None
    with tf:
        while True:
            try:
                info = tf.next()
            except tarfile.TarError as exc:
                raise PrepareError(f"{path}: damaged or truncated tar archive ({exc})") from None
            if info is None:
                break
            tf.members.clear()  # keep no TarInfo per member: ImageNet-C tars hold a million
            if info.isreg():
                if info.offset_data + info.size > size:
                    raise PrepareError(f"{path}: truncated archive: member {info.name} ends past the end of the file "
                                       f"({info.offset_data + info.size} > {size} bytes)")
                yield Member(clean_name(info.name, path), info.size, info.offset_data)
        end = tf.offset
    with open(path, "rb") as f:
        f.seek(end)
        tail = f.read(1024)
    if len(tail) < 1024 or tail.strip(b"\0"):
        raise PrepareError(f"{path}: truncated archive: no end-of-archive blocks after the last member "
                           f"(the file stops at {size} bytes)")


class TarStreamArchive(Archive):
    """A compressed tar: read front to back only (:meth:`stream`)."""

    random_access = False

    def members(self) -> list[Member]:
        """Every member (decompresses the whole archive once; a val ``.tar.gz``'s image count needs it)."""
        if self._members is None:
            self._members = [m for m, _ in self.stream()]
        return self._members

    def first(self) -> Member | None:
        if self._members is not None:
            return next(iter(self._members), None)
        items = self.stream()
        try:
            return next(items, (None, b""))[0]
        finally:
            items.close()

    def stream(self) -> Iterator[tuple[Member, bytes]]:
        try:
            with tarfile.open(self.path, "r|*") as tf:
                for info in tf:
                    if info.isreg():
                        f = tf.extractfile(info)
                        yield Member(clean_name(info.name, self.path), info.size), f.read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise PrepareError(f"{self.path}: damaged or truncated compressed tar archive ({exc})") from None


class ZipArchive(Archive):
    """A zip archive, members read by name (CRC-checked)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise PrepareError(f"{path}: not a readable zip archive, truncated or damaged ({exc})") from None

    def members(self) -> list[Member]:
        if self._members is None:
            size = self.path.stat().st_size
            out = []
            for info in self._zip.infolist():
                if info.is_dir():
                    continue
                if info.header_offset + info.compress_size > size:
                    raise PrepareError(f"{self.path}: truncated archive: member {info.filename} ends past the end")
                out.append(Member(clean_name(info.filename, self.path), info.file_size))
            self._members = out
        return self._members

    def open(self, member: Member) -> BinaryIO:
        return self._zip.open(self._name(member))

    def read(self, member: Member) -> bytes:
        try:
            return self._zip.read(self._name(member))
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise PrepareError(f"{self.path}: damaged member {member.name} ({exc})") from None

    def _name(self, member: Member) -> str:
        if not hasattr(self, "_names"):
            self._names = {clean_name(i.filename, self.path): i.filename for i in self._zip.infolist()}
        return self._names[member.name]

    def close(self) -> None:
        self._zip.close()


class FolderArchive(Archive):
    """An extracted archive: the files under a folder (hidden files skipped)."""

    def members(self) -> list[Member]:
        if self._members is None:
            out = []
            for dirpath, dirnames, filenames in os.walk(self.path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = Path(dirpath).relative_to(self.path)
                for name in sorted(filenames):
                    if not name.startswith("."):
                        p = Path(dirpath) / name
                        out.append(Member((rel / name).as_posix(), p.stat().st_size))
            self._members = out
        return self._members

    def open(self, member: Member) -> BinaryIO:
        return open(self.path / member.name, "rb")

    def copy_to(self, member: Member, dest: Path) -> None:
        import shutil

        shutil.copyfile(self.path / member.name, dest)


def open_archive(path: str | os.PathLike) -> Archive:
    """The right reader for ``path`` (folder, zip, compressed or plain tar), or a one-line error."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PrepareError(f"{path}: no such file or folder")
    if path.is_dir():
        return FolderArchive(path)
    with open(path, "rb") as f:
        head = f.read(6)
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return ZipArchive(path)
    if any(head.startswith(m) for m in _COMPRESSED_MAGIC):
        return TarStreamArchive(path)
    if zipfile.is_zipfile(path):
        return ZipArchive(path)
    return TarArchive(path)


def iter_nested_tar(outer: Archive, member: Member) -> Iterator[tuple[str, bytes]]:
    """(file name, bytes) of every file of a tar stored inside ``outer`` (read in place, not extracted).

    Inside an indexed tar the inner headers are read by seeking and each file's bytes with one
    ``pread`` at its absolute offset; elsewhere the inner tar is streamed.
    """
    where = f"{outer.path}: member {member.name}"
    if isinstance(outer, TarArchive):
        try:
            with tarfile.open(fileobj=outer.open(member), mode="r:") as inner:
                while (info := inner.next()) is not None:
                    inner.members.clear()
                    if not info.isreg():
                        continue
                    if info.offset_data + info.size > member.size:
                        raise PrepareError(f"{where}: truncated inner tar ({info.name} is cut short)")
                    yield clean_name(info.name, outer.path), outer.read(
                        Member(info.name, info.size, member.offset + info.offset_data))
        except tarfile.TarError as exc:
            raise PrepareError(f"{where}: not a readable tar ({exc})") from None
        return
    try:
        with outer.open(member) as f, tarfile.open(fileobj=f, mode="r|") as inner:
            for info in inner:
                if info.isreg():
                    name = clean_name(info.name, outer.path)
                    data = inner.extractfile(info).read()
                    if len(data) != info.size:
                        raise PrepareError(f"{where}: truncated inner tar ({name} is cut short)")
                    yield name, data
    except tarfile.TarError as exc:
        raise PrepareError(f"{where}: not a readable tar ({exc})") from None
