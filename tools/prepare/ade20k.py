"""ADE20K (the scene-parsing challenge release) into the layout MMSeg's ``ADE20KDataset`` reads.

    python -m tools.prepare_data ade20k --from ADEChallengeData2016.zip --to data/ade

writes ``data/ade/ADEChallengeData2016/{images,annotations}/{training,validation}/``
(plus the release's ``objectInfo150.txt`` / ``sceneCategories.txt``): MMSeg's
``data_root='data/ade/ADEChallengeData2016'``. Checks: both splits have images AND label
maps (a zip without ``annotations/`` is refused by name), 20,210 / 2,000 of each
(``--allow-partial``), then ``pretrain.data.validate.validate_ade20k`` (every label map an
8-bit PNG of its image's size with values 0..150). The folder moves into place whole.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .archives import Member, open_archive
from .context import Context
from .errors import PrepareError
from .extract import count_files, extract_routed
from .validation import dataset_error_line

OFFICIAL = "ADEChallengeData2016.zip"
PREFIX = "ADEChallengeData2016/"
PUBLISHED = {"training": 20_210, "validation": 2_000}
NUM_CLASSES = 150


def prepare_ade20k(ctx: Context) -> dict[str, Any]:
    """Prepare ``TO/ADEChallengeData2016``; returns its manifest."""
    sources = ctx.split_roles(("archive",), lambda p: "archive")
    path = sources["archive"]
    dataset_dir = ctx.to / "ADEChallengeData2016"
    staging = ctx.staging(sources, dataset_dir)
    try:
        kept = staging.kept_whole("ade20k")
        if kept is not None:
            return kept
        records = ctx.check_sources(sources, {"archive": OFFICIAL})
        unit = staging.unit_dir(".")

        def route(m: Member) -> Path | None:
            if m.name.startswith("__MACOSX/"):
                return None
            if not m.name.startswith(PREFIX):
                raise PrepareError(f"{path}: not {OFFICIAL}: member {m.name!r} is not under {PREFIX}")
            rest = m.name[len(PREFIX):].split("/")
            if len(rest) == 1:
                return unit / rest[0]  # objectInfo150.txt, sceneCategories.txt
            if len(rest) != 3 or rest[0] not in ("images", "annotations") or rest[1] not in PUBLISHED:
                raise PrepareError(f"{path}: member {m.name!r} is not {PREFIX}{{images,annotations}}/"
                                   "{training,validation}/<file>")
            return unit / rest[0] / rest[1] / rest[2]

        with ctx.pool() as workers:
            extract_routed(open_archive(path), route, workers, staging.tmp, "ade20k", ctx.progress)
        counts = count_files(unit)
        out: dict[str, int] = {}
        for split, published in PUBLISHED.items():
            images, labels = counts.get(f"images/{split}", 0), counts.get(f"annotations/{split}", 0)
            if images and not labels:
                raise PrepareError(f"{path}: no {PREFIX}annotations/{split}/ label maps (the scene-parsing archive "
                                   f"has them; is this the full ADE20K release instead of {OFFICIAL}?)")
            if labels != images:
                raise PrepareError(f"{path}: {images} images but {labels} label maps in {split}")
            ctx.check_count(f"{path} ({split})", images, None, (published, None))
            out[split] = images
        if ctx.validate:
            from pretrain.data.validate import DatasetError, validate_ade20k

            try:
                validate_ade20k(unit, num_classes=NUM_CLASSES, max_files=ctx.validate_max_files)
            except DatasetError as exc:
                raise dataset_error_line(exc, str(path)) from None
        fields = {"counts": out, "num_classes": NUM_CLASSES, "sources": records, "partial": ctx.partial}
        final = staging.commit(".", {"images": out}, fields)
        ctx.log(f"ade20k wrote {final}  (training: {out['training']}, validation: {out['validation']} pairs)")
        staging.finish()
        return fields
    finally:
        staging.close()
