"""Numbers the papers report, for the comparison tables (source: shared/reference/FACTS.md §3).

All accuracies in percent. ``None`` = not reported (or not given in FACTS.md). AdPE's
transfer results are stated only as gains over MAE, so they are kept as text
(``note``), not turned into numbers we would have to invent a baseline for.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    """One reported result: method, backbone, pretraining epochs and its transfer numbers."""

    method: str  # droppos | mae | adpe
    variant: str  # e.g. "DropPos", "MAE", "AdPE coord (rel. PE)"
    size: str  # base | large | huge
    arch: str  # ViT-B/16 ...
    epochs: int | None
    finetune_top1: float | None = None
    coco_box_ap: float | None = None
    coco_mask_ap: float | None = None
    ade_miou: float | None = None
    source: str = ""
    note: str = ""


PAPER_ROWS: tuple[PaperRow, ...] = (
    # DropPos (NeurIPS 2023): ImageNet-1K fine-tuning top-1.
    PaperRow("droppos", "DropPos", "base", "ViT-B/16", 200, finetune_top1=83.0, source="DropPos paper/README"),
    PaperRow("droppos", "DropPos", "base", "ViT-B/16", 800, finetune_top1=84.2, source="DropPos paper/README"),
    PaperRow("droppos", "DropPos", "large", "ViT-L/16", 800, finetune_top1=85.8, source="DropPos paper/README"),
    # MAE (CVPR 2022): fine-tuning, Mask R-CNN COCO, UperNet ADE20K.
    PaperRow(
        "mae", "MAE", "base", "ViT-B/16", 1600, finetune_top1=83.6, coco_box_ap=50.3, ade_miou=48.1, source="MAE paper"
    ),
    PaperRow(
        "mae", "MAE", "large", "ViT-L/16", 1600, finetune_top1=85.9, coco_box_ap=53.3, ade_miou=53.6, source="MAE paper"
    ),
    PaperRow("mae", "MAE", "huge", "ViT-H/14", 1600, finetune_top1=86.9, source="MAE paper"),
    PaperRow(
        "mae",
        "MAE (ViTDet Mask R-CNN, 100-ep recipe)",
        "base",
        "ViT-B/16",
        1600,
        coco_box_ap=51.6,
        coco_mask_ap=45.9,
        source="ViTDet",
    ),
    # AdPE / MAE+ (ViT-B fine-tuning; abs. = absolute PE, rel. = relative PE).
    PaperRow("adpe", "MAE+ (abs. PE)", "base", "ViT-B/16", None, finetune_top1=83.9, source="AdPE code/paper"),
    PaperRow("adpe", "MAE+ (rel. PE)", "base", "ViT-B/16", None, finetune_top1=84.2, source="AdPE code/paper"),
    PaperRow("adpe", "AdPE embed (abs. PE)", "base", "ViT-B/16", None, finetune_top1=84.1, source="AdPE code/paper"),
    PaperRow("adpe", "AdPE embed (rel. PE)", "base", "ViT-B/16", None, finetune_top1=84.3, source="AdPE code/paper"),
    PaperRow("adpe", "AdPE coord (abs. PE)", "base", "ViT-B/16", None, finetune_top1=84.2, source="AdPE code/paper"),
    PaperRow(
        "adpe",
        "AdPE coord (rel. PE)",
        "base",
        "ViT-B/16",
        1600,
        finetune_top1=84.4,
        source="AdPE code/paper",
        note="= MAE 1600 ep + 0.8 (abstract)",
    ),
    PaperRow(
        "adpe",
        "AdPE",
        "large",
        "ViT-L/16",
        1600,
        finetune_top1=86.3,
        source="AdPE paper",
        note="= MAE 1600 ep + 0.4 (abstract)",
    ),
    PaperRow(
        "adpe",
        "AdPE (transfer)",
        "base",
        "ViT-B/16",
        1600,
        source="AdPE abstract",
        note="over MAE ViT-B: +2.6 mIoU ADE20K, +3.2 AP box, +1.6 AP mask COCO",
    ),
)

METHOD_NAMES = {"droppos": "DropPos", "mae": "MAE", "adpe": "AdPE"}
METHOD_ORDER = ("droppos", "mae", "adpe")


def paper_rows(method: str | None = None, size: str | None = None) -> list[PaperRow]:
    """Reported rows, optionally for one method and/or backbone size."""
    return [r for r in PAPER_ROWS if (method is None or r.method == method) and (size is None or r.size == size)]


def headline(method: str, size: str) -> PaperRow | None:
    """The row a method is usually quoted by at a size: the plain method's longest schedule with a top-1."""
    rows = [r for r in paper_rows(method, size) if r.finetune_top1 is not None]
    if not rows:
        return None
    plain = [r for r in rows if r.variant in (METHOD_NAMES[method], "AdPE coord (rel. PE)")] or rows
    return max(plain, key=lambda r: (r.epochs or 0, r.finetune_top1 or 0))


# Transfer results AdPE states only relative to MAE ViT-B (abstract): metric -> gain in points.
GAINS_OVER_MAE: dict[str, dict[str, float]] = {"adpe": {"coco_box_ap": 3.2, "coco_mask_ap": 1.6, "ade_miou": 2.6}}
