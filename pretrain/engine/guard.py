"""Detect a non-finite loss without a host sync in the step."""
from __future__ import annotations

import torch


class NonFiniteLossError(FloatingPointError):
    """Raised when a loss became NaN or Inf; carries the step and the loss parts."""


class NonFiniteGuard:
    """Remembers, on the device, the first step whose loss was not finite.

    ``update`` runs every step with tensor ops only; ``check`` (called where the
    loop syncs anyway: logging and before any checkpoint is written) raises.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.parts: dict[str, torch.Tensor] = {}

    def update(self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], step: int) -> None:
        bad = ~torch.isfinite(loss.detach().float())
        newly = bad & (self.first_bad < 0)
        self.first_bad = torch.where(newly, torch.full_like(self.first_bad, step), self.first_bad)
        for name, value in metrics.items():
            value = value.detach().float()
            prev = self.parts.get(name, torch.zeros_like(value))
            self.parts[name] = torch.where(newly, value, prev)

    def check(self) -> None:
        step = int(self.first_bad.item())
        if step >= 0:
            parts = ", ".join(f"{k}={float(v):.6g}" for k, v in self.parts.items())
            raise NonFiniteLossError(f"non-finite loss at step {step} (loss parts: {parts})")
