"""Run logs: JSON lines, TensorBoard scalars and a progress bar (main process only)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch


class MeanMeter:
    """Running sums of device tensors; reading them is the only host sync."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def update(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach().float()
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.count += 1

    def means(self, reduce=None) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = sorted(self.sums)
        stacked = torch.stack([self.sums[k] for k in keys]) / max(self.count, 1)
        if reduce is not None:
            stacked = reduce(stacked)
        values = stacked.tolist()
        return dict(zip(keys, values))

    def reset(self) -> None:
        self.sums, self.count = {}, 0


class RunLogger:
    """Append JSON lines to ``log.jsonl`` and mirror scalars to TensorBoard."""

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "log.jsonl"
        self.writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "tb"))
                except Exception:  # tensorboard not installed: JSONL only
                    self.writer = None

    def log(self, step: int, values: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, "phase": prefix, "time": time.time(), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
