"""ImageNet-1K from the archives people have, into ``ROOT/train/<wnid>/`` and ``ROOT/val/<wnid>/``.

    python -m tools.prepare_data imagenet --from ILSVRC2012_img_train.tar ILSVRC2012_img_val.tar \\
        ILSVRC2012_devkit_t12.tar.gz --to /data/imagenet
    python -m tools.prepare_data imagenet --from imagenet-object-localization-challenge/ --to /data/imagenet
    python -m tools.prepare_data imagenet --from ILSVRC2012_img_val.tar --val-labels LOC_val_solution.csv --to ...

Sources (``--from``; a role is recognised from the official file name or the content, or
named as ``ROLE=PATH``):

- ``train``: ``ILSVRC2012_img_train.tar``, 1000 per-class tars ``n01440764.tar`` of JPEGs;
  each class is streamed from the outer tar by a worker into ``.tmp/`` and renamed into
  the staged ``train/`` when whole;
- ``val``: ``ILSVRC2012_img_val.tar`` (or its extracted flat folder), 50,000
  ``ILSVRC2012_val_XXXXXXXX.JPEG``; labelled by
- ``devkit``: ``ILSVRC2012_devkit_t12.tar.gz`` (torchvision's parser: ``imagenet_labels``), or
- ``val-labels``: Kaggle's ``LOC_val_solution.csv`` (``--val-labels`` too);
- ``kaggle``: the Kaggle download, zip or extracted (``ILSVRC/Data/CLS-LOC/{train/<wnid>/,val/}``
  and ``LOC_val_solution.csv`` beside ``ILSVRC/``): its flat val folder gets the CSV's labels.

Checks: published checksums (``--no-verify``), the archive really is the role's
(``val`` given as ``train`` and the like name what they found), every wnid one of the
1000, one label per val image (the devkit's ground truth has exactly as many lines as the
val tar images), published counts 1,281,167 / 50,000 images in 1000 classes
(``--allow-partial``), then ``pretrain.data.validate`` decodes every image, class folder
by class folder on every core, before the split moves into place.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .archives import Archive, FolderArchive, Member, TarArchive, ZipArchive, open_archive
from .context import Context, is_under
from .errors import PrepareError
from .extract import Job, Workers, count_files, extract_routed, run_jobs
from .imagenet_labels import (
    VAL_NAME,
    WNID,
    imagenet_wnids,
    read_devkit,
    read_kaggle_csv,
    val_labels_from_ground_truth,
)
from .staging import Staging, check_free_space
from .validation import validate_classes

OFFICIAL = {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar",
            "devkit": "ILSVRC2012_devkit_t12.tar.gz"}
PUBLISHED = {"train": (1_281_167, 1000), "val": (50_000, 1000)}
ROLES = ("train", "val", "devkit", "val-labels", "kaggle")
KAGGLE_DATA = "ILSVRC/Data/CLS-LOC/"
KAGGLE_CSV = "LOC_val_solution.csv"


def _first_member(path: Path) -> str:
    """The first member's name (of a zip: the first under ``Data/CLS-LOC/`` if any); errors are one line."""
    archive = open_archive(path)
    try:
        if isinstance(archive, ZipArchive):
            names = [m.name for m in archive.members()]
            return next((n for n in names if "Data/CLS-LOC/" in n), names[0] if names else "")
        first = archive.first()
        return first.name if first is not None else ""
    finally:
        archive.close()


def guess_role(path: Path) -> str:
    """Which ImageNet source ``path`` is: from its official name, else from what it holds."""
    for role, official in OFFICIAL.items():
        if path.name == official:
            return role
    if path.suffix.lower() == ".csv":
        return "val-labels"
    if path.is_dir():
        if (path / KAGGLE_DATA).is_dir() or path.name == "CLS-LOC":
            return "kaggle"
        if any(VAL_NAME.fullmatch(p.name) for p in path.iterdir()):
            return "val"
        raise PrepareError(f"{path}: neither the Kaggle ImageNet tree (no {KAGGLE_DATA}) nor a folder of "
                           "ILSVRC2012_val_*.JPEG images")
    first = _first_member(path)
    base = first.rsplit("/", 1)[-1]
    if "Data/CLS-LOC/" in first:
        return "kaggle"
    if WNID.fullmatch(base.removesuffix(".tar")) and base.endswith(".tar"):
        return "train"
    if VAL_NAME.fullmatch(base):
        return "val"
    if first.startswith("ILSVRC2012_devkit_t12"):
        return "devkit"
    raise PrepareError(f"{path}: cannot tell which ImageNet archive this is (first member {first!r}); "
                       "name its role: train=PATH, val=PATH, devkit=PATH, val-labels=PATH or kaggle=PATH")


