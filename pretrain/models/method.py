"""The interface every pretraining method implements, so that one training loop drives them all.

A method is an ``nn.Module`` around the shared ViT (``self.encoder``) that

- builds itself from a run config (:meth:`PretrainMethod.from_config`: the ViT from
  ``cfg.model``, its own options from ``cfg.<name>``, whose keys are the constructor's
  keyword arguments);
- owns its masks: :meth:`mask_noise_lengths` says which uniform noise vectors define
  one sample's masks, :meth:`masks_from_noise` turns noise into the method's masks
  (``forward(imgs, masks=...)``), and :meth:`sample_masks` draws the noise from a generator. The training
  data pipeline draws the noise per sample from (seed, epoch, index)
  (``engine.mask_noise``), so masks never depend on the world size or worker count;
- has its hooks: :meth:`set_progress` before an optimizer step (schedules such as
  DropPos's sigma), :meth:`after_optimizer_step` (AdPE's projection);
- builds its optimizer groups (:meth:`param_groups`);
- computes its loss in a named function (``forward_loss``) and returns a
  :class:`MethodOutput` from ``forward(imgs, masks=None, generator=None)`` (masks
  drawn from ``generator`` when not given).

Methods register by name (``pretrain.models.registry``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn as nn
from timm.optim import param_groups_weight_decay

from .vit import VisionTransformer, create_vit, init_linear_and_norm


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


def encoder_from_config(model_cfg: Mapping[str, Any], rel_pos: bool = False) -> VisionTransformer:
    """The shared ViT from a run config's ``model`` section (size, img_size, patch_size, drop_path)."""
    return create_vit(
        model_cfg["size"],
        rel_pos=rel_pos,
        img_size=int(model_cfg["img_size"]),
        patch_size=int(model_cfg["patch_size"]),
        drop_path_rate=float(model_cfg["drop_path"]),
    )


class PretrainMethod(nn.Module):
    """Base class of the pretraining methods (DropPos, MAE, AdPE); see the module docstring."""

    name: ClassVar[str] = ""  # set by ``registry.register_method``
    encoder: VisionTransformer
    num_crops: int = 1  # views per image the data pipeline makes (flattened into the batch)
    crop_scale: tuple[float, float] | None = None  # RandomResizedCrop scale of those views (None: data.scale)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Refuse a run config this method cannot train (``option_checks.OptionError`` naming the key).

        Called through the registry by pretraining and by the ablation sweeps before any work
        starts; each method checks its own section (``cfg.<name>``) with ``option_checks``.
        """

    @classmethod
    def from_config(cls, cfg: Any) -> "PretrainMethod":
        """Build from a run config: the ViT from ``cfg.model``, options from ``cfg.<name>``."""
        return cls(encoder_from_config(cfg.model), **dict(cfg[cls.name]))

    def init_reference(self, *tokens: nn.Parameter) -> None:
        """The reference init: MAE's encoder init, N(0, 0.02) tokens, then xavier / unit-norm heads
        (``decoder_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred``), in that order."""
        self.encoder.init_weights_mae()
        for token in tokens:
            nn.init.normal_(token, std=0.02)
        for head in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            head.apply(init_linear_and_norm)

    # ----------------------------------------------------------------- masks
    def mask_noise_lengths(self) -> tuple[int, ...]:
        """Lengths of the uniform noise vectors that define one sample's masks."""
        raise NotImplementedError

    def masks_from_noise(self, noise: Sequence[torch.Tensor]) -> Any:
        """The masks (``forward``'s ``masks``) that per-sample ``noise`` ([B, L] each) selects."""
        raise NotImplementedError

    def sample_masks(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Any:
        """Masks for ``batch`` samples from noise drawn by ``generator`` (one vector after the other)."""
        noise = [torch.rand(batch, n, generator=generator, device=device) for n in self.mask_noise_lengths()]
        return self.masks_from_noise(noise)

    # ----------------------------------------------------------------- hooks
    def set_progress(self, epoch: float, total_epochs: int) -> None:
        """Called before each optimizer step with the fractional epoch (schedules)."""

    def after_optimizer_step(self) -> None:
        """Called after each optimizer step (projections)."""

    # ----------------------------------------------------------------- optimizer
    def no_weight_decay(self) -> set[str]:
        return {"encoder." + k for k in self.encoder.no_weight_decay()}

    def weight_decay_skip(self, skip_list: bool) -> set[str]:
        """Names exempt from weight decay besides biases and 1-D tensors: ``no_weight_decay()``
        with ``skip_list`` (the suite's rule), none without (the released scripts' rule)."""
        return self.no_weight_decay() if skip_list else set()

    def param_groups(
        self, weight_decay: float, lr: float, total_batch: int, skip_list: bool = False
    ) -> list[dict[str, Any]]:
        """Optimizer groups [undecayed, decayed] of the trainable parameters.

        Biases and 1-D tensors are never decayed. ``skip_list=False`` is the released
        DropPos / MAE / AdPE rule (timm 0.3.2 ``add_weight_decay(model, wd)`` with no skip
        list: ``cls_token`` and the mask tokens ARE decayed); ``skip_list=True`` also
        exempts the ``no_weight_decay()`` names (``optim.wd_skip_list``).
        """
        return param_groups_weight_decay(self, weight_decay, no_weight_decay_list=self.weight_decay_skip(skip_list))
