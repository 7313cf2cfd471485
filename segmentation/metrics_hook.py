"""Write the segmentation metrics of every validation / test run to one JSON file.

``<work_dir>/segmentation_metrics.json`` is what ``analysis`` reads for ADE20K:
``{"task": "ade20k_segmentation", "mIoU", "mAcc", "aAcc", "config", "iterations", ...}``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmseg.registry import HOOKS
from pretrain.atomic import atomic_write_text

METRICS_FILE = "segmentation_metrics.json"


def write_metrics_json(
    work_dir: str | os.PathLike,
    metrics: dict[str, Any],
    config: str,
    iterations: int,
    split: str = "val",
    **extra: Any,
) -> Path:
    """Write the metrics file atomically; returns its path."""
    record = {
        "task": "ade20k_segmentation",
        "mIoU": _num(metrics.get("mIoU")),
        "mAcc": _num(metrics.get("mAcc")),
        "aAcc": _num(metrics.get("aAcc")),
        "config": str(config),
        "iterations": int(iterations),
        "split": split,
        **extra,
    }
    path = Path(work_dir) / METRICS_FILE
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


@HOOKS.register_module()
class SegMetricsJsonHook(Hook):
    """After each validation (and test) epoch, write ``segmentation_metrics.json`` in work_dir.

    Args:
        iterations: iteration count to record for test runs (the runner does not
            know it when only a checkpoint was loaded); None uses ``runner.iter``.
    """

    priority = "VERY_LOW"

    def __init__(self, iterations: int | None = None) -> None:
        self.iterations = iterations

    def _write(self, runner, metrics: dict[str, Any] | None, split: str) -> None:
        if not metrics or not is_main_process():
            return
        config = getattr(runner.cfg, "filename", None) or runner.experiment_name
        iters = self.iterations if (split == "test" and self.iterations is not None) else runner.iter
        path = write_metrics_json(runner.work_dir, metrics, config, iters, split=split)
        runner.logger.info(f"segmentation metrics ({split}): mIoU {metrics.get('mIoU')} -> {path}")

    def after_val_epoch(self, runner, metrics: dict[str, Any] | None = None) -> None:
        self._write(runner, metrics, "val")

    def after_test_epoch(self, runner, metrics: dict[str, Any] | None = None) -> None:
        self._write(runner, metrics, "test")
