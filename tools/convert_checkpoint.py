"""Convert any supported checkpoint into an encoder file for timm, safetensors, Detectron2 or MMSeg.

    python -m tools.convert_checkpoint SRC DST --to {timm,safetensors,detectron2,mmseg}
        [--check-timm vit_base_patch16_224]

SRC may be this suite's pretraining checkpoint or exported backbone, a released DropPos /
MAE / AdPE checkpoint, timm ViT weights (a fine-tuned classifier), a Detectron2 detector
(``model_final.pth``, this suite's ViTDet or ViTDet's own), an MMEngine segmentor
checkpoint (``iter_*.pth``), MMSegmentation MAE / BEiT backbone weights, or an earlier
export (safetensors with its card). The source format is detected and printed; a file
whose keys show two layouts is refused as ambiguous. DST gets the encoder in the
target's names and layout (``pretrain.weights.export``) and ``DST.card.json`` beside it.
"""
from __future__ import annotations

import argparse
import sys

from pretrain.weights.export import WRITERS, export_weights
from pretrain.weights import CheckpointError


def check_timm(name: str, dst: str) -> None:
    """Build timm ``name`` from DST through timm's own pretrained-file path, strictly; CheckpointError if not."""
    import timm

    from pretrain.weights import load_encoder

    enc = load_encoder(dst)
    patch = int(enc["patch_embed.proj.weight"].shape[-1])
    side = int(round((enc["pos_embed"].shape[1] - 1) ** 0.5))
    try:
        timm.create_model(name, pretrained=True, num_classes=0, img_size=side * patch, patch_size=patch,
                          pretrained_strict=True, pretrained_cfg_overlay=dict(file=dst, num_classes=0))
    except RuntimeError as exc:  # timm / torch name the keys and shapes
        first = "\n".join(str(exc).splitlines()[:6])
        raise CheckpointError(f"{dst} does not load strictly into timm {name}: {first}") from exc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--to", choices=sorted(WRITERS), default="timm", help="target format (default: timm)")
    p.add_argument("--check-timm", default=None, help="timm model name to build from DST strictly (--to timm/safetensors)")
    args = p.parse_args(argv)
    try:
        done = export_weights(args.src, args.dst, args.to)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    enc, card = done.encoder, done.card
    blocks = len({k.split(".")[1] for k in enc if k.startswith("blocks.")})
    print(f"{args.src} ({done.source_format}) -> {args.dst} ({args.to}): {len(enc)} encoder tensors, {blocks} blocks, "
          f"width {card['embed_dim']}, {card['position_embedding']} position embedding, method {card['method']}")
    print(f"card: {done.files[-1]}")
    if args.check_timm:
        if args.to not in ("timm", "safetensors"):
            print("error: --check-timm needs --to timm or --to safetensors", file=sys.stderr)
            return 1
        try:
            check_timm(args.check_timm, args.dst)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"loaded strictly into timm {args.check_timm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
