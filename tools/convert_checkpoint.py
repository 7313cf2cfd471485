"""Convert any supported checkpoint into an encoder-only backbone file.

    python -m tools.convert_checkpoint SRC.pth DST.pth [--check-timm vit_base_patch16_224]

SRC may be this suite's pretraining checkpoint, a released DropPos / MAE / AdPE
checkpoint or timm ViT weights. DST holds ``{'model': <timm-named encoder weights>}``,
which timm's VisionTransformer of the same size loads with strict key matching, and
which every transfer package here (classification, detection, segmentation) accepts.
"""
from __future__ import annotations

import argparse
import sys

from pretrain.weights import CheckpointError, detect_format, export_backbone, load_checkpoint_file, model_state


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--check-timm", default=None, help="timm model name to load DST into strictly (num_classes=0)")
    args = p.parse_args(argv)
    try:
        fmt = detect_format(model_state(load_checkpoint_file(args.src), args.src))
        enc = export_backbone(args.src, args.dst)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    blocks = len({k.split(".")[1] for k in enc if k.startswith("blocks.")})
    print(f"{args.src} ({fmt}) -> {args.dst}: {len(enc)} encoder tensors, {blocks} blocks, width {enc['cls_token'].shape[-1]}")
    if args.check_timm:
        import timm

        patch = int(enc["patch_embed.proj.weight"].shape[-1])
        side = int(round((enc["pos_embed"].shape[1] - 1) ** 0.5))
        model = timm.create_model(args.check_timm, pretrained=False, num_classes=0, img_size=side * patch, patch_size=patch)
        model.load_state_dict(enc, strict=True)
        print(f"loaded strictly into timm {args.check_timm}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
