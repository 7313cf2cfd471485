"""The ImageNet test variants as ``python -m tools.prepare_data`` lays them out, and their class sets.

One folder VARIANTS holds a sub-folder per variant (tools/prepare/variants.py is the source
of truth for the layout):

    VARIANTS/v2/<wnid>/*        ImageNetV2 matched-frequency, 1000 classes
    VARIANTS/r/<wnid>/*         ImageNet-R, 200 classes
    VARIANTS/a/<wnid>/*         ImageNet-A, 200 classes
    VARIANTS/sketch/<wnid>/*    ImageNet-Sketch, 1000 classes
    VARIANTS/c/<corruption>/<severity>/<wnid>/*   ImageNet-C, severities 1..5
    VARIANTS/real/real_labels.json                ReaL labels of the ImageNet-1K val images

Class folders are WordNet ids, so an ImageFolder orders them by sorted wnid; the classifier's
output ``i`` is the ``i``-th of *its* classes (for ImageNet-1K: timm's ``imagenet_synsets.txt``).
ImageNet-R and -A cover 200 of the 1000 classes: their score is the argmax over those 200
outputs only (timm's ``imagenet_{r,a}_indices.txt``: index k = the 1000-class index of the
k-th sorted wnid), which :func:`subset_mask` computes for any classifier class list.
A folder that is missing, or whose class folders are not the set the variant must have,
raises :class:`VariantError` with one line that says what differs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

from pretrain.data.imagefolder import ImageFolderDataset

from .mce import SEVERITIES

# set name -> (what it is, how tools.prepare_data makes it)
VARIANTS: dict[str, tuple[str, str]] = {
    "v2": ("ImageNetV2 matched-frequency", "imagenet-v2 --from imagenetv2-matched-frequency.tar.gz"),
    "r": ("ImageNet-R", "imagenet-r --from imagenet-r.tar"),
    "a": ("ImageNet-A", "imagenet-a --from imagenet-a.tar"),
    "sketch": ("ImageNet-Sketch", "imagenet-sketch --from ImageNet-Sketch.zip"),
    "c": ("ImageNet-C", "imagenet-c --from noise.tar blur.tar weather.tar digital.tar"),
    "real": ("ImageNet-ReaL", "imagenet-real [--from IMAGENET/val]"),
}
SUBSETS = ("r", "a")  # the variants scored over a 200-class subset
PREPARED = "prepared.json"
REAL_LABELS = "real_labels.json"


class VariantError(ValueError):
    """A variant folder that is missing, incomplete or holds the wrong classes (one line)."""


def _prepare_hint(name: str) -> str:
    return f"python -m tools.prepare_data {VARIANTS[name][1]} --to VARIANTS"


# ---------------------------------------------------------------- timm's index files
def timm_info(name: str) -> Path:
    """A file timm ships in ``timm/data/_info`` (class lists, the R / A indices, ReaL labels)."""
    path = Path(str(resources.files("timm.data").joinpath("_info", name)))
    if not path.is_file():
        raise VariantError(f"timm does not ship timm/data/_info/{name} in this version: pass the file yourself")
    return path


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1K wnids in class-index order (sorted; timm's ``imagenet_synsets.txt``)."""
    return _lines(timm_info("imagenet_synsets.txt"))


def subset_wnids(name: str) -> list[str]:
    """The 200 sorted wnids of ImageNet-R (``name='r'``) or -A (``'a'``), as timm ships them."""
    return _lines(timm_info(f"imagenet_{name}_synsets.txt"))


def timm_subset_indices(name: str) -> list[int]:
    """timm's ``imagenet_{r,a}_indices.txt``: the 1000-class index of each sorted subset wnid."""
    return [int(x) for x in _lines(timm_info(f"imagenet_{name}_indices.txt"))]


def subset_mask(classifier_classes: Sequence[str], subset: Sequence[str]) -> list[int]:
    """Output index of each ``subset`` wnid (in the order given) among the classifier's classes.

    ``logits[:, mask].argmax(1)`` is then an index into ``subset``; for the ImageNet-1K
    classes and R / A this equals timm's index files. A wnid the classifier lacks is an error.
    """
    where = {c: i for i, c in enumerate(classifier_classes)}
    missing = [w for w in subset if w not in where]
    if missing:
        raise VariantError(f"{len(missing)} classes of the subset are not among the classifier's "
                           f"{len(classifier_classes)} classes (first: {', '.join(missing[:3])})")
    return [where[w] for w in subset]


