"""RankMe: the effective rank of an embedding matrix, the collapse signal of self-supervised training.

Garrido et al., "RankMe: Assessing the downstream performance of pretrained self-supervised
representations by their rank" (ICML 2023): with the singular values s_k of the embeddings
Z [n, d] and p_k = s_k / sum(s) + eps, RankMe(Z) = exp(-sum_k p_k log p_k), the exponential
of the entropy of the normalised spectrum (eps = 1e-7 as in the paper). It lies between 1
(every embedding on one line: collapse) and min(n, d) (a flat spectrum). Needs no labels.
"""
from __future__ import annotations

import torch

EPS = 1e-7


@torch.no_grad()
def singular_values(z: torch.Tensor) -> torch.Tensor:
    """Singular values of ``z`` [n, d] in float64; for n > d from the eigenvalues of the d x d Gram
    matrix (z^T z), which costs n d^2 instead of an SVD of the tall matrix."""
    z = z.double()
    if z.shape[0] > z.shape[1]:
        return torch.linalg.eigvalsh(z.T @ z).clamp_min(0).sqrt().flip(0)
    return torch.linalg.svdvals(z)


@torch.no_grad()
def rankme(embeddings: torch.Tensor, eps: float = EPS) -> float:
    """RankMe of ``embeddings`` [n, d] (float64, on their device; the rows are used as they are, not centred)."""
    if embeddings.dim() != 2 or min(embeddings.shape) == 0:
        raise ValueError(f"RankMe needs a non-empty [n, d] matrix, got shape {tuple(embeddings.shape)}")
    s = singular_values(embeddings)
    total = s.sum()
    if not total > 0:  # all zero: nothing spans any direction
        return 0.0
    p = s / total + eps
    return float(torch.exp(-(p * p.log()).sum()))
