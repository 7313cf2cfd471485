"""ImageNet variants for robustness evaluation, from their released archives. THE LAYOUT (read by
``classification`` robustness evaluation, ``classification/imagenet_variants.py``):

All variants go under one folder VARIANTS (the ``--to`` argument), one sub-folder each::

    python -m tools.prepare_data imagenet-v2     --from imagenetv2-matched-frequency.tar.gz --to VARIANTS
    python -m tools.prepare_data imagenet-r      --from imagenet-r.tar                      --to VARIANTS
    python -m tools.prepare_data imagenet-a      --from imagenet-a.tar                      --to VARIANTS
    python -m tools.prepare_data imagenet-sketch --from ImageNet-Sketch.zip                 --to VARIANTS
    python -m tools.prepare_data imagenet-c      --from noise.tar blur.tar weather.tar digital.tar [extra.tar] --to VARIANTS
    python -m tools.prepare_data imagenet-real   [--from IMAGENET/val] --to VARIANTS

Folder and tree of each (classes, published image count):

- ImageNetV2 matched-frequency: ``VARIANTS/v2/<wnid>/<name>.jpeg`` (the release's class-index
  folders ``0`` .. ``999`` renamed to wnids); 1000 classes, 10,000 images.
- ImageNet-R: ``VARIANTS/r/<wnid>/<name>.jpg``; 200 classes, 30,000 images.
- ImageNet-A: ``VARIANTS/a/<wnid>/<name>.jpg``; 200 classes, 7,500 images.
- ImageNet-Sketch: ``VARIANTS/sketch/<wnid>/<name>.JPEG``; 1000 classes, 50,889 images.
- ImageNet-C: ``VARIANTS/c/<corruption>/<severity>/<wnid>/<name>.JPEG``, severity folders
  ``1`` .. ``5``; 1000 classes, 50,000 images per (corruption, severity).
- ImageNet-ReaL: ``VARIANTS/real/real_labels.json`` (no images: it labels the ImageNet-1K val
  images); 50,000 entries.

- Class folders are always WordNet ids (``n01440764``), so an ImageFolder over a variant
  folder (``torchvision.datasets.ImageFolder(VARIANTS/r)``,
  ``pretrain.data.imagefolder.ImageFolderDataset(VARIANTS, "r")``; for C
  ``ImageFolderDataset(VARIANTS / "c" / corruption, str(severity))``) orders its classes by
  sorted wnid. r/ and a/ have 200 class folders: their ImageFolder index is 0..199.
- ImageNet-1K class index i = the i-th wnid in sorted order (= an ImageFolder over
  IMAGENET/train = line i of timm's ``timm/data/_info/imagenet_synsets.txt``).
- R / A 200-class subsets: the 200 wnids are timm's ``timm/data/_info/imagenet_r_synsets.txt``
  / ``imagenet_a_synsets.txt`` (sorted), their 1000-class indices timm's
  ``imagenet_r_indices.txt`` / ``imagenet_a_indices.txt`` (index k of those files = the
  1000-class index of the k-th sorted wnid, checked here). So ``logits[:, indices].argmax(1)``
  is an index into the sorted class folders of ``r/``. ``prepared.json`` repeats them.
- ImageNet-C corruptions: the benchmark's 15, in the mCE order gaussian_noise shot_noise
  impulse_noise (noise.tar), defocus_blur glass_blur motion_blur zoom_blur (blur.tar), snow
  frost fog brightness (weather.tar), contrast elastic_transform pixelate jpeg_compression
  (digital.tar); extra.tar, when given, adds speckle_noise gaussian_blur spatter saturate
  (``extra_corruptions`` in the manifest, not among the 15). A folder ``c/<corruption>/``
  appears only when all five severities are complete.
- Each variant folder holds ``prepared.json`` (for v2 / r / a / sketch / real written into the
  folder before it is renamed into place, so its presence means the variant is complete;
  ``c/prepared.json`` is rewritten as each corruption moves in)::

      {"dataset": "imagenet-r", "layout": 1, "classes": [sorted wnids],
       "imagenet_indices": [1000-class index of each class, same order],
       "counts": {"images": N, "classes": K}, "sources": {role: {"path", "bytes", "verified", ...}},
       "partial": bool, "units": {...}}

  For c/: ``"corruptions"`` (present, of the 15, in mCE order), ``"extra_corruptions"``,
  ``"counts": {"<corruption>/<severity>": N, ...}``.
- ``real/real_labels.json``: ``{"source": "timm/data/_info/imagenet_real_labels.json",
  "classes": [1000 sorted wnids], "labels": {"ILSVRC2012_val_00000001.JPEG": [],
  "ILSVRC2012_val_00000002.JPEG": [970, 795], ...}}`` (class indices into ``classes``; an
  empty list means ReaL has no label for that image, which is left out of ReaL accuracy as
  timm's ``RealLabelsImagenet`` does).
- ImageNet-1K itself (``tools.prepare_data imagenet``, ``imagenet.py``):
  ``IMAGENET/train/<wnid>/*.JPEG``, ``IMAGENET/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG``,
  ``IMAGENET/prepared.json``; low-shot lists ``IMAGENET/lowshot/<name>.txt``, one
  ``<wnid>/<file>`` (relative to ``IMAGENET/train``) per line (``lowshot.py``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from classification import mce

from .archives import Member, open_archive
from .context import Context
from .errors import PrepareError
from .extract import Workers, count_files, extract_routed
from .imagenet_labels import VAL_NAME, imagenet_wnids, timm_info
from .staging import Staging
from .validation import validate_classes

# The benchmark's corruptions, severities and extras are classification.mce's; here only which tar holds which.
C_CORRUPTIONS = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
C_ORDER = mce.BENCHMARK
assert tuple(c for group in C_CORRUPTIONS.values() for c in group) == C_ORDER, "the tars' corruptions are the mCE 15"
C_EXTRA = mce.EXTRA
C_PER_SEVERITY = 50_000
SEVERITIES = tuple(str(s) for s in mce.SEVERITIES)  # the severity folder names "1" .. "5"


@dataclass(frozen=True)
class Variant:
    """A single-archive variant: its folder, official archive, member prefix, class set and count."""

    command: str
    folder: str
    official: str
    prefix: str
    images: int
    subset: str | None  # "r" / "a": timm's 200-class subset; None: the 1000 classes
    index_folders: bool = False  # ImageNetV2: class folders are class indices 0..999


VARIANTS = {
    "imagenet-v2": Variant("imagenet-v2", "v2", "imagenetv2-matched-frequency.tar.gz",
                           "imagenetv2-matched-frequency-format-val/", 10_000, None, index_folders=True),
    "imagenet-r": Variant("imagenet-r", "r", "imagenet-r.tar", "imagenet-r/", 30_000, "r"),
    "imagenet-a": Variant("imagenet-a", "a", "imagenet-a.tar", "imagenet-a/", 7_500, "a"),
    "imagenet-sketch": Variant("imagenet-sketch", "sketch", "ImageNet-Sketch.zip", "sketch/", 50_889, None),
}


def subset_classes(subset: str | None) -> tuple[list[str], list[int]]:
    """(sorted wnids, their 1000-class indices) of timm's R / A subset, or of all 1000 classes."""
    wnids = imagenet_wnids()
    if subset is None:
        return wnids, list(range(len(wnids)))
    syn = timm_info(f"imagenet_{subset}_synsets.txt").split()
    idx = [int(i) for i in timm_info(f"imagenet_{subset}_indices.txt").split()]
    if syn != sorted(syn) or [wnids[i] for i in idx] != syn:
        raise PrepareError(f"timm's imagenet_{subset}_synsets.txt / _indices.txt disagree with imagenet_synsets.txt")
    return syn, idx


