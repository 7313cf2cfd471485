"""Run logs: JSON lines, TensorBoard scalars and a progress bar (main process only)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write_text


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

    def state_dict(self) -> dict[str, Any]:
        """Sums (on the CPU) and count, so a resumed run continues the same averages."""
        return {"sums": {k: v.detach().cpu() for k, v in self.sums.items()}, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.sums = {k: torch.as_tensor(v).to(device) for k, v in state.get("sums", {}).items()}
        self.count = int(state.get("count", 0))


class RunLogger:
    """Append JSON lines to ``log.jsonl`` and mirror scalars to TensorBoard."""

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(output_dir) / "log.jsonl"
        self.writer = None
        self.records = 0  # lines in log.jsonl (saved with checkpoints; see ``truncate``)
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_file():
                with open(self.path, "rb") as f:
                    self.records = sum(1 for _ in f)
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
        self.records += 1
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def truncate(self, last_step: int, records: int | None = None) -> int:
        """Drop what a killed run logged after its last checkpoint; returns the records dropped.

        A resumed run calls this with the checkpoint's step and its ``records`` count
        (lines in log.jsonl when it was written), so every step appears once. Without a
        count, records after ``last_step`` go. Half-written lines always go. TensorBoard
        events after ``last_step`` are purged.
        """
        if not self.enabled:
            return 0
        dropped = 0
        if self.path.is_file():
            kept = []
            for i, line in enumerate(self.path.read_text().splitlines()):
                try:
                    record = json.loads(line)
                    keep = i < records if records is not None else int(record["step"]) <= last_step
                except (ValueError, KeyError, TypeError):
                    keep = False  # a line cut short by a crash
                if keep:
                    kept.append(line)
                else:
                    dropped += 1
            self.records = len(kept)
            if dropped:
                atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        if self.writer is not None:
            log_dir = self.writer.log_dir
            self.writer.close()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=log_dir, purge_step=last_step + 1)
        return dropped

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
