"""ImageNet-1K labels: the class list, the devkit's validation ground truth, the Kaggle CSV.

- The 1000 wnids: timm's ``timm/data/_info/imagenet_synsets.txt`` (sorted; line i is the
  class index i of every ImageFolder over ImageNet), or the devkit's ``data/meta.mat``.
- The devkit (``ILSVRC2012_devkit_t12.tar.gz``) is read by torchvision's own
  ``parse_devkit_archive`` / ``load_meta_file`` (leaf synsets of ``meta.mat``, and
  ``data/ILSVRC2012_validation_ground_truth.txt``: line i is the ILSVRC2012_ID of
  ``ILSVRC2012_val_<i>.JPEG``). torchvision checks the devkit's md5 itself; that check is
  made earlier here (published checksums, cached, ``--no-verify``), so it is skipped in
  the call.
- Kaggle's ``LOC_val_solution.csv``: ``ImageId,PredictionString``, the first token of the
  string is the image's wnid.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
import importlib.util
import re
import shutil
import tarfile
from pathlib import Path

from .errors import PrepareError

VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
WNID = re.compile(r"n\d{8}")


def timm_info(name: str) -> str:
    """A text file timm ships in ``timm/data/_info/`` (found without importing timm, which loads torch)."""
    spec = importlib.util.find_spec("timm")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "data" / "_info" / name
        if path.is_file():
            return path.read_text(encoding="utf-8")
    raise PrepareError(f"timm/data/_info/{name} not found (install timm: its ImageNet class lists are used)")


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1K wnids in class-index order (sorted)."""
    return timm_info("imagenet_synsets.txt").split()


@contextlib.contextmanager
def _skip_torchvision_md5(module):
    original = module._verify_archive
    module._verify_archive = lambda *args, **kwargs: None
    try:
        yield
    finally:
        module._verify_archive = original


def read_devkit(path: Path, work: Path) -> tuple[dict[str, tuple[str, ...]], list[str]]:
    """(wnid -> class names, the val images' wnids in file order) from a devkit archive, via torchvision.

    ``work`` is a scratch folder: torchvision writes its ``meta.bin`` there (the source
    archive is linked, never touched).
    """
    import torchvision.datasets.imagenet as tv

    name = tv.ARCHIVE_META["devkit"][0]
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.symlink(path.resolve(), work / name)
    try:
        with _skip_torchvision_md5(tv):
            tv.parse_devkit_archive(str(work), name)
        wnid_to_classes, val_wnids = tv.load_meta_file(str(work))
    except KeyError as exc:
        raise PrepareError(f"{path}: data/ILSVRC2012_validation_ground_truth.txt holds class id {exc} "
                           "that data/meta.mat does not define") from None
    except ValueError as exc:
        raise PrepareError(f"{path}: data/ILSVRC2012_validation_ground_truth.txt has a line that is not a class id "
                           f"({exc})") from None
    except (OSError, tarfile.TarError, EOFError, RuntimeError, IndexError, TypeError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, FileNotFoundError):
            raise
        raise PrepareError(f"{path}: not a readable ImageNet devkit (ILSVRC2012_devkit_t12 with data/meta.mat and "
                           f"data/ILSVRC2012_validation_ground_truth.txt): {type(exc).__name__}: {exc}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return wnid_to_classes, list(val_wnids)


def read_kaggle_csv(text: str, where: str, known: set[str]) -> dict[str, str]:
    """{ImageId: wnid} from ``LOC_val_solution.csv`` text; unknown wnids, bad or duplicate rows raise."""
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise PrepareError(f"{where}: not LOC_val_solution.csv: the first line must be 'ImageId,PredictionString', "
                           f"got {','.join(header or [])!r}")
    out: dict[str, str] = {}
    for lineno, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) < 2:
            raise PrepareError(f"{where} line {lineno}: expected 'ImageId,PredictionString', got {','.join(row)!r}")
        image_id, tokens = row[0].strip(), row[1].split()
        wnid = tokens[0] if tokens else ""
        if wnid not in known:
            raise PrepareError(f"{where} line {lineno}: unknown wnid {wnid!r} for {image_id} "
                               f"(not one of the {len(known)} ImageNet-1K classes)")
        if image_id in out:
            raise PrepareError(f"{where} line {lineno}: {image_id} appears twice")
        out[image_id] = wnid
    return out


def val_labels_from_ground_truth(val_wnids: list[str]) -> dict[str, str]:
    """{ImageId: wnid} from the devkit's ground truth (line i labels ``ILSVRC2012_val_<i>``)."""
    return {f"ILSVRC2012_val_{i + 1:08d}": w for i, w in enumerate(val_wnids)}