@dataclass
class Kaggle:
    """The Kaggle download: images under ``prefix`` of ``archive``, and its val CSV (text) if present."""

    archive: Archive
    prefix: str
    csv: str | None
    csv_where: str


def open_kaggle(path: Path) -> Kaggle:
    if path.is_dir():
        if (path / KAGGLE_DATA).is_dir():
            data, top = path / KAGGLE_DATA, path
        elif path.name == "CLS-LOC" and len(path.parents) > 2:
            data, top = path, path.parents[2]
        else:
            raise PrepareError(f"{path}: not the Kaggle ImageNet tree (no {KAGGLE_DATA} inside)")
        csv = top / KAGGLE_CSV
        return Kaggle(FolderArchive(data), "", csv.read_text() if csv.is_file() else None, str(csv))
    archive = open_archive(path)
    if not isinstance(archive, ZipArchive):
        raise PrepareError(f"{path}: the Kaggle ImageNet download is a zip or its extracted folder")
    names = [m.name for m in archive.members()]
    first = next((n for n in names if "Data/CLS-LOC/" in n), None)
    if first is None:
        raise PrepareError(f"{path}: no {KAGGLE_DATA} inside: not the Kaggle ImageNet download")
    prefix = first[: first.index("Data/CLS-LOC/") + len("Data/CLS-LOC/")]
    csv = next((m for m in archive.members() if m.name.rsplit("/", 1)[-1] == KAGGLE_CSV), None)
    text = archive.read(csv).decode("utf-8") if csv else None
    return Kaggle(archive, prefix, text, f"{path}:{csv.name if csv else KAGGLE_CSV}")


def _wrong_train(path: Path, name: str) -> PrepareError:
    base = name.rsplit("/", 1)[-1]
    if VAL_NAME.fullmatch(base):
        return PrepareError(f"{path}: given as the train archive, but it holds flat val images ({base}): "
                            f"this looks like {OFFICIAL['val']}")
    return PrepareError(f"{path}: not {OFFICIAL['train']}: member {name!r} is not a per-class tar nXXXXXXXX.tar")


def _wrong_val(path: Path, name: str) -> PrepareError:
    base = name.rsplit("/", 1)[-1]
    if base.endswith(".tar") and WNID.fullmatch(base[:-4]):
        return PrepareError(f"{path}: given as the val archive, but it holds per-class tars ({base}): "
                            f"this looks like {OFFICIAL['train']}")
    return PrepareError(f"{path}: not {OFFICIAL['val']}: member {name!r} is not an ILSVRC2012_val_XXXXXXXX.JPEG")


def _stage_train_tar(path: Path, unit: Path, staging: Staging, known: set[str], workers: Workers,
                     progress: bool) -> set[str]:
    archive = open_archive(path)
    if not isinstance(archive, TarArchive):
        raise PrepareError(f"{path}: {OFFICIAL['train']} is an uncompressed tar of per-class tars")
    members = archive.members()
    if not members:
        raise PrepareError(f"{path}: empty archive")
    wnids = []
    for m in members:
        if "/" in m.name or not m.name.endswith(".tar") or not WNID.fullmatch(m.name[:-4]):
            raise _wrong_train(path, m.name)
        wnid = m.name[:-4]
        if wnid not in known:
            raise PrepareError(f"{path}: member {m.name}: {wnid} is not an ImageNet-1K class")
        wnids.append(wnid)
    todo = [(m, w) for m, w in zip(members, wnids) if not (unit / w).is_dir()]
    check_free_space(unit, sum(m.size for m, _ in todo), f"train ({len(todo)} classes)")
    jobs = [Job(str(path), str(staging.tmp), nested=m, nested_dest=str(unit / w)) for m, w in todo]
    from tqdm.auto import tqdm

    with tqdm(total=len(members), initial=len(members) - len(todo), desc="train", unit="class",
              disable=not progress, leave=False) as bar:
        run_jobs(workers, jobs, bar, per_file=False)
    return set(wnids)


