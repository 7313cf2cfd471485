"""COCO 2017 from its official zips into Detectron2's builtin layout.

    python -m tools.prepare_data coco --from train2017.zip val2017.zip annotations_trainval2017.zip --to $DETECTRON2_DATASETS

writes ``$DETECTRON2_DATASETS/coco/{train2017,val2017,annotations}`` (``annotations/``
holds every JSON of the annotations zip: instances, captions, person_keypoints), which
is what ``detectron2.data.datasets.builtin`` registers as ``coco_2017_train`` /
``coco_2017_val``. Each of the three is a unit: staged, counted (118,287 / 5,000 images;
``--allow-partial``), checked by ``pretrain.data.validate.validate_coco_json`` against
its images (every image of the JSON present with its size, boxes inside, ids
consistent, and as many image files as JSON images), then moved into place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .archives import Member, ZipArchive, open_archive
from .context import Context
from .errors import PrepareError
from .extract import count_files, extract_routed
from .staging import Staging
from .validation import dataset_error_line

OFFICIAL = {"train2017": "train2017.zip", "val2017": "val2017.zip", "annotations": "annotations_trainval2017.zip"}
PUBLISHED = {"train2017": 118_287, "val2017": 5_000}


def guess_role(path: Path) -> str:
    """Which COCO zip ``path`` is: its official name, else its first member's folder."""
    for role, name in OFFICIAL.items():
        if path.name == name:
            return role
    archive = open_archive(path)
    try:
        if not isinstance(archive, ZipArchive):
            raise PrepareError(f"{path}: not a zip archive: the COCO 2017 downloads are zips")
        found = archive.first()
    finally:
        archive.close()
    first = found.name if found is not None else ""
    top = first.split("/", 1)[0]
    if top in OFFICIAL:
        return top
    raise PrepareError(f"{path}: not a COCO 2017 zip (first member {first!r}); name its role: "
                       "train2017=PATH, val2017=PATH or annotations=PATH")


def _route(path: Path, role: str, unit: Path):
    head = f"{role}/"

    def route(m: Member) -> Path | None:
        if m.name.startswith("__MACOSX/"):
            return None
        rest = m.name[len(head):] if m.name.startswith(head) else None
        if rest is None or "/" in rest:
            raise PrepareError(f"{path}: not {OFFICIAL[role]}: member {m.name!r} is not {head}<file>")
        return unit / rest

    return route


def prepare_coco(ctx: Context) -> dict[str, Any]:
    """Prepare the COCO units the sources give; returns the manifest."""
    sources = ctx.split_roles(tuple(OFFICIAL), guess_role)
    dataset_dir = ctx.to / "coco"
    staging = ctx.staging(sources, dataset_dir)
    try:
        return _prepare(ctx, sources, staging)
    finally:
        staging.close()


def _place(staging: Staging, unit: str, staged: dict[str, Path]) -> Path | None:
    if unit in staged:
        return staged[unit]
    final = staging.final_path(unit)  # recorded and in place (kept, or an --overwrite run not redoing it)
    return final if unit in staging.manifest().get("units", {}) and final.exists() else None


def _prepare(ctx: Context, sources: dict[str, Path], staging: Staging) -> dict[str, Any]:
    todo = [r for r in OFFICIAL if r in sources and not staging.is_done(r)]
    for role in sources:
        if role not in todo:
            ctx.log(f"coco {role:11s} kept  {staging.final_path(role)}")
    for role in todo:
        staging.check_target(role)
    staged: dict[str, Path] = {}
    if todo:
        records = ctx.check_sources(sources, OFFICIAL)
        with ctx.pool() as workers:
            for role in todo:
                unit = staging.unit_dir(role)
                routed = extract_routed(open_archive(sources[role]), _route(sources[role], role, unit), workers,
                                        staging.tmp, f"coco {role}", ctx.progress)
                if not routed:
                    raise PrepareError(f"{sources[role]}: empty: not {OFFICIAL[role]}")
                staged[role] = unit
        infos = _check(ctx, staging, staged, sources)
        for role in ("train2017", "val2017", "annotations"):
            if role in staged:
                final = staging.commit(role, infos[role])
                ctx.log(f"coco {role:11s} wrote {final}  ({infos[role]})")
        staging.update_manifest(sources={**staging.manifest().get("sources", {}), **records},
                                partial=ctx.partial or staging.manifest().get("partial", False))
    staging.finish()
    return staging.manifest()


def _check(ctx: Context, staging: Staging, staged: dict[str, Path], sources: dict[str, Path]) -> dict[str, dict]:
    from pretrain.data.validate import DatasetError, validate_coco_json

    infos: dict[str, dict] = {}
    ann_dir = _place(staging, "annotations", staged)
    if "annotations" in staged:
        found = sorted(p.name for p in staged["annotations"].glob("instances_*2017.json"))
        if not found:
            raise PrepareError(f"{sources['annotations']}: no annotations/instances_*2017.json: "
                               f"not {OFFICIAL['annotations']}")
        infos["annotations"] = {"files": sorted(p.name for p in staged["annotations"].iterdir())}
    for split in ("train2017", "val2017"):
        images_dir = _place(staging, split, staged)
        ann = ann_dir / f"instances_{split}.json" if ann_dir is not None else None
        if ann is not None and not ann.is_file():
            if not ctx.allow_partial:
                raise PrepareError(f"{ann_dir}: no instances_{split}.json (--allow-partial accepts a subset)")
            ann = None
        files = None  # image files of images_dir, counted once
        if split in staged:
            n = files = sum(count_files(staged[split]).values())
            ctx.check_count(f"{sources[split]} ({split})", n, None, (PUBLISHED[split], None))
            infos[split] = {"images": n}
        if ann is None or (split not in staged and "annotations" not in staged):
            continue
        if not ctx.validate:
            continue
        try:
            summary = validate_coco_json(ann, image_root=images_dir)
        except DatasetError as exc:
            raise dataset_error_line(exc, str(ann)) from None
        if images_dir is not None:
            if files is None:
                files = sum(count_files(images_dir).values())
            if files != summary["images"]:
                raise PrepareError(f"{images_dir}: {files} image files, {ann.name} lists {summary['images']}")
        if split in infos:
            infos[split].update(annotations=summary["annotations"], categories=summary["categories"])
        ctx.log(f"coco {split:11s} checked {ann.name}: {summary['images']} images, {summary['annotations']} "
                f"annotations, {summary['categories']} categories")
    return infos
