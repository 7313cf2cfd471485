"""Check COCO instance annotations and ADE20K label maps before training on them.

A broken annotation (a box with negative width, an annotation pointing at a
missing image or category, a label outside the class range) does not crash
Detectron2 or MMSeg: it silently trains on, or scores, wrong targets. These
validators read the files once and raise :class:`DatasetError` listing every
problem (file, record id, field, value), or return a short summary.

    validate_coco_json("data/coco/annotations/instances_val2017.json")
    validate_ade20k("data/ade/ADEChallengeData2016", num_classes=150)
    validate_imagefolder("data/imagenet")

From the shell (a summary line, then each problem; exit 1 on any problem, 2 on a
path that does not exist):

    python -m pretrain.data.validate imagefolder data/imagenet
    python -m pretrain.data.validate coco data/coco/annotations/instances_val2017.json --image-root data/coco/val2017
    python -m pretrain.data.validate ade20k data/ade/ADEChallengeData2016 --num-classes 150

EXIF rule (the one every loader of the suite follows): image pixels are used upright,
with the file's EXIF orientation applied (the suite's ImageFolder decoder, Detectron2's
``read_image`` and MMCV's colour decode all do this), so COCO ``width`` / ``height`` and
boxes, and ADE20K label maps, are in the upright frame; label maps themselves are read
as stored (never rotated). The validators compare sizes in that frame.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from .image_shape import shape_problem

ADE_SPLITS = {"training": "training", "validation": "validation"}
_MAX_LISTED = 20


class DatasetError(ValueError):
    """A dataset that would train or evaluate on wrong targets; the message lists the problems."""

    def __init__(self, source: str | os.PathLike, problems: list[str]) -> None:
        shown = problems[:_MAX_LISTED]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more)
        self.source = str(source)
        self.problems = problems


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- COCO
def validate_coco_json(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Validate a COCO instances file; returns counts, or raises :class:`DatasetError`.

    Checks: the top-level lists; unique integer ids; images with a file name and
    positive size; every annotation's image and category exist; bbox is 4 finite
    numbers with non-negative width and height inside its image (1 px slack);
    segmentation is polygons (even length, >= 3 points) or RLE with the image's
    size; iscrowd is 0/1; area is finite and >= 0. With ``image_root``, every image
    file must exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    return validate_coco_dict(read_json_file(path), source=path, image_root=image_root)


# magic numbers of the compressed forms annotation files travel in
_COMPRESSED = {b"\x1f\x8b": "gzip (gunzip it)", b"BZh": "bzip2 (bunzip2 it)", b"\xfd7zXZ": "xz (unxz it)",
               b"PK\x03\x04": "a zip archive (unzip it)", b"\x28\xb5\x2f\xfd": "zstd (unzstd it)"}


def read_json_file(path: Path) -> Any:
    """A JSON file as Detectron2 / pycocotools read it (UTF-8 text); a compressed, non-UTF-8,
    malformed or absurdly nested file is a :class:`DatasetError` naming the file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(path, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    for magic, kind in _COMPRESSED.items():
        if raw.startswith(magic):
            raise DatasetError(path, [f"the file is compressed with {kind}: the loaders read plain JSON text"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(path, [f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}): "
                                  "COCO json files are UTF-8; re-encode it (e.g. iconv -f latin1 -t utf-8)"]) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(path, [f"not valid JSON: {exc}"]) from exc
    except RecursionError as exc:
        raise DatasetError(path, ["not a COCO file: its JSON is nested too deeply to read"]) from exc


def validate_coco_dict(
    data: Any, source: str | os.PathLike = "<dict>", image_root: str | os.PathLike | None = None
) -> dict[str, Any]:
    """:func:`validate_coco_json` for an already loaded dict."""
    if not isinstance(data, dict):
        raise DatasetError(source, [f"top level must be an object, got {type(data).__name__}"])
    problems: list[str] = []
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            problems.append(f"missing or non-list '{key}'")
    if problems:
        raise DatasetError(source, problems)

    images: dict[int, dict] = {}
    for i, img in enumerate(data["images"]):
        iid = img.get("id") if isinstance(img, dict) else None
        where = f"images[{i}] (id={iid})"
        if not _is_int(iid):
            problems.append(f"{where}: 'id' must be an integer")
            continue
        if iid in images:
            problems.append(f"{where}: duplicate image id {iid}")
        if not isinstance(img.get("file_name"), str) or not img["file_name"]:
            problems.append(f"{where}: missing 'file_name'")
        elif image_root is not None and not (Path(image_root) / img["file_name"]).is_file():
            problems.append(f"{where}: image file not found: {Path(image_root) / img['file_name']}")
        elif image_root is not None:
            problems += _check_image_size(Path(image_root) / img["file_name"], img, where)
        for side in ("width", "height"):
            if not _is_int(img.get(side)) or img[side] <= 0:
                problems.append(f"{where}: '{side}' must be a positive integer, got {img.get(side)!r}")
        if _is_int(img.get("width")) and _is_int(img.get("height")) and img["width"] > 0 and img["height"] > 0:
            shape = shape_problem(img["width"], img["height"])  # the loaders' rule (pretrain.data.image_shape)
            if shape is not None:
                problems.append(f"{where} {img.get('file_name')}: cannot train on it: {shape}")
        images[iid] = img

    categories: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        cid = cat.get("id") if isinstance(cat, dict) else None
        if not _is_int(cid):
            problems.append(f"categories[{i}]: 'id' must be an integer, got {cid!r}")
            continue
        if cid in categories:
            problems.append(f"categories[{i}]: duplicate category id {cid}")
        if not isinstance(cat.get("name"), str):
            problems.append(f"categories[{i}] (id={cid}): missing 'name'")
        categories[cid] = str(cat.get("name"))
    if not categories:
        problems.append("no categories")

    ann_ids: set[int] = set()
    per_category: Counter = Counter()
    degenerate = 0
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            problems.append(f"annotations[{i}]: not an object")
            continue
        aid = ann.get("id")
        where = f"annotation id={aid} (annotations[{i}])"
        if not _is_int(aid):
            problems.append(f"annotations[{i}]: 'id' must be an integer, got {aid!r}")
        elif aid in ann_ids:
            problems.append(f"{where}: duplicate annotation id")
        else:
            ann_ids.add(aid)
        img = images.get(ann.get("image_id")) if _is_int(ann.get("image_id")) else None
        if not _is_int(ann.get("image_id")):
            problems.append(f"{where}: image_id must be an integer, got {ann.get('image_id')!r}")
        elif img is None:
            problems.append(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        cid = ann.get("category_id")
        if not _is_int(cid):
            problems.append(f"{where}: category_id must be an integer, got {cid!r}")
        elif cid not in categories:
            problems.append(f"{where}: category_id {cid!r} is not in 'categories' (ids {sorted(categories)[:10]}...)")
        else:
            per_category[cid] += 1
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):
            problems.append(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
        if "area" in ann and (not _is_number(ann["area"]) or ann["area"] < 0):
            problems.append(f"{where}: area must be a finite number >= 0, got {ann['area']!r}")
        problems += _check_bbox(ann.get("bbox"), img, where)
        bbox = ann.get("bbox")
        if isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox) and (bbox[2] == 0 or bbox[3] == 0):
            degenerate += 1
        if "segmentation" in ann:
            problems += _check_segmentation(ann["segmentation"], img, where)
    if problems:
        raise DatasetError(source, problems)
    return {
        "images": len(images),
        "annotations": len(ann_ids),
        "categories": len(categories),
        "per_category": {categories[c]: n for c, n in sorted(per_category.items())},
        "zero_size_boxes": degenerate,
    }


def upright_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image as every loader of the suite shows it: EXIF orientation applied."""
    with Image.open(path) as img:
        w, h = img.size
        return (h, w) if img.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)


def _check_image_size(path: Path, img: dict, where: str) -> list[str]:
    try:
        w, h = upright_size(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable image is a problem to list
        return [f"{where}: cannot read image file {path} ({type(exc).__name__}: {exc})"]
    if _is_int(img.get("width")) and _is_int(img.get("height")) and (img["width"], img["height"]) != (w, h):
        return [f"{where}: 'width' x 'height' {img['width']} x {img['height']} differs from {path.name}, "
                f"{w} x {h} upright (EXIF orientation applied)"]
    return []


def _check_bbox(bbox: Any, img: dict | None, where: str) -> list[str]:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return [f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"]
    x, y, w, h = bbox
    out = []
    if w < 0 or h < 0:
        out.append(f"{where}: bbox {bbox} has negative width or height")
    if img is not None and _is_int(img.get("width")) and _is_int(img.get("height")):
        W, H = img["width"], img["height"]
        if x < -1 or y < -1 or x + max(w, 0) > W + 1 or y + max(h, 0) > H + 1:
            out.append(f"{where}: bbox {bbox} lies outside its {W} x {H} image (id={img.get('id')})")
    return out


def _check_segmentation(seg: Any, img: dict | None, where: str) -> list[str]:
    if isinstance(seg, list):
        if not seg:
            return [f"{where}: empty segmentation polygon list"]
        out = []
        for k, poly in enumerate(seg):
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or not all(_is_number(v) for v in poly):
                n = len(poly) if isinstance(poly, list) else type(poly).__name__
                out.append(f"{where}: segmentation polygon {k} must be an even list of >= 6 finite numbers (got {n})")
        return out
    if isinstance(seg, dict):
        if "counts" not in seg or "size" not in seg:
            return [f"{where}: RLE segmentation needs 'counts' and 'size'"]
        size, counts = seg["size"], seg["counts"]
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            return [f"{where}: RLE 'size' must be [height, width] integers, got {size!r}"]
        if not (isinstance(counts, str) or (isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts))):
            return [f"{where}: RLE 'counts' must be a compressed string or a list of run lengths, "
                    f"got {type(counts).__name__}"]
        if img is not None and list(size) != [img.get("height"), img.get("width")]:
            return [f"{where}: RLE size {size} differs from its image's [height, width] "
                    f"[{img.get('height')}, {img.get('width')}]"]
        return []
    return [f"{where}: segmentation must be polygons or RLE, got {type(seg).__name__}"]


# ----------------------------------------------------------------------------- ADE20K
def validate_ade20k(
    root: str | os.PathLike,
    num_classes: int = 150,
    splits: Iterable[str] = ("training", "validation"),
    max_files: int | None = None,
    ignore_index: int | None = 255,
) -> dict[str, Any]:
    """Validate an ADEChallengeData2016-style folder; returns counts, or raises :class:`DatasetError`.

    Layout: ``root/images/<split>/*.jpg`` and ``root/annotations/<split>/*.png`` with
    the same stems. Every label map must be a single-channel 8-bit PNG of its
    image's size with values in 0..num_classes (0 = unlabelled; ``ignore_index``
    also allowed). ``max_files`` checks only the first N pairs per split (sorted),
    for a quick look at a large copy.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ADE20K folder not found: {root}")
    problems: list[str] = []
    summary: dict[str, Any] = {"num_classes": num_classes}
    histogram = np.zeros(256, dtype=np.int64)
    for split in splits:
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        missing = [str(d) for d in (img_dir, ann_dir) if not d.is_dir()]
        if missing:
            problems.append(f"split '{split}': folder(s) not found: {', '.join(missing)}")
            continue
        images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
        labels = {p.stem: p for p in sorted(ann_dir.iterdir()) if p.suffix.lower() == ".png"}
        if not images:
            problems.append(f"split '{split}': no images in {img_dir}")
        for stem in sorted(set(images) - set(labels))[:_MAX_LISTED]:
            problems.append(f"{images[stem]}: no label map {ann_dir / (stem + '.png')}")
        for stem in sorted(set(labels) - set(images))[:_MAX_LISTED]:
            problems.append(f"{labels[stem]}: no image with this name in {img_dir}")
        pairs = sorted(set(images) & set(labels))
        if max_files is not None:
            pairs = pairs[:max_files]
        for stem in pairs:
            problems += _check_label_map(images[stem], labels[stem], num_classes, ignore_index, histogram)
        summary[split] = len(pairs)
    if problems:
        raise DatasetError(root, problems)
    summary["label_values"] = [int(v) for v in np.flatnonzero(histogram)]
    return summary


def _check_label_map(
    image_path: Path, label_path: Path, num_classes: int, ignore_index: int | None, histogram: np.ndarray
) -> list[str]:
    try:
        with Image.open(label_path) as lab:
            mode, size = lab.mode, lab.size
            array = np.asarray(lab) if mode in ("L", "P") else None
        image_size = upright_size(image_path)  # label maps are not rotated: the image's EXIF is applied
    except Exception as exc:  # unreadable or truncated file
        return [f"{label_path}: cannot read ({type(exc).__name__}: {exc})"]
    if array is None:
        return [f"{label_path}: label map must be a single-channel 8-bit PNG (mode L or P), got mode {mode}"]
    out = []
    if size != image_size:
        out.append(f"{label_path}: size {size[0]} x {size[1]} differs from its image {image_path.name} "
                   f"({image_size[0]} x {image_size[1]} upright, EXIF orientation applied)")
    shape = shape_problem(*image_size)  # the loaders' rule (pretrain.data.image_shape)
    if shape is not None:
        out.append(f"{image_path}: cannot train on it: {shape}")
    counts = np.bincount(array.reshape(-1), minlength=256)
    histogram += counts[:256]
    allowed = np.zeros(256, dtype=bool)
    allowed[: num_classes + 1] = True
    if ignore_index is not None and 0 <= ignore_index < 256:
        allowed[ignore_index] = True
    bad = np.flatnonzero((counts[:256] > 0) & ~allowed)
    if bad.size:
        out.append(f"{label_path}: label values {bad.tolist()} outside 0..{num_classes} "
                   f"(0 = unlabelled, {num_classes} classes)")
    return out


# ----------------------------------------------------------------------------- ImageFolder
def validate_imagefolder(root: str | os.PathLike, max_files: int | None = None) -> dict[str, Any]:
    """Decode every image of an ImageFolder (``root/<split>/<class>/*`` or ``root/<class>/*``), or of a
    flat image folder (COCO's ``train2017/``), fully; returns counts per folder, or raises
    :class:`DatasetError` naming each unreadable file.

    The folder rules are the loaders' own (:func:`pretrain.data.imagefolder.split_problems`):
    a split without images, or with a class folder without images, is a problem here as it is
    an error in training; symbolic links are followed, each file once, and the loops met are
    named in the summary (``symlink_loops``). ``max_files`` checks only the first N files per
    split (sorted).
    """
    from .decode import BadImageError, load_image
    from .imagefolder import IMG_EXTENSIONS, find_classes, scan_class_folders, split_problems

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ImageFolder not found: {root}")
    splits = [d for d in sorted(root.iterdir()) if d.name in ("train", "val") and d.is_dir()] or [root]
    problems: list[str] = []
    summary: dict[str, Any] = {}
    for folder in splits:
        loops: list[str] = []
        try:
            if any(e.is_dir() for e in folder.iterdir()):
                classes = find_classes(folder)
                samples, empty, loops = scan_class_folders(folder, classes)
                problems += split_problems(folder, samples, empty)
            else:  # a flat folder of images
                classes = []
                samples = [(str(p), 0) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMG_EXTENSIONS]
                if not samples:
                    problems.append(f"no images ({', '.join(IMG_EXTENSIONS)}) found in {folder}")
        except (FileNotFoundError, NotADirectoryError) as exc:
            problems.append(str(exc))
            continue
        if max_files is not None:
            samples = samples[:max_files]
        for path, _ in samples:
            try:
                load_image(path, "tensor")
            except BadImageError as exc:
                problems.append(f"{path}: {exc.reason}")
        summary[folder.name] = {"images": len(samples), "classes": len(classes), "symlink_loops": loops}
    if problems:
        raise DatasetError(root, problems)
    return summary


# ----------------------------------------------------------------------------- command line
def _summary_line(kind: str, path: str, summary: dict[str, Any]) -> str:
    if kind == "coco":
        return (f"ok: {path}: {summary['images']} images, {summary['annotations']} annotations, "
                f"{summary['categories']} categories")
    if kind == "ade20k":
        pairs = ", ".join(f"{k}: {v} pairs" for k, v in summary.items() if isinstance(v, int) and k != "num_classes")
        return f"ok: {path}: {pairs}, {summary['num_classes']} classes, label values {summary['label_values'][:12]}"
    splits = ", ".join(f"{k}: {v['images']} images in {v['classes']} classes" for k, v in summary.items())
    loops = [loop for v in summary.values() for loop in v.get("symlink_loops", [])]
    notes = "".join(f"\nnote: symbolic link loop not followed again (each file counted once): {loop}" for loop in loops)
    return f"ok: {path}: {splits}{notes}"


def main(argv: list[str] | None = None) -> int:
    """``python -m pretrain.data.validate {imagefolder,coco,ade20k} PATH``: 0 clean, 1 problems, 2 no such path."""
    import argparse
    import sys

    p = argparse.ArgumentParser("python -m pretrain.data.validate", description="check a data set before training on it")
    p.add_argument("kind", choices=["imagefolder", "coco", "ade20k"])
    p.add_argument("path", help="ImageFolder root, COCO instances json, or ADE20K root")
    p.add_argument("--image-root", default=None, help="coco: the image folder (also checks files and sizes)")
    p.add_argument("--num-classes", type=int, default=150, help="ade20k: classes of the decode head")
    p.add_argument("--max-files", type=int, default=None, help="imagefolder / ade20k: check the first N per split")
    args = p.parse_args(argv)
    try:
        if args.kind == "coco":
            summary = validate_coco_json(args.path, args.image_root)
        elif args.kind == "ade20k":
            summary = validate_ade20k(args.path, num_classes=args.num_classes, max_files=args.max_files)
        else:
            summary = validate_imagefolder(args.path, max_files=args.max_files)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DatasetError as exc:
        print(f"FAILED: {exc.source}: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            print(f"  {problem}")
        return 1
    print(_summary_line(args.kind, args.path, summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