def _kaggle_route(kaggle: Kaggle, split: str, unit: Path, known: set[str],
                  labels: dict[str, str] | None) -> Callable[[Member], Path | None]:
    head = kaggle.prefix + split + "/"

    def route(m: Member) -> Path | None:
        if not m.name.startswith(head):
            return None
        parts = m.name[len(head):].split("/")
        if split == "train":
            if len(parts) != 2 or parts[0] not in known:
                raise PrepareError(f"{kaggle.archive.path}: {m.name}: not train/<wnid>/<image> with one of the "
                                   "1000 ImageNet-1K wnids")
            return unit / parts[0] / parts[1]
        return _label_dest(kaggle.archive.path, m.name, parts[-1], unit, labels, kaggle.csv_where)

    return route


def _label_dest(path: Path, name: str, base: str, unit: Path, labels: dict[str, str], where: str) -> Path:
    if not VAL_NAME.fullmatch(base):
        raise _wrong_val(path, name)
    wnid = labels.get(base[:-5])
    if wnid is None:
        raise PrepareError(f"{path}: {base} has no label in {where}")
    return unit / wnid / base


def _finish_split(ctx: Context, staging: Staging, split: str, unit: Path, source: Path, workers: Workers,
                  expected: Counter | set) -> dict[str, Any]:
    counts = count_files(unit)
    found = set(counts) if isinstance(expected, set) else Counter(counts)
    if found != expected:
        raise PrepareError(f"{unit}: the staged {split} split differs from {source} (was it changed during the run?); "
                           "remove it and rerun")
    images, classes = sum(counts.values()), len(counts)
    ctx.check_count(f"{source} ({split})", images, classes, PUBLISHED[split])
    if ctx.validate:
        validate_classes(unit, workers, ctx.validate_max_files, ctx.progress)
    info = {"images": images, "classes": classes, "source": str(source.resolve())}
    final = staging.commit(split, info)
    ctx.log(f"imagenet {split:5s} wrote {final}  ({images} images, {classes} classes)")
    return info


def prepare_imagenet(ctx: Context) -> dict[str, Any]:
    """Prepare the ImageNet-1K splits the sources allow; returns {split: info}."""
    sources = ctx.split_roles(ROLES, guess_role)
    if ctx.options.get("val_labels"):
        if "val-labels" in sources:
            raise PrepareError("--val-labels and a val-labels source in --from: give one")
        sources["val-labels"] = Path(ctx.options["val_labels"]).expanduser()
        if not sources["val-labels"].is_file():
            raise PrepareError(f"--val-labels {sources['val-labels']}: no such file")
    if "kaggle" in sources and ("train" in sources or "val" in sources):
        raise PrepareError("--from: the Kaggle tree and the official train / val archives together: give one layout")
    splits = [s for s in ("train", "val") if s in sources or "kaggle" in sources]
    if not splits:
        raise PrepareError("--from: no ImageNet train or val source (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar "
                           "or the Kaggle tree)")
    root = ctx.to
    for role, path in sources.items():
        for split in splits:
            if is_under(path, root / split):
                raise PrepareError(f"--from {path} lies inside the target {root / split}: choose another --to")
    staging = ctx.staging(sources, root)
    try:
        return _prepare(ctx, sources, splits, staging)
    finally:
        staging.close()


