"""The check's detection part: a short ViTDet Mask R-CNN run through ``detection.train_net``.

    python -m tools.gpu_check.detection_part --config-file detection/configs/mask_rcnn_vitdet_b_100ep.py \
        --data-root DIR --init BACKBONE.pth --out DIR --json OUT.json key=value ...

The built-in COCO split is registered in this process first, so that plain ``key=value``
overrides can point any config's loaders at it; then ``detection.train_net.main`` trains
(with AMP where the config asks and CUDA is there), checkpoints and evaluates exactly as
its command line does. Reported: the median seconds per iteration over the last 20
iterations (Detectron2's own timer, which skips the first 3), data time, peak CUDA
memory, box / mask AP, and checks (finite losses, all iterations done, AP computed).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pretrain.atomic import atomic_write_json

from .train_parts import fresh_dir, peak_memory_mib


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """Detectron2's metrics.json records of training iterations (those with a total_loss)."""
    path = out / "metrics.json"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "total_loss" in r]


def run_detection(config_file: str, data_root: Path, init: Path | None, out: Path,
                  overrides: list[str]) -> dict[str, Any]:
    """Train and evaluate once; the figures and checks of the run."""
    import detection  # noqa: F401  (Detectron2 shims first)
    from detectron2.config import LazyConfig
    from detectron2.engine import default_argument_parser

    from detection import train_net
    from detection.datasets import builtin_coco

    fresh_dir(out)
    train_name, val_name = builtin_coco(data_root, "train"), builtin_coco(data_root, "val")
    opts = [f"dataloader.train.dataset.names={train_name}", f"dataloader.test.dataset.names={val_name}",
            f"dataloader.evaluator.dataset_name={val_name}", "model.roi_heads.num_classes=10",
            f"train.output_dir={out}", f"train.init_checkpoint={init if init else ''}", *overrides]
    args = default_argument_parser().parse_args(["--config-file", config_file, *opts])
    cfg = train_net.apply_overrides(LazyConfig.load(config_file), list(opts))
    train_net.resolve_device(cfg)  # what main will decide: the device, and AMP only on CUDA
    t0 = time.perf_counter()
    record = train_net.main(args)
    seconds = time.perf_counter() - t0
    metrics = read_metrics(out)
    timed = [r for r in metrics if "time" in r]
    losses = [float(r["total_loss"]) for r in metrics]
    result = {
        "config": config_file, "device": str(cfg.train.device), "amp": bool(cfg.train.amp.enabled),
        "images_per_iter": int(cfg.dataloader.train.total_batch_size),
        "image_size": int(cfg.model.backbone.square_pad), "iterations": record.get("iterations"),
        "s_per_iter": timed[-1]["time"] if timed else None,
        "data_s_per_iter": timed[-1].get("data_time") if timed else None,
        "peak_memory_mib": peak_memory_mib(), "seconds": seconds,
        "init_checkpoint": str(init) if init else None, "init_keys": record.get("init_checkpoint_keys"),
        "bbox_AP": record.get("bbox_AP"), "segm_AP": record.get("segm_AP"),
        "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
    }
    result["checks"] = {
        "loss_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "iterations_done": bool(metrics) and metrics[-1].get("iteration") == int(cfg.train.max_iter) - 1,
        "timed": result["s_per_iter"] is not None,
        "evaluated": "bbox" in record.get("results", {}) and "segm" in record.get("results", {}),
        "amp_on_cuda": result["amp"] or not torch.cuda.is_available(),
    }
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("GPU check: ViTDet Mask R-CNN part")
    p.add_argument("--config-file", required=True)
    p.add_argument("--data-root", required=True, type=Path, help="built-in data root (holds coco/)")
    p.add_argument("--init", type=Path, help="pretrained backbone; random init when the file is missing")
    p.add_argument("--out", required=True, type=Path, help="output folder (emptied first)")
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("opts", nargs="*", help="config overrides key=value")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    init = args.init if args.init is not None and args.init.is_file() else None
    if args.init is not None and init is None:
        print(f"[gpu_check] detection: {args.init} not found: random initialisation", flush=True)
    result = run_detection(args.config_file, args.data_root, init, args.out, args.opts)
    result["ok"] = all(result["checks"].values())
    atomic_write_json(args.json, result)
    failed = [k for k, v in result["checks"].items() if not v]
    print("[gpu_check] detection: " + ("all checks passed" if not failed else f"checks failed: {', '.join(failed)}"))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