def prepare_variant(ctx: Context) -> dict[str, Any]:
    """v2 / r / a / sketch: one archive into ``VARIANTS/<folder>/<wnid>/``."""
    spec = VARIANTS[ctx.dataset]
    sources = ctx.split_roles(("archive",), lambda p: "archive")
    if set(sources) != {"archive"}:
        raise PrepareError(f"--from: {ctx.dataset} takes one archive ({spec.official})")
    path = sources["archive"]
    dataset_dir = ctx.to / spec.folder
    staging = ctx.staging(sources, dataset_dir)
    try:
        kept = staging.kept_whole(ctx.dataset)
        if kept is not None:
            return kept
        records = ctx.check_sources(sources, {"archive": spec.official})
        wnids, indices = subset_classes(spec.subset)
        allowed = set(wnids)
        all_wnids = imagenet_wnids()
        archive = open_archive(path)
        unit = staging.unit_dir(".")

        def route(m: Member) -> Path | None:
            if not m.name.startswith(spec.prefix):
                if m.name.startswith("__MACOSX/") or "/" not in m.name:
                    return None
                raise PrepareError(f"{path}: not {spec.official}: member {m.name!r} is not under {spec.prefix}")
            rest = m.name[len(spec.prefix):].split("/")
            if len(rest) == 1 or rest[-1].startswith(".") or rest[0].startswith("__MACOSX"):
                return None  # README.txt and the like
            if len(rest) != 2:
                raise PrepareError(f"{path}: member {m.name!r} is not {spec.prefix}<class>/<image>")
            cls = rest[0]
            if spec.index_folders:
                if not cls.isdigit() or not 0 <= int(cls) < len(all_wnids):
                    raise PrepareError(f"{path}: member {m.name!r}: class folder {cls!r} is not a class index 0..999")
                cls = all_wnids[int(cls)]
            if cls not in allowed:
                raise PrepareError(f"{path}: member {m.name!r}: {cls} is not one of the {len(allowed)} classes "
                                   f"of {ctx.dataset}")
            return unit / cls / rest[1]

        with ctx.pool() as workers:
            routed = extract_routed(archive, route, workers, staging.tmp, ctx.dataset, ctx.progress)
            if not routed:
                raise PrepareError(f"{path}: no images under {spec.prefix}: not {spec.official}")
            counts = count_files(unit)
            images, classes = sum(counts.values()), len(counts)
            if images != len(routed):
                raise PrepareError(f"{unit}: staged {images} images, the archive routes {len(routed)}; rerun")
            ctx.check_count(f"{path} ({ctx.dataset})", images, classes, (spec.images, len(wnids)))
            if ctx.validate:
                validate_classes(unit, workers, ctx.validate_max_files, ctx.progress)
        present = sorted(counts)
        fields = {"classes": present, "imagenet_indices": [all_wnids.index(w) for w in present],
                  "counts": {"images": images, "classes": classes}, "sources": records, "partial": ctx.partial}
        final = staging.commit(".", {"images": images, "classes": classes}, fields)
        ctx.log(f"{ctx.dataset} wrote {final}  ({images} images, {classes} classes)")
        staging.finish()
        return fields
    finally:
        staging.close()


