"""What every pretraining method returns, so that one training loop drives them all."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MethodOutput:
    """Result of one forward pass of a pretraining method.

    Attributes:
        loss: scalar to back-propagate.
        metrics: detached scalar tensors to log (kept on the device: no host sync).
        outputs: anything else useful for analysis (logits, masks, weights ...).
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
