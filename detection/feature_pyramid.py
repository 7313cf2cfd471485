"""ViTDet's Simple Feature Pyramid as a Detectron2 ``Backbone`` (Li et al., ECCV 2022).

From the single stride-16 map of a plain ViT, parallel deconvolution / pooling branches make
strides 4, 8, 16 and 32 (scale factors 4, 2, 1, 0.5); each branch ends in a 1x1 and a 3x3
conv with channel LayerNorm to 256 channels, and ``LastLevelMaxPool`` adds stride 64:
outputs ``p2``..``p6``. Module names follow ViTDet (``net``, ``simfp_{2..5}``), so the whole
backbone's state dict has the same keys as Detectron2's ViTDet.

Detectron2 v0.6 has neither this class nor the "LN" norm; both are defined here, so the
same code runs on v0.6 and on Detectron2 main. Square padding (ViTDet pads every input to
1024 x 1024) is done inside ``forward`` for the same reason (main does it in ``ImageList``
via ``padding_constraints``, which v0.6 lacks); zero padding at the bottom/right of the
normalised image equals ``ImageList``'s padding, so features are identical.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.backbone import Backbone


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a [B, C, H, W] map (Detectron2's "LN", eps 1e-6).

    A plain ``nn.Module`` (not an ``nn.LayerNorm``), like Detectron2's own: ViTDet's optimizer
    rule therefore gives its parameters weight decay.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (self.num_channels,), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def make_norm(norm: str | Callable[[int], nn.Module] | None, channels: int) -> nn.Module | None:
    """'LN' -> LayerNorm2d; '' / None -> no norm; a callable is called with ``channels``."""
    if not norm:
        return None
    if norm == "LN":
        return LayerNorm2d(channels)
    if isinstance(norm, str):
        from detectron2.layers import get_norm

        return get_norm(norm, channels)
    return norm(channels)


class SimpleFeaturePyramid(Backbone):
    """Multi-scale maps from a plain ViT's last feature map.

    Args:
        net: encoder returning [B, C, H / s, W / s]; needs ``embed_dim`` and ``patch_size`` (= s).
        out_channels: width of every output map (256).
        scale_factors: resampling of the stride-s map per level (4, 2, 1, 0.5 -> strides 4..32
            for s = 16; powers of 2 up, 1/n down, e.g. 2, 1, 0.5, 0.25 for s = 8).
        top_block: extra levels from the last one (``LastLevelMaxPool`` -> p6), or None.
        norm: norm after each output conv ("LN" in ViTDet).
        square_pad: pad inputs to this square side before the encoder (1024); 0 = off.
    """

    def __init__(
        self,
        net: nn.Module,
        out_channels: int = 256,
        scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5),
        top_block: nn.Module | None = None,
        norm: str | Callable[[int], nn.Module] | None = "LN",
        square_pad: int = 0,
    ) -> None:
        super().__init__()
        self.net = net
        dim = net.embed_dim
        net_stride = net.patch_size
        self.scale_factors = tuple(scale_factors)
        strides = [int(net_stride / s) for s in self.scale_factors]
        use_bias = not norm

        self.stages = []
        for scale, stride in zip(self.scale_factors, strides):
            layers, out_dim = self._resample(scale, dim, norm)
            lateral = Conv2d(out_dim, out_channels, 1, bias=use_bias, norm=make_norm(norm, out_channels))
            output = Conv2d(
                out_channels, out_channels, 3, padding=1, bias=use_bias, norm=make_norm(norm, out_channels)
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            stage = nn.Sequential(*layers, lateral, output)
            level = int(math.log2(stride))
            self.add_module(f"simfp_{level}", stage)
            self.stages.append(stage)

        self.top_block = top_block
        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            last = int(math.log2(strides[-1]))
            for k in range(top_block.num_levels):
                self._out_feature_strides[f"p{last + k + 1}"] = 2 ** (last + k + 1)
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = strides[-1]
        self.square_pad = square_pad

    @staticmethod
    def _resample(scale: float, dim: int, norm) -> tuple[list[nn.Module], int]:
        """Layers taking the encoder map to ``scale`` x its resolution, and their width.

        Up: log2(scale) stride-2 deconvolutions halving the width, with norm + GELU between
        (ViTDet: 4 -> deconv, LN, GELU, deconv; 2 -> deconv). Down: max pooling (0.5 -> 2x2).
        """
        if scale > 1:
            steps = int(round(math.log2(scale)))
            if 2**steps != scale:
                raise ValueError(f"up-scaling factor must be a power of 2, got {scale}")
            layers: list[nn.Module] = []
            width = dim
            for k in range(steps):
                if k > 0:
                    layers += [make_norm(norm, width) or nn.Identity(), nn.GELU()]
                layers.append(nn.ConvTranspose2d(width, width // 2, kernel_size=2, stride=2))
                width //= 2
            return layers, width
        if scale == 1:
            return [], dim
        factor = int(round(1 / scale))
        if factor * scale != 1:
            raise ValueError(f"down-scaling factor must be 1/n, got {scale}")
        return [nn.MaxPool2d(kernel_size=factor, stride=factor)], dim

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: normalised images [B, 3, H, W] -> {"p2": [B, 256, H/4, W/4], ..., "p6": [.., H/64, W/64]}."""
        if self.square_pad:
            h, w = x.shape[-2:]
            pad_h, pad_w = max(self.square_pad - h, 0), max(self.square_pad - w, 0)
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
        features = self.net(x)
        results = [stage(features) for stage in self.stages]
        if self.top_block is not None:
            top_in = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_in))
        return dict(zip(self._out_features, results))
