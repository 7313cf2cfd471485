"""Optimizer construction and gradient clipping."""
from __future__ import annotations

from typing import Any, Iterable

import torch


def build_adamw(
    params: Iterable[dict[str, Any]] | Iterable[torch.Tensor],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    fused: bool = True,
) -> torch.optim.AdamW:
    """AdamW, fused where the parameters' device supports it (CUDA, and CPU in torch >= 2.4)."""
    params = list(params)
    kwargs: dict[str, Any] = dict(lr=lr, betas=tuple(betas))
    if fused:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, foreach=True, **kwargs)


@torch.no_grad()
def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None, mode: str = "global") -> torch.Tensor | None:
    """Clip gradients; returns the global norm before clipping (a device tensor, no sync).

    ``global``: one norm over all gradients (the paper/MAE behaviour).
    ``per_tensor``: the reference code's behaviour, capping each tensor's own norm.
    """
    params = [p for p in params if p.grad is not None]
    if max_norm is None or max_norm <= 0:
        return None
    if mode == "global":
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    if mode != "per_tensor":
        raise ValueError(f"unknown clip mode {mode!r}")
    norms = torch._foreach_norm([p.grad for p in params])
    for p, n in zip(params, norms):
        p.grad.mul_((max_norm / (n + 1e-6)).clamp(max=1.0))
    return torch.linalg.vector_norm(torch.stack(norms))
