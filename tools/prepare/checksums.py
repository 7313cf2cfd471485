"""Published checksums of the official archives, and checking a file against them.

A wrong or damaged archive is cheapest to catch before anything is written: each
archive with a published checksum is hashed once (a full sequential read, with a
progress bar; several archives in parallel threads, hashlib releases the GIL) and
compared. The result is cached in the staging tree keyed by (path, size, mtime), so a
resumed run does not hash 150 GB again. ``--no-verify`` skips the check.

Sources of the values:

- ImageNet-1K: torchvision's ``datasets.imagenet.ARCHIVE_META`` (md5), read from
  torchvision itself rather than repeated here;
- COCO 2017 and ADE20K: the SHA-1 sums the GluonCV / MMSeg-era download scripts publish
  for the official URLs (images.cocodataset.org, data.csail.mit.edu);
- ImageNet-R / -A: the md5 sums of people.eecs.berkeley.edu/~hendrycks/imagenet-{r,a}.tar
  (as in the robustness libraries that download them);
- ImageNet-C: the md5 sums of Zenodo record 2235448 (blur, digital, extra, noise, weather).

ImageNetV2 (Hugging Face / S3) and ImageNet-Sketch (Google Drive / Kaggle) publish no
checksum: those archives are not hashed, only checked by their published counts; the
manifest records them as unverified (``"published": null, "verified": false``).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pretrain.atomic import atomic_write_text

from .errors import PrepareError

_CHUNK = 8 << 20


@dataclass(frozen=True)
class Checksum:
    """A published digest of one official archive."""

    algo: str
    hexdigest: str
    source: str


def _imagenet() -> dict[str, Checksum]:
    from torchvision.datasets.imagenet import ARCHIVE_META

    return {name: Checksum("md5", md5, "torchvision.datasets.imagenet.ARCHIVE_META") for name, md5 in ARCHIVE_META.values()}


_OTHERS = {
    "train2017.zip": Checksum("sha1", "10ad623668ab00c62c096f0ed636d6aff41faca5", "images.cocodataset.org (GluonCV mscoco.py)"),
    "val2017.zip": Checksum("sha1", "4950dc9d00dbe1c933ee0170f5797584351d2a41", "images.cocodataset.org (GluonCV mscoco.py)"),
    "annotations_trainval2017.zip": Checksum("sha1", "8551ee4bb5860311e79dace7e79cb91e432e78b3",
                                             "images.cocodataset.org (GluonCV mscoco.py)"),
    "ADEChallengeData2016.zip": Checksum("sha1", "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
                                         "data.csail.mit.edu (GluonCV ade20k.py)"),
    "imagenet-r.tar": Checksum("md5", "a61312130a589d0ca1a8fca1f2bd3337", "people.eecs.berkeley.edu/~hendrycks"),
    "imagenet-a.tar": Checksum("md5", "c3e55429088dc681f30d81f4726b6595", "people.eecs.berkeley.edu/~hendrycks"),
    "blur.tar": Checksum("md5", "2d8e81fdd8e07fef67b9334fa635e45c", "zenodo.org/record/2235448"),
    "digital.tar": Checksum("md5", "89157860d7b10d5797849337ca2e5c03", "zenodo.org/record/2235448"),
    "extra.tar": Checksum("md5", "d492dfba5fc162d8ec2c3cd8ee672984", "zenodo.org/record/2235448"),
    "noise.tar": Checksum("md5", "e80562d7f6c3f8834afb1ecf27252745", "zenodo.org/record/2235448"),
    "weather.tar": Checksum("md5", "33ffea4db4d93fe4a428c40a6ce0c25d", "zenodo.org/record/2235448"),
}


def published(official_name: str) -> Checksum | None:
    """The published checksum of the official archive ``official_name``, or None if none is published."""
    if official_name in _OTHERS:
        return _OTHERS[official_name]
    return _imagenet().get(official_name)


def file_digest(path: str | os.PathLike, algo: str, progress=None) -> str:
    """Hex digest of a file, read in 8 MiB chunks (``progress(n)`` after each)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return h.hexdigest()


class DigestCache:
    """Digests already computed, keyed by path, size and mtime (a JSON file in the staging tree)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    @staticmethod
    def _key(file: Path, algo: str) -> str:
        st = file.stat()
        return f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{algo}"

    def get(self, file: Path, algo: str) -> str | None:
        return self.data.get(self._key(file, algo))

    def put(self, file: Path, algo: str, digest: str) -> None:
        self.data[self._key(file, algo)] = digest
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True))


def verify_archives(
    archives: list[tuple[Path, str]], cache: DigestCache, workers: int = 4, progress: bool = True
) -> dict[str, dict]:
    """Check each ``(file, official name)`` against its published checksum.

    Returns {file: {"algo", "digest", "published", "verified"}} (``published`` None when
    the archive has no published checksum: it is then not hashed). Raises
    :class:`PrepareError` on the first mismatch, naming the file and both digests.
    """
    from tqdm.auto import tqdm

    todo = [(f, name, published(name)) for f, name in archives if f.is_file()]
    result: dict[str, dict] = {str(f): {"published": None, "verified": False}
                               for f, name in archives if not (f.is_file() and published(name))}
    to_hash = [(f, name, c) for f, name, c in todo if c is not None and cache.get(f, c.algo) is None]
    total = sum(f.stat().st_size for f, _, _ in to_hash)
    with tqdm(total=total, unit="B", unit_scale=True, desc="checksums", disable=not progress or not total,
              leave=False) as bar, ThreadPoolExecutor(max(1, min(workers, len(to_hash) or 1))) as pool:
        digests = {str(f): pool.submit(file_digest, f, c.algo, bar.update) for f, _, c in to_hash}
        for f, name, c in todo:
            if c is None:
                continue
            digest = cache.get(f, c.algo)
            if digest is None:
                digest = digests[str(f)].result()
                cache.put(f, c.algo, digest)
            if digest != c.hexdigest:
                raise PrepareError(
                    f"{f}: checksum mismatch for {name}: {c.algo} {digest}, published {c.hexdigest} ({c.source}); "
                    "the file is damaged, truncated or another archive (--no-verify skips this check)")
            result[str(f)] = {"algo": c.algo, "digest": digest, "published": c.source, "verified": True}
    return result
