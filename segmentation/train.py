"""Train UperNet on ADE20K-format data with a suite ViT backbone (MMEngine Runner).

Examples:
    # CPU smoke run on the built-in data
    python segmentation/train.py segmentation/configs/upernet_vit-tiny_1xb8-400it_builtin-ade-128x128.py
    # 8 GPUs, our DropPos checkpoint in the backbone
    torchrun --nproc_per_node 8 segmentation/train.py \
        segmentation/configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py \
        --launcher pytorch --checkpoint runs/droppos_b16/checkpoint-799.pth

The resolved config is saved in the work dir by the Runner; after each
validation ``segmentation_metrics.json`` is (re)written there.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:  # configs import segmentation.* and pretrain.* from the repo root
    sys.path.insert(0, ROOT)

from segmentation.runner_setup import add_runner_args, build_runner, check_data, config_from_args, run_entry  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("UperNet segmentation training", add_help=True)
    p.add_argument("config", help="config file (segmentation/configs/...)")
    p.add_argument("--checkpoint", help="pretraining checkpoint for the backbone (any supported format)")
    p.add_argument(
        "--resume", nargs="?", const="auto", default=None,
        help="resume training: without a value from the latest checkpoint in the work dir, else from PATH")
    p.add_argument("--no-amp", action="store_true", help="train in fp32 even on GPU")
    return add_runner_args(p)


def main(args: argparse.Namespace) -> None:
    cfg = config_from_args(args)
    if args.checkpoint:
        cfg.model.pretrained = None
        cfg.model.backbone.pretrained = args.checkpoint
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    check_data(cfg, ("train_dataloader", "val_dataloader"), args.check_data)
    runner = build_runner(cfg, train=True, force_fp32=args.no_amp)
    runner.train()


if __name__ == "__main__":
    sys.exit(run_entry(main, get_args_parser().parse_args()))
