"""The image classifier of both transfer protocols: the suite's ViT with a linear head.

Fine-tuning (MAE / DropPos recipe) pools the patch tokens (``global_pool='avg'``,
timm then swaps the final ``norm`` for a fresh ``fc_norm`` LayerNorm after pooling)
and initialises the head with a tiny std (2e-5) so the first steps barely disturb
the pretrained encoder. Linear probing reads the cls token through the pretrained
final norm (``global_pool='token'``) and puts a non-affine BatchNorm before the
linear layer (MAE's ``LinearProbeHead``), because the encoder's feature scales vary
a lot between methods and LARS is sensitive to them.

Backbones whose checkpoints hold AdPE's contextual relative position tables
(``blocks.{i}.attn.rpe_k.*``) need relative-position attention in every block:
:func:`build_classifier` asks ``create_vit(..., rel_pos=True)`` for it.
"""
from __future__ import annotations

import importlib.util
import inspect
from typing import Callable, Iterable

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from pretrain.models.vit import VisionTransformer, create_vit

REL_POS_MARKER = ".attn.rpe_k."


def needs_rel_pos(keys: Iterable[str]) -> bool:
    """True when a state dict holds AdPE relative-position tables (keys with ``.attn.rpe_k.``)."""
    return any(REL_POS_MARKER in k for k in keys)


def rel_pos_available() -> bool:
    """Whether ``create_vit`` can build relative-position attention (``pretrain/models/relpos.py``)."""
    if importlib.util.find_spec("pretrain.models.relpos") is None:
        return False
    params = set(inspect.signature(create_vit).parameters)
    params |= set(inspect.signature(VisionTransformer.__init__).parameters)
    return "rel_pos" in params


def init_head(head: nn.Linear, std: float) -> None:
    """MAE's head init: truncated normal weights of std ``std``, zero bias."""
    trunc_normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)


def build_classifier(
    size: str,
    *,
    num_classes: int,
    img_size: int = 224,
    patch_size: int = 16,
    global_pool: str = "avg",
    drop_path: float = 0.0,
    freeze_pos_embed: bool = False,
    rel_pos: bool = False,
    head_init_std: float = 2e-5,
) -> VisionTransformer:
    """A ViT classifier ready for weights from a pretrained encoder.

    Args:
        size: ViT size name (tiny / small / base / large / huge).
        num_classes: classifier outputs.
        img_size: input resolution (the position table is resized to it on load).
        patch_size: patch side; must equal the pretrained one.
        global_pool: 'avg' (mean of patch tokens + fc_norm, the fine-tuning default)
            or 'token' (cls token after the final norm, the linear-probe default).
        drop_path: stochastic depth rate (linearly increasing over blocks).
        freeze_pos_embed: keep the position table fixed. The reference DropPos
            fine-tuning does this (its flag is inverted); MAE trains it.
        rel_pos: contextual relative-position attention (AdPE relative-PE backbones).
        head_init_std: std of the truncated-normal head init (MAE: 2e-5 fine-tune, 0.01 probe).
    """
    if global_pool not in ("avg", "token"):
        raise ValueError(f"global_pool must be 'avg' or 'token', got {global_pool!r}")
    kwargs = {}
    if rel_pos:
        if not rel_pos_available():
            raise NotImplementedError(
                "this backbone uses AdPE relative position attention (keys '*.attn.rpe_k.*'), but "
                "pretrain/models/relpos.py and create_vit(..., rel_pos=True) are not available in this checkout"
            )
        kwargs["rel_pos"] = True
    model = create_vit(
        size,
        img_size=img_size,
        patch_size=patch_size,
        num_classes=num_classes,
        global_pool=global_pool,
        drop_path_rate=drop_path,
        learnable_pos_embed=not freeze_pos_embed,
        **kwargs,
    )
    init_head(model.head, head_init_std)
    return model


class ProbeHead(nn.Module):
    """Linear-probe classifier on frozen features: BatchNorm1d(affine=False, eps=1e-6) + Linear.

    Input [B, D] features, output [B, num_classes] logits.
    """

    def __init__(self, dim: int, num_classes: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.fc = nn.Linear(dim, num_classes)
        init_head(self.fc, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(x.float()))


class FrozenProbe(nn.Module):
    """Frozen encoder followed by a trainable head: images -> logits.

    ``features(encoder, images)`` picks what the head sees: the pooled pre-logits feature
    (default, :func:`encoder_features`, for :class:`ProbeHead`) or the tokens (:func:`encoder_tokens`).
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        head: nn.Module,
        features: Callable[[VisionTransformer, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.features = features or encoder_features

    def train(self, mode: bool = True) -> "FrozenProbe":
        """Only the head switches modes; the frozen encoder always runs in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            feats = self.features(self.encoder, x)
        return self.head(feats)


def encoder_features(encoder: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Pooled pre-logits features [B, D] (cls token or patch mean, per the model's global_pool)."""
    return encoder.forward_head(encoder.forward_features(x), pre_logits=True)


def encoder_tokens(encoder: VisionTransformer, x: torch.Tensor, include_cls: bool = False) -> torch.Tensor:
    """Output tokens [B, N, D] after the encoder's final norm: the patch tokens, the cls token first if asked.

    Build the encoder with ``global_pool='token'`` so that the final norm is the pretrained one
    (with 'avg' timm replaces it by an identity and normalises after pooling).
    """
    tokens = encoder.forward_features(x)
    return tokens if include_cls else tokens[:, encoder.num_prefix_tokens:]
