"""Evaluate a trained UperNet checkpoint on ADE20K-format data (mIoU, mAcc, aAcc).

Examples:
    python segmentation/test.py CONFIG work_dirs/NAME/iter_160000.pth
    # multi-scale + flip: the -ms configs define tta_model (or pass --tta)
    torchrun --nproc_per_node 8 segmentation/test.py \
        segmentation/configs/upernet_vit-b16_8xb2-amp-160k_ade20k-512x512-ms.py CKPT --launcher pytorch

Writes ``<work_dir>/segmentation_metrics.json`` (split "test").
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from segmentation.runner_setup import (  # noqa: E402
    add_runner_args,
    build_runner,
    check_data,
    checkpoint_iteration,
    config_from_args,
    run_entry,
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("UperNet segmentation evaluation", add_help=True)
    p.add_argument("config", help="config file the model was trained with (or its -ms variant)")
    p.add_argument("checkpoint", help="segmentation checkpoint written by segmentation/train.py")
    p.add_argument("--tta", action="store_true", help="multi-scale + flip test with the config's tta_pipeline")
    return add_runner_args(p)


def main(args: argparse.Namespace) -> dict:
    cfg = config_from_args(args)
    cfg.load_from = args.checkpoint
    cfg.model.backbone.pretrained = None  # all weights come from the segmentation checkpoint
    cfg.model.pretrained = None
    if args.tta:
        cfg.tta_model = cfg.get("tta_model") or dict(type="SegTTAModel")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    if cfg.get("tta_model"):  # -ms configs: multi-scale + flip
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    # the metrics file records the iteration the checkpoint was saved at
    hooks = [h for h in cfg.get("custom_hooks", []) if h.get("type") != "SegMetricsJsonHook"]
    cfg.custom_hooks = hooks + [dict(type="SegMetricsJsonHook", iterations=checkpoint_iteration(args.checkpoint))]
    check_data(cfg, ("test_dataloader",), args.check_data)
    runner = build_runner(cfg, train=False)
    return runner.test()


if __name__ == "__main__":
    sys.exit(run_entry(main, get_args_parser().parse_args()))
