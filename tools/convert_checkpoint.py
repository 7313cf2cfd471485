"""Convert any supported checkpoint into an encoder file for timm, safetensors, Detectron2 or MMSeg.

    python -m tools.convert_checkpoint SRC DST --to {timm,safetensors,detectron2,mmseg,mmseg-vit,droppos-upernet}
        [--check-timm vit_base_patch16_224] [--overwrite]

SRC may be this suite's pretraining checkpoint or exported backbone, a released DropPos /
MAE / AdPE checkpoint, timm ViT weights (a fine-tuned classifier), a Detectron2 detector
(``model_final.pth``, this suite's ViTDet or ViTDet's own), an MMEngine segmentor
checkpoint (``iter_*.pth``), MMSegmentation MAE / BEiT / ViT backbone weights, or an
earlier export (safetensors with its card). The source format is detected and printed; a
file whose keys show two layouts is refused as ambiguous. DST gets the encoder in the
target's names and layout (``pretrain.weights.targets``) and ``DST.card.json`` beside it;
the command prints how the target's library loads it, what was folded or filled, and
every learned weight the target will not use.

Nothing is written when a check fails: a DST that is SRC or its card, a folder, or an
existing file without ``--overwrite``; an encoder the target cannot hold; ``--check-timm``
(the file is built in timm, strictly, before it is moved to DST).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretrain.weights import CheckpointError
from pretrain.weights.export import export_weights
from pretrain.weights.targets import TARGETS, encoder_arch

TIMM_CHECKABLE = ("timm", "safetensors")


def check_timm(name: str, path: str | Path) -> None:
    """Build timm ``name`` from ``path`` through timm's own pretrained-file path, strictly; CheckpointError if not."""
    import timm

    from pretrain.weights import load_encoder

    arch = encoder_arch(load_encoder(path))
    if arch.grid is None:
        raise CheckpointError(f"{path}: no square patch grid to build timm {name} with")
    try:
        timm.create_model(name, pretrained=True, num_classes=0, img_size=arch.grid[0] * arch.patch_size,
                          patch_size=arch.patch_size, pretrained_strict=True,
                          pretrained_cfg_overlay=dict(file=str(path), num_classes=0))
    except (RuntimeError, KeyError, ValueError) as exc:  # timm / torch name the keys and shapes
        first = "\n".join(str(exc).splitlines()[:6])
        raise CheckpointError(f"{path} does not load strictly into timm {name}: {first}") from exc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", choices=list(TARGETS), default="timm", help="target format (default: timm)")
    p.add_argument("--check-timm", default=None, help="timm model name to build from DST strictly (--to timm/safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST and its card")
    args = p.parse_args(argv)
    if args.check_timm and args.to not in TIMM_CHECKABLE:
        print(f"error: --check-timm needs --to timm or --to safetensors (got --to {args.to}); nothing written",
              file=sys.stderr)
        return 2
    verify = None
    if args.check_timm:
        def verify(path: Path) -> None:
            check_timm(args.check_timm, path)
    try:
        # what timm cannot hold as it is is refused before writing (a safetensors file is not adapted for it)
        also = "timm" if args.check_timm and args.to == "safetensors" else None
        done = export_weights(args.src, args.dst, args.to, overwrite=args.overwrite, verify=verify, also_fits=also)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    enc, card = done.encoder, done.card
    blocks = len({k.split(".")[1] for k in enc if k.startswith("blocks.")})
    print(f"{args.src} ({done.source_format}) -> {args.dst} ({args.to}): {len(enc)} encoder tensors, {blocks} blocks, "
          f"width {card['embed_dim']}, {card['position_embedding']} position embedding, method {card['method']}")
    for what, how in card.get("target_notes", {}).items():
        print(f"note: {what}: {how}")
    for warning in done.warnings:
        print(f"warning: {warning}")
    if args.check_timm:
        print(f"loaded strictly into timm {args.check_timm}")
    print(f"load with: {done.load_with}")
    print(f"card: {done.files[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
