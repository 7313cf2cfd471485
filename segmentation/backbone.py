"""The suite's ViT as an MMSegmentation backbone (UperNet transfer, MAE/BEiT recipe).

``DropPosViT`` is ``pretrain.models.vit.VisionTransformer`` (timm parameter
names) with what MMSeg's MAE backbone adds for dense prediction:

- layer scale (timm ``LayerScale``, ``blocks.N.ls1.gamma``/``ls2.gamma``, init 1.0),
  stochastic depth rising linearly to ``drop_path_rate``;
- a zero-initialised BEiT relative position bias table in every block
  (``use_rel_pos``), added to fused attention as ``attn_mask``;
- the absolute position table on the training grid (512 px -> 32x32), resized
  on the fly for other input sizes; inputs need not be multiples of the patch;
- multi-level outputs: the patch tokens after blocks ``out_indices`` as NCHW maps
  at stride ``patch_size`` (the Feature2Pyramid neck turns them into 4..32);
- pretrained weights from any suite or reference checkpoint, loaded in
  ``init_weights`` with a report (``segmentation.pretrained``).

Configs import this module through ``custom_imports`` so the registry sees it.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import torch
from mmengine.logging import print_log
from mmseg.registry import MODELS

from pretrain.models.vit import VIT_SIZES, VisionTransformer
from segmentation.pretrained import load_encoder_weights, read_encoder_state
from segmentation.rel_pos_attention import RelPosBiasBlock, relative_position_index

# Outputs for UperNet: the ends of the four quarters of the network.
DEFAULT_OUT_INDICES = {"base": (3, 5, 7, 11), "large": (7, 11, 15, 23)}


@MODELS.register_module()
class DropPosViT(VisionTransformer):
    """Plain ViT backbone with multi-level outputs for MMSeg decode heads.

    Args:
        arch: ViT size name ('tiny', 'small', 'base', 'large', 'huge').
        img_size: training crop; fixes the position table's and the relative table's grid.
        patch_size: patch side in pixels (the output stride).
        out_indices: blocks whose outputs are returned (default: quarters of the depth).
        drop_path_rate: stochastic depth of the last block.
        init_values: layer-scale init (None turns layer scale off).
        use_rel_pos: add a zero-initialised relative position bias to every block.
        final_norm: apply the encoder's final LayerNorm to the last output
            (off in the MAE recipe; when off, no ``norm`` parameters exist).
        pretrained: checkpoint of any supported format (ours, reference
            DropPos/MAE/AdPE, timm) loaded by ``init_weights``.
        **vit_kwargs: overrides of the size's defaults (embed_dim, depth, num_heads, ...).
    """

    def __init__(
        self,
        arch: str = "base",
        img_size: int | tuple[int, int] = 512,
        patch_size: int = 16,
        out_indices: Sequence[int] | None = None,
        drop_path_rate: float = 0.1,
        init_values: float | None = 1.0,
        use_rel_pos: bool = True,
        final_norm: bool = False,
        pretrained: str | None = None,
        **vit_kwargs: Any,
    ) -> None:
        if arch not in VIT_SIZES:
            raise ValueError(f"unknown ViT arch {arch!r}; choose one of {sorted(VIT_SIZES)}")
        args = {**VIT_SIZES[arch], "patch_size": patch_size, **vit_kwargs}
        img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        window = (img_hw[0] // args["patch_size"], img_hw[1] // args["patch_size"])
        if use_rel_pos:
            args["block_fn"] = functools.partial(RelPosBiasBlock, window=window)
        super().__init__(
            img_size=img_hw,
            drop_path_rate=drop_path_rate,
            init_values=init_values,
            final_norm=final_norm,
            learnable_pos_embed=True,  # fine-tuned, as in MMSeg's MAE backbone
            dynamic_img_size=True,  # patch tokens come out as [B, h, w, D] for any input size
            dynamic_img_pad=True,  # sizes that are not multiples of the patch are padded
            weight_init="skip",  # MAE init below; pretrained weights come in init_weights
            **args,
        )
        depth = len(self.blocks)
        self.out_indices = tuple(out_indices) if out_indices is not None else default_out_indices(arch, depth)
        if not self.out_indices or max(self.out_indices) >= depth or min(self.out_indices) < 0:
            raise ValueError(f"out_indices {self.out_indices} outside the {depth} blocks")
        self.use_rel_pos = use_rel_pos
        self.final_norm = final_norm
        self.pretrained = pretrained
        self._index_cache: dict[tuple, torch.Tensor] = {}
        self.init_weights_mae()

    # ---------------------------------------------------------------- weights
    def init_weights(self) -> None:  # type: ignore[override]
        """Load ``pretrained`` (called once by MMEngine before training); log what was loaded."""
        if self.pretrained is None:
            print_log("DropPosViT: no pretrained checkpoint, training from the MAE-style random init", "current")
            return
        state = read_encoder_state(self.pretrained)
        report = load_encoder_weights(self, state, self.grid_size, source=str(self.pretrained))
        print_log("DropPosViT: " + report.summary(), "current")
        self.load_report = report
        self.is_init = True  # MMEngine must not initialise it again

    # ---------------------------------------------------------------- forward
    def rel_pos_index(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Cached ``relative_position_index(grid)`` on ``device`` (shared by all blocks)."""
        key = (grid, str(device))
        if key not in self._index_cache:
            self._index_cache[key] = relative_position_index(grid).to(device)
        return self._index_cache[key]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        """Images [B, 3, H, W] -> one [B, D, ceil(H/p), ceil(W/p)] map per out index.

        Blocks after the last out index are not run (their parameters would get no gradient).
        """
        B = x.shape[0]
        x = self.patch_embed(x)  # [B, h, w, D]
        grid = (x.shape[1], x.shape[2])
        x = x.flatten(1, 2) + self.pos_embed_patches(grid)  # [B, h*w, D]
        x = torch.cat([self.cls_with_pos(B), x], dim=1)  # [B, 1+h*w, D]
        x = self.norm_pre(self.pos_drop(x))
        index = self.rel_pos_index(grid, x.device) if self.use_rel_pos else None
        feats: dict[int, torch.Tensor] = {}
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks[: max(self.out_indices) + 1]):
            x = blk(x, grid, index) if self.use_rel_pos else blk(x)
            if i in self.out_indices:
                y = self.norm(x) if (i == last and self.final_norm) else x
                feats[i] = y[:, 1:].transpose(1, 2).reshape(B, -1, *grid)  # drop cls -> NCHW
        return tuple(feats[i] for i in self.out_indices)


def default_out_indices(arch: str, depth: int) -> tuple[int, ...]:
    """Last block of each quarter: (3, 5, 7, 11) for ViT-B as in MMSeg, (7, 11, 15, 23) for ViT-L."""
    if arch in DEFAULT_OUT_INDICES and depth == VIT_SIZES[arch]["depth"]:
        return DEFAULT_OUT_INDICES[arch]
    return tuple(max(0, round(depth * k / 4) - 1) for k in (1, 2, 3, 4))