# ---------------------------------------------------------------- folders
def _class_difference(found: Sequence[str], expected: Sequence[str]) -> str:
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} (first: {', '.join(missing[:3])})")
    if extra:
        parts.append(f"unexpected {len(extra)} (first: {', '.join(extra[:3])})")
    return "; ".join(parts)


def read_prepared(folder: Path) -> dict[str, Any] | None:
    """``prepared.json`` of a variant folder (written last by tools.prepare_data), or None."""
    path = folder / PREPARED
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise VariantError(f"{path} is not valid JSON ({exc}); prepare the variant again") from None


def variant_folder(root: str | os.PathLike, name: str) -> Path:
    """``root/name``, or a one-line error saying how to make it."""
    if name not in VARIANTS:
        raise VariantError(f"unknown ImageNet variant {name!r}; choose from {', '.join(VARIANTS)}")
    folder = Path(root) / name
    if not folder.is_dir():
        raise VariantError(f"{VARIANTS[name][0]} folder not found: {folder} (make it with: {_prepare_hint(name)})")
    return folder


def class_folders(folder: Path) -> list[str]:
    """Sorted class folder names of an ImageFolder (hidden folders ignored)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def check_classes(folder: Path, found: Sequence[str], expected: Sequence[str], what: str, partial: bool = False) -> None:
    """The class folders of ``folder`` must be exactly ``expected`` (a subset of them when ``partial``)."""
    if list(found) == sorted(expected) or (partial and found and set(found) <= set(expected)):
        return
    hint = "" if partial else " (a subset is read only when its prepared.json says partial)"
    raise VariantError(f"{folder} holds {len(found)} class folders, not the {len(expected)} {what}: "
                       f"{_class_difference(found, expected)}{hint}")


@dataclass
class VariantSet:
    """One evaluation set: its images, the outputs it is scored over, and where it came from.

    ``mask`` is None when the set is scored over every output of the classifier; otherwise the
    output index of each class the set is scored among (the 200-class R / A rule). Targets index
    the classifier's outputs, or ``mask``'s order when there is one (a partial folder's classes
    are mapped there, so its score is still over the whole class set).
    """

    name: str
    dataset: ImageFolderDataset
    classes: list[str]
    mask: list[int] | None
    folder: Path
    partial: bool = False


def expected_classes(name: str, classifier_classes: Sequence[str]) -> tuple[list[str], str]:
    """The classes a variant folder must hold, and how to name them in an error."""
    if name in SUBSETS:
        return subset_wnids(name), f"wnids of timm's imagenet_{name}_synsets.txt"
    return list(classifier_classes), "classes of the classifier"


def _image_folder(folder: Path, transform: Callable | None, scored: Sequence[str], skip_bad: bool) -> ImageFolderDataset:
    """An ImageFolder whose targets are positions in ``scored`` (the folder's own class order may be a subset)."""
    found = class_folders(folder)
    where = {c: i for i, c in enumerate(scored)}
    remap = [where[c] for c in found]
    identity = remap == list(range(len(remap)))
    return ImageFolderDataset(folder, transform=transform, target_transform=None if identity else remap.__getitem__,
                              skip_bad=skip_bad, substitute=False)


def open_variant(
    root: str | os.PathLike,
    name: str,
    transform: Callable | None,
    classifier_classes: Sequence[str],
    skip_bad: bool = False,
) -> VariantSet:
    """An ImageFolder over ``root/name`` (v2, r, a or sketch) with its class check and output mask."""
    folder = variant_folder(root, name)
    prepared = read_prepared(folder) or {}
    partial = bool(prepared.get("partial", False))
    found = class_folders(folder)
    expected, what = expected_classes(name, classifier_classes)
    check_classes(folder, found, expected, what, partial)
    mask = subset_mask(classifier_classes, expected) if name in SUBSETS else None
    ds = _image_folder(folder, transform, expected, skip_bad)
    return VariantSet(name, ds, found, mask, folder, partial)


def corruption_sets(
    root: str | os.PathLike,
    transform: Callable | None,
    classifier_classes: Sequence[str],
    corruptions: Sequence[str] | None = None,
    skip_bad: bool = False,
) -> list[tuple[str, int, VariantSet]]:
    """Every (corruption, severity, set) below ``root/c`` (``c/<corruption>/<severity>/<wnid>/*``).

    ``corruptions`` None = every corruption folder present, in the order of ``prepared.json``
    (the mCE order) when it lists them, else sorted. A requested corruption that is missing, a
    severity folder other than 1..5, or a class set other than the classifier's is an error.
    """
    folder = variant_folder(root, "c")
    prepared = read_prepared(folder) or {}
    partial = bool(prepared.get("partial", False))
    present = class_folders(folder)
    listed = [c for c in [*prepared.get("corruptions", []), *prepared.get("extra_corruptions", [])] if c in present]
    order = listed + sorted(set(present) - set(listed))
    if corruptions is not None:
        absent = [c for c in corruptions if c not in present]
        if absent:
            raise VariantError(f"ImageNet-C corruption folders not found in {folder}: {', '.join(absent)} "
                               f"(present: {', '.join(order) or 'none'})")
        order = list(corruptions)
    if not order:
        raise VariantError(f"no corruption folders in {folder} (make them with: {_prepare_hint('c')})")
    out = []
    for corruption in order:
        cdir = folder / corruption
        severities = class_folders(cdir)
        bad = [s for s in severities if s not in {str(level) for level in SEVERITIES}]
        if bad or not severities:
            raise VariantError(f"{cdir} must hold severity folders 1..5, found: {', '.join(severities) or 'none'}")
        for sev in sorted(severities, key=int):
            sdir = cdir / sev
            found = class_folders(sdir)
            check_classes(sdir, found, classifier_classes, "classes of the classifier", partial)
            ds = _image_folder(sdir, transform, classifier_classes, skip_bad)
            out.append((corruption, int(sev), VariantSet(f"c/{corruption}/{sev}", ds, found, None, sdir, partial)))
    return out


# ---------------------------------------------------------------- ReaL
def load_real_labels(path: str | os.PathLike | None, classifier_classes: Sequence[str]) -> tuple[dict[str, list[int]], str]:
    """ReaL labels as {val file name: [classifier output indices]} and where they came from.

    ``path``: the prepared ``VARIANTS/real/real_labels.json`` ({"classes", "labels": {name: [...]}}),
    timm's ``imagenet_real_labels.json`` layout (a list, entry i = ILSVRC2012_val_{i+1:08d}.JPEG,
    indices into the sorted 1000 wnids), or None for the file timm ships. Labels are mapped onto
    the classifier's classes by wnid, so the result indexes its outputs.
    """
    source = Path(path) if path is not None else timm_info("imagenet_real_labels.json")
    if not source.is_file():
        raise VariantError(f"ReaL labels not found: {source} (make them with: {_prepare_hint('real')})")
    try:
        data = json.loads(source.read_text())
    except ValueError as exc:
        raise VariantError(f"{source} is not valid JSON ({exc})") from None
    if isinstance(data, list):
        classes, labels = imagenet_classes(), {f"ILSVRC2012_val_{i + 1:08d}.JPEG": v for i, v in enumerate(data)}
    elif isinstance(data, dict) and isinstance(data.get("labels"), dict):
        classes, labels = list(data.get("classes") or imagenet_classes()), data["labels"]
    else:
        raise VariantError(f"{source}: expected timm's list of label lists or {{'classes', 'labels'}}")
    where = {c: i for i, c in enumerate(classifier_classes)}
    missing = [c for c in classes if c not in where]
    if missing:
        raise VariantError(f"{len(missing)} ReaL classes are not among the classifier's {len(classifier_classes)} "
                           f"(first: {', '.join(missing[:3])}): ReaL needs an ImageNet-1K classifier")
    remap = [where[c] for c in classes]
    return {name: [remap[int(j)] for j in v] for name, v in labels.items()}, str(source)