def _c_group(path: Path) -> str:
    stem = path.name.split(".", 1)[0]
    return stem if stem in C_CORRUPTIONS or stem == "extra" else "archive"


def prepare_imagenet_c(ctx: Context) -> dict[str, Any]:
    """ImageNet-C: the corruption tars into ``VARIANTS/c/<corruption>/<severity>/<wnid>/``."""
    counter = iter(range(1000))
    sources = ctx.split_roles(tuple(C_CORRUPTIONS) + ("extra",) + tuple(f"archive{i}" for i in range(16)),
                              lambda p: _c_group(p) if _c_group(p) != "archive" else f"archive{next(counter)}")
    dataset_dir = ctx.to / "c"
    official = {g: f"{g}.tar" for g in (*C_CORRUPTIONS, "extra")}
    known = set(C_ORDER) | set(C_EXTRA)
    all_wnids = imagenet_wnids()
    allowed = set(all_wnids)
    staging = ctx.staging(sources, dataset_dir)
    try:
        records = None
        done_units = [c for c in (*C_ORDER, *C_EXTRA) if staging.is_done(c)]
        with ctx.pool() as workers:
            for role, path in sorted(sources.items()):
                archive = open_archive(path)
                seen: dict[str, Path] = {}

                def route(m: Member, path=path, seen=seen) -> Path | None:
                    parts = m.name.split("/")
                    if len(parts) == 1 or parts[-1].startswith(".") or parts[0].startswith("__MACOSX"):
                        return None
                    if len(parts) != 4 or parts[0] not in known or parts[1] not in SEVERITIES:
                        raise PrepareError(f"{path}: not an ImageNet-C archive: member {m.name!r} is not "
                                           "<corruption>/<severity 1-5>/<wnid>/<image> with a known corruption")
                    if parts[2] not in allowed:
                        raise PrepareError(f"{path}: member {m.name!r}: {parts[2]} is not an ImageNet-1K class")
                    if parts[0] in done_units:
                        return None
                    if parts[0] not in seen:
                        staging.check_target(parts[0])
                        seen[parts[0]] = staging.unit_dir(parts[0])
                    return seen[parts[0]] / parts[1] / parts[2] / parts[3]

                if records is None:
                    records = ctx.check_sources(sources, official)
                extract_routed(archive, route, workers, staging.tmp, f"imagenet-c {path.name}", ctx.progress)
                for corruption in sorted(seen, key=lambda c: (*C_ORDER, *C_EXTRA).index(c)):
                    _commit_corruption(ctx, staging, corruption, path, workers)
                for corruption in sorted(set(C_CORRUPTIONS.get(role, ())) - set(seen) - set(done_units)):
                    if not ctx.allow_partial:
                        raise PrepareError(f"{path}: {corruption} missing from {role}.tar "
                                           "(--allow-partial accepts a subset)")
        manifest = staging.manifest()
        units = manifest.get("units", {})
        fields = {
            "corruptions": [c for c in C_ORDER if c in units],
            "extra_corruptions": [c for c in C_EXTRA if c in units],
            "counts": {f"{c}/{s}": n for c, u in units.items() for s, n in u["counts"].items()},
            "classes": all_wnids, "imagenet_indices": list(range(len(all_wnids))),
            "partial": bool(manifest.get("partial")) or ctx.partial or len([c for c in C_ORDER if c in units]) < 15,
        }
        if records is not None:
            fields["sources"] = {**manifest.get("sources", {}), **{str(sources[r]): v for r, v in records.items()}}
        if dataset_dir.is_dir():
            staging.update_manifest(**fields)
        ctx.log(f"imagenet-c {len(fields['corruptions'])} of the 15 corruptions in {dataset_dir}"
                + (f" (+ {len(fields['extra_corruptions'])} extra)" if fields["extra_corruptions"] else ""))
        staging.finish()
        return fields
    finally:
        staging.close()


