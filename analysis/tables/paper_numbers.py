"""Numbers the papers report, each with its source and protocol (source: shared/reference/FACTS.md §3).

All accuracies in percent. ``None`` = not reported (or not given in FACTS.md). AdPE's
transfer results are stated only as gains over MAE, so they are kept as gains
(``GAINS_OVER_MAE``), not turned into numbers we would have to invent a baseline for.
Recipes are kept apart: the MAE paper's COCO number and ViTDet's 100-epoch recipe are two
rows, and every number carries the protocol it was measured under (``protocols``). Where a
paper publishes its seed spread (``spreads``), the noise verdict of a comparison with that
number uses it (``analysis.stats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# measure key -> what the number is (the paper table's "task" column)
MEASURE_NAMES = {
    "finetune_top1": "IN-1K fine-tune top-1",
    "linear_probe_top1": "IN-1K linear probe top-1",
    "coco_box_ap": "COCO AP box",
    "coco_box_ap50": "COCO AP50 box",
    "coco_mask_ap": "COCO AP mask",
    "ade_miou": "ADE20K mIoU",
}
AGGREGATOR = "as listed by a benchmark aggregator; epochs not stated"


@dataclass(frozen=True)
class PaperRow:
    """One reported result: method, backbone, pretraining epochs and its numbers.

    Attributes:
        protocols: measure key -> the protocol the number was measured under (short).
        spreads: measure key -> (standard deviation, number of seeds or None when not
            stated, where the spread is published).
    """

    method: str  # droppos | mae | adpe
    variant: str  # e.g. "DropPos", "MAE", "AdPE coord (rel. PE)"
    size: str  # base | large | huge
    arch: str  # ViT-B/16 ...
    epochs: int | None
    finetune_top1: float | None = None
    linear_probe_top1: float | None = None
    coco_box_ap: float | None = None
    coco_box_ap50: float | None = None
    coco_mask_ap: float | None = None
    ade_miou: float | None = None
    source: str = ""
    note: str = ""
    protocols: dict[str, str] = field(default_factory=dict)
    spreads: dict[str, tuple[float, int | None, str]] = field(default_factory=dict)

    def values(self) -> dict[str, float]:
        """measure key -> the number, for the measures this row reports."""
        return {k: getattr(self, k) for k in MEASURE_NAMES if getattr(self, k) is not None}


_FT = {"finetune_top1": "IN-1K end-to-end fine-tuning"}
_MAE_TRANSFER = {
    **_FT,
    "linear_probe_top1": "IN-1K linear probe (MAE paper)",
    "coco_box_ap": "Mask R-CNN, the MAE paper's ViTDet-like recipe",
    "ade_miou": "UperNet (MAE paper's recipe)",
}
def _finetune(method: str, variant: str, size: str, epochs: int | None, top1: float, source: str) -> PaperRow:
    """A row reporting only ImageNet-1K fine-tuning top-1 (ViT-B/16 or ViT-L/16)."""
    arch = {"base": "ViT-B/16", "large": "ViT-L/16"}[size]
    return PaperRow(method, variant, size, arch, epochs, finetune_top1=top1, source=source, protocols=_FT)


def _mae_paper(size: str, arch: str, finetune: float, linear_probe: float, **transfer: float) -> PaperRow:
    """The MAE paper's row (1600 epochs): fine-tuning, linear probe and the transfer numbers it gives."""
    return PaperRow(
        "mae", "MAE", size, arch, 1600, finetune_top1=finetune, linear_probe_top1=linear_probe,
        source="MAE paper", protocols=_MAE_TRANSFER, **transfer,
    )


def _mae_repo(size: str, arch: str, finetune: float, spread: float, linear_probe: float) -> PaperRow:
    """The MAE PyTorch repo's row: fine-tuning mean and spread over 4 seeds, linear probe."""
    return PaperRow(
        "mae",
        "MAE (PyTorch repo, 4 fine-tuning seeds)",
        size,
        arch,
        1600,
        finetune_top1=finetune,
        linear_probe_top1=linear_probe,
        source="MAE repo",
        protocols={**_FT, "linear_probe_top1": "IN-1K linear probe (MAE repo)"},
        spreads={"finetune_top1": (spread, 4, f"MAE repo: {finetune} ± {spread} over 4 seeds")},
    )


