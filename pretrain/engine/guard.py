"""Detect a non-finite loss without a host sync in the step."""
from __future__ import annotations

import torch

from . import distributed as du


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss became NaN or Inf; carries the step and the loss parts."""


class NonFiniteGuard:
    """Remembers, on the device, the first step whose loss was not finite.

    ``update`` runs every step with tensor ops only; ``check`` (called where the
    loop syncs anyway: logging and before any checkpoint is written) raises. Under
    DDP ``check`` is collective (every rank calls it at the same points), so all
    ranks stop together even when only one rank's loss went bad.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.parts: dict[str, torch.Tensor] = {}

    def update(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], step: int) -> None:
        """Record ``step`` (numbered as in log.jsonl) if ``loss`` is not finite and none was before."""
        bad = ~torch.isfinite(loss.detach().float())
        newly = bad & (self.first_bad < 0)
        self.first_bad = torch.where(newly, torch.full_like(self.first_bad, step), self.first_bad)
        for name, value in metrics.items():
            value = value.detach().float()
            prev = self.parts.get(name, torch.zeros_like(value))
            self.parts[name] = torch.where(newly, value, prev)

    def check(self) -> None:
        local = int(self.first_bad.item())
        step = local
        if du.get_world_size() > 1:
            flag = self.first_bad.clone()
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            step = int(flag.item())
        if step >= 0:
            if local >= 0:
                parts = ", ".join(f"{k}={float(v):.6g}" for k, v in self.parts.items())
                where = f" on rank {du.get_rank()}" if du.get_world_size() > 1 else ""
                raise NonFiniteLossError(f"non-finite loss at step {local}{where} (loss parts: {parts})")
            raise NonFiniteLossError(f"non-finite loss at step {step} on another rank (its loss parts are in that rank's error)")