def _commit_corruption(ctx: Context, staging: Staging, corruption: str, path: Path, workers: Workers) -> None:
    unit = staging.unit_dir(corruption)
    counts: dict[str, int] = {}
    for severity in SEVERITIES:
        folder = unit / severity
        if not folder.is_dir():
            if ctx.allow_partial:
                continue
            raise PrepareError(f"{path}: {corruption} has no severity {severity} (--allow-partial accepts a subset)")
        per_class = count_files(folder)
        counts[severity] = sum(per_class.values())
        ctx.check_count(f"{path} ({corruption} severity {severity})", counts[severity], len(per_class),
                        (C_PER_SEVERITY, 1000))
        if ctx.validate:
            validate_classes(folder, workers, ctx.validate_max_files, ctx.progress)
    final = staging.commit(corruption, {"counts": counts})
    ctx.log(f"imagenet-c wrote {final}  ({', '.join(f'{s}: {n}' for s, n in counts.items())})")


def prepare_real(ctx: Context) -> dict[str, Any]:
    """ImageNet-ReaL: timm's ``imagenet_real_labels.json`` keyed by val file name, into ``VARIANTS/real/``."""
    sources = ctx.split_roles(("labels", "val"), lambda p: "labels" if p.suffix == ".json" else "val")
    dataset_dir = ctx.to / "real"
    staging = ctx.staging(sources, dataset_dir)
    try:
        kept = staging.kept_whole(ctx.dataset)
        if kept is not None:
            return kept
        if "labels" in sources:
            where = str(sources["labels"])
            text = sources["labels"].read_text()
        else:
            where, text = "timm/data/_info/imagenet_real_labels.json", timm_info("imagenet_real_labels.json")
        try:
            real = json.loads(text)
        except ValueError as exc:
            raise PrepareError(f"{where}: not valid JSON ({exc})") from None
        wnids = imagenet_wnids()
        if not isinstance(real, list) or not all(isinstance(r, list) and all(isinstance(i, int) and 0 <= i < 1000
                                                                              for i in r) for r in real):
            raise PrepareError(f"{where}: not a list of per-image lists of class indices 0..999")
        ctx.check_count(where, len(real), None, (50_000, None))
        labels = {f"ILSVRC2012_val_{i + 1:08d}.JPEG": r for i, r in enumerate(real)}
        if "val" in sources:
            _check_val_names(sources["val"], labels)
        unit = staging.unit_dir(".")
        from pretrain.atomic import atomic_write_json

        atomic_write_json(unit / "real_labels.json", {"source": where, "classes": wnids, "labels": labels}, indent=None)
        labelled = sum(1 for r in real if r)
        fields = {"classes": wnids, "imagenet_indices": list(range(1000)),
                  "counts": {"images": len(real), "labelled": labelled}, "partial": ctx.partial,
                  "sources": {"labels": where, **({"val": str(sources["val"])} if "val" in sources else {})}}
        final = staging.commit(".", {"images": len(real)}, fields)
        ctx.log(f"imagenet-real wrote {final / 'real_labels.json'}  ({len(real)} images, {labelled} with a label)")
        staging.finish()
        return fields
    finally:
        staging.close()


def _check_val_names(val: Path, labels: dict[str, Any]) -> None:
    folder = val / "val" if (val / "val").is_dir() else val
    names = {p.name for p in folder.glob("*/*") if VAL_NAME.fullmatch(p.name)}
    if not names:
        raise PrepareError(f"{folder}: no val/<wnid>/ILSVRC2012_val_*.JPEG images (prepare ImageNet first)")
    extra = sorted(names - set(labels))
    if extra:
        raise PrepareError(f"{folder}: {extra[0]} has no ReaL entry ({len(extra)} such images)")


PREPARE: dict[str, Callable[[Context], dict[str, Any]]] = {
    **{name: prepare_variant for name in VARIANTS},
    "imagenet-c": prepare_imagenet_c,
    "imagenet-real": prepare_real,
}
