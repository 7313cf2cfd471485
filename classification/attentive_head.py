"""The attentive probe's head: one cross-attention block with a learnable query over frozen tokens.

A linear probe reads one fixed summary of the encoder (the cls token or the patch mean),
which underrates masked-image-modelling encoders: their information sits spread over the
patch tokens rather than in the cls token. The attentive probe learns *where to look*:
one learnable query attends over the frozen tokens (multi-head attention, keys and values
projected from the tokens), the pooled vector goes through a residual MLP, a LayerNorm,
then a linear classifier. The pooling block is timm's ``AttentionPoolLatent`` (the MAP
head of SigLIP-style ViTs); it sees tokens that already passed the encoder's final norm.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import AttentionPoolLatent, trunc_normal_

from .model import init_head


class AttentivePoolingHead(nn.Module):
    """Tokens [B, N, D] -> logits [B, num_classes].

    Args:
        dim: token width (the encoder's embed_dim).
        num_classes: classifier outputs.
        num_heads: attention heads of the pooling block (``dim`` must divide by it).
        mlp_ratio: hidden width of the residual MLP after the attention, relative to ``dim``.
        init_std: std of the truncated-normal init of the learnable query and the projections.
        head_init_std: std of the classifier's truncated-normal init (zero bias).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        init_std: float = 0.02,
        head_init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"the token width {dim} does not divide into {num_heads} attention heads")
        self.pool = AttentionPoolLatent(dim, num_heads=num_heads, mlp_ratio=mlp_ratio, norm_layer=nn.LayerNorm)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        for m in self.pool.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=init_std)
                nn.init.zeros_(m.bias)
        trunc_normal_(self.pool.latent, std=init_std)
        init_head(self.fc, head_init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.pool(tokens.float())))

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay: the query, biases and norms (1-D or the latent)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n == "pool.latent"}