_VITDET = {k: "Mask R-CNN, ViTDet's 100-epoch recipe" for k in ("coco_box_ap", "coco_mask_ap")}
_VITDET_SPREAD = (0.1, None, "ViTDet: seed spread about 0.1 box AP on COCO")

PAPER_ROWS: tuple[PaperRow, ...] = (
    # DropPos (NeurIPS 2023): ImageNet-1K fine-tuning top-1.
    _finetune("droppos", "DropPos", "base", 200, 83.0, "DropPos paper/README"),
    _finetune("droppos", "DropPos", "base", 800, 84.2, "DropPos paper/README"),
    _finetune("droppos", "DropPos", "large", 800, 85.8, "DropPos paper/README"),
    PaperRow(
        "droppos",
        "DropPos (transfer)",
        "base",
        "ViT-B/16",
        None,
        coco_box_ap50=68.3,
        coco_mask_ap=42.6,
        ade_miou=47.8,
        source="benchmark aggregator (DropPos paper, not yet checked)",
        note=AGGREGATOR,
        protocols={
            "coco_box_ap50": "Mask R-CNN, DropPos paper's recipe (not ViTDet's 100-epoch one)",
            "coco_mask_ap": "Mask R-CNN, DropPos paper's recipe (not ViTDet's 100-epoch one)",
            "ade_miou": "UperNet, DropPos paper's recipe",
        },
    ),
    # MAE (CVPR 2022): fine-tuning, linear probe, Mask R-CNN COCO, UperNet ADE20K.
    _mae_paper("base", "ViT-B/16", 83.6, 68.0, coco_box_ap=50.3, ade_miou=48.1),
    _mae_paper("large", "ViT-L/16", 85.9, 75.8, coco_box_ap=53.3, ade_miou=53.6),
    _mae_paper("huge", "ViT-H/14", 86.9, 76.6),
    _mae_repo("base", "ViT-B/16", 83.57, 0.08, 67.8),
    _mae_repo("large", "ViT-L/16", 85.87, 0.07, 76.0),
    PaperRow(
        "mae",
        "MAE (ViTDet Mask R-CNN, 100-ep recipe)",
        "base",
        "ViT-B/16",
        1600,
        coco_box_ap=51.6,
        coco_mask_ap=45.9,
        source="ViTDet",
        protocols=_VITDET,
        spreads={"coco_box_ap": _VITDET_SPREAD},
    ),
    # AdPE / MAE+ (ViT-B fine-tuning; abs. = absolute PE, rel. = relative PE).
    _finetune("adpe", "MAE+ (abs. PE)", "base", None, 83.9, "AdPE code/paper"),
    _finetune("adpe", "MAE+ (rel. PE)", "base", None, 84.2, "AdPE code/paper"),
    _finetune("adpe", "AdPE embed (abs. PE)", "base", None, 84.1, "AdPE code/paper"),
    _finetune("adpe", "AdPE embed (rel. PE)", "base", None, 84.3, "AdPE code/paper"),
    _finetune("adpe", "AdPE coord (abs. PE)", "base", None, 84.2, "AdPE code/paper"),
    PaperRow(
        "adpe",
        "AdPE coord (rel. PE)",
        "base",
        "ViT-B/16",
        1600,
        finetune_top1=84.4,
        source="AdPE code/paper",
        note="= MAE 1600 ep + 0.8 (abstract)",
        protocols=_FT,
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
        protocols=_FT,
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

METHOD_NAMES = {"droppos": "DropPos", "mae": "MAE", "adpe": "AdPE", "scratch": "scratch"}
METHOD_ORDER = ("droppos", "mae", "adpe", "scratch")


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


def reference_number(method: str, size: str, key: str) -> PaperRow | None:
    """The paper row a run's ``key`` measure is compared with: one with a published spread
    first, then the headline row, then any row of that method and size reporting it."""
    rows = [r for r in paper_rows(method, size) if getattr(r, key) is not None]
    if not rows:
        return None
    with_spread = [r for r in rows if key in r.spreads]
    if with_spread:
        return with_spread[0]
    head = headline(method, size)
    return head if head in rows else rows[0]


# Transfer results AdPE states only relative to MAE ViT-B (abstract): metric -> gain in points.
GAINS_OVER_MAE: dict[str, dict[str, float]] = {"adpe": {"coco_box_ap": 3.2, "coco_mask_ap": 1.6, "ade_miou": 2.6}}