def _prepare(ctx: Context, sources: dict[str, Path], splits: list[str], staging: Staging) -> dict[str, Any]:
    todo = [s for s in splits if not staging.is_done(s)]
    for split in splits:
        if split not in todo:
            info = staging.manifest()["units"][split]
            ctx.log(f"imagenet {split:5s} kept  {staging.final_path(split)}  ({info['images']} images, "
                    f"{info['classes']} classes; --overwrite redoes it)")
        else:
            staging.check_target(split)
    result = {s: staging.manifest()["units"][s] for s in splits if s not in todo}
    if todo:
        records = ctx.check_sources(sources, OFFICIAL)
        kaggle = open_kaggle(sources["kaggle"]) if "kaggle" in sources else None
        names: dict[str, Any] = {}
        known = set(imagenet_wnids())
        labels, labels_where = None, ""
        if "devkit" in sources:
            wnid_to_classes, val_wnids = read_devkit(sources["devkit"], staging.work / "devkit")
            names = {w: ", ".join(c) for w, c in sorted(wnid_to_classes.items())}
            known = set(wnid_to_classes)
            labels = val_labels_from_ground_truth(val_wnids)
            labels_where = f"{sources['devkit']} (data/ILSVRC2012_validation_ground_truth.txt)"
        elif "val-labels" in sources:
            labels = read_kaggle_csv(sources["val-labels"].read_text(), str(sources["val-labels"]), known)
            labels_where = str(sources["val-labels"])
        elif kaggle is not None and kaggle.csv is not None:
            labels = read_kaggle_csv(kaggle.csv, kaggle.csv_where, known)
            labels_where = kaggle.csv_where
        if "val" in todo and labels is None:
            raise PrepareError("the val images need labels: add ILSVRC2012_devkit_t12.tar.gz or "
                               "--val-labels LOC_val_solution.csv")
        with ctx.pool() as workers:
            if "train" in todo:
                unit = staging.unit_dir("train")
                if kaggle is None:
                    expected = _stage_train_tar(sources["train"], unit, staging, known, workers, ctx.progress)
                else:
                    routed = extract_routed(kaggle.archive, _kaggle_route(kaggle, "train", unit, known, None),
                                            workers, staging.tmp, "train", ctx.progress)
                    if not routed:
                        raise PrepareError(f"{kaggle.archive.path}: no images under {kaggle.prefix}train/")
                    expected = Counter(d.parent.name for d in routed)
                src = sources.get("train") or sources["kaggle"]
                result["train"] = _finish_split(ctx, staging, "train", unit, src, workers, expected)
            if "val" in todo:
                unit = staging.unit_dir("val")
                if kaggle is None:
                    path = sources["val"]
                    archive = open_archive(path)
                    route = lambda m: _label_dest(path, m.name, m.name.rsplit("/", 1)[-1], unit, labels, labels_where)  # noqa: E731
                else:
                    path, archive = sources["kaggle"], kaggle.archive
                    route = _kaggle_route(kaggle, "val", unit, known, labels)
                _check_label_count(ctx, archive, kaggle, labels, labels_where, path)
                routed = extract_routed(archive, route, workers, staging.tmp, "val", ctx.progress)
                result["val"] = _finish_split(ctx, staging, "val", unit, path, workers,
                                              Counter(d.parent.name for d in routed))
        fields: dict[str, Any] = {"sources": records, "partial": ctx.partial or staging.manifest().get("partial", False)}
        fields["classes"] = sorted(set(staging.manifest().get("classes", [])) | _classes(staging, splits))
        if names:
            fields["class_names"] = names
        staging.update_manifest(**fields)
    lowshot, subsets = ctx.options.get("lowshot"), ctx.options.get("subset_files") or []
    if (lowshot or subsets) and "train" in splits:
        from .lowshot import write_lowshot

        write_lowshot(ctx.to, ctx.to, percents=lowshot or [], seed=int(ctx.options.get("seed") or 0),
                      subset_files=subsets, log=ctx.log)
    staging.finish()
    return result


def _classes(staging: Staging, splits: list[str]) -> set[str]:
    out: set[str] = set()
    for split in splits:
        folder = staging.final_path(split)
        if folder.is_dir():
            out |= {d.name for d in folder.iterdir() if d.is_dir()}
    return out


def _check_label_count(ctx: Context, archive: Archive, kaggle: Kaggle | None, labels: dict[str, str],
                       where: str, path: Path) -> None:
    """One label per val image: as many labels as images, unless --allow-partial (a subset of the images)."""
    head = (kaggle.prefix + "val/") if kaggle is not None else ""
    images = sum(1 for m in archive.members() if m.name.startswith(head) and VAL_NAME.fullmatch(m.name.rsplit("/", 1)[-1]))
    if images == 0:
        first = next((m.name for m in archive.members()), "")
        raise _wrong_val(path, first) if first else PrepareError(f"{path}: no val images")
    if len(labels) != images and not ctx.allow_partial:
        raise PrepareError(f"{where} has {len(labels):,} labels (lines), but {path} holds {images:,} val images "
                           "(--allow-partial accepts a subset of the images)")
    if len(labels) < images:
        raise PrepareError(f"{where} has {len(labels):,} labels (lines), fewer than the {images:,} val images of {path}")
