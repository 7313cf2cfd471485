"""AdPE: adversarial positional embeddings on MAE+ (Wang et al., arXiv 2303.07598).

MAE+ (the baseline): mask tokens enter the ENCODER, which runs on all tokens
(SimMIM-like); masked patches get the mask token plus their true sin-cos
position; several random low-resolution crops per image (4 x 112 px, flattened
into the batch by the training step); the pixel decoder of MAE (it sees the
full encoded sequence, so it needs no mask token of its own) regresses
per-patch normalised pixels; MSE on masked patches. ``pos='rel'`` adds
contextual relative position on keys (iRPE, ``relpos.py``) in every encoder and
decoder block, on top of the absolute table, as the reference does.

Adversarial positions (``adversary``), trained jointly as a min-max game:
- abs / ``embed``: one learnable vector ``adv_token`` [1, 1, D] takes the mask
  token's place (masked input = adv_token + true PE; there is no mask_token).
- abs / ``coord``: ``adv_token`` [2] shifts the grid coordinates of the masked
  tokens, whose sin-cos PE is evaluated at the shifted, fractional position
  (differentiable); visible tokens keep the exact table. Reference order:
  ``adv_token[0]`` shifts the column (x), ``adv_token[1]`` the row (y).
- rel / ``embed`` and rel / ``coord``: per block, ``attn.rpe_k.adv_token`` or
  ``attn.rpe_k.adv_shift`` acting on the relative encoding of masked query rows
  (see ``relpos.py``), in encoder and decoder blocks. ``rel_adversary_impl``:
  'suite' (default; embed leaves the cls key out so the adversary acts, coord
  interpolates only shifted rows between integer buckets) or 'released' (the
  released code's computation: embed adds the vector to every key, cls included,
  so it cancels in the softmax and the model reduces to MAE+ with relative PE;
  coord reads every row with ``grid_sample`` at the continuous index, transposed).

The min-max update: ``param_groups`` puts the adversarial parameters in their
own AdamW group with a NEGATIVE learning rate (``base_lr = -adv_lr``, adv_lr =
adv_blr * total_batch / 256, warmup + cosine like the main lr, weight decay 0),
so one backward pass and one optimizer step descend on the model and ascend on
the adversary. torch's AdamW validates only its default lr, so a negative group
lr is accepted and applied as is (with zero weight decay a negative lr is exactly
gradient ascent with the same Adam moments). ``after_optimizer_step`` projects
every adversarial tensor onto an L2 or L-infinity ball of radius ``eps``
(optional, per tensor, as the reference's optimizer).

State-dict keys equal the reference models' (adpe_ape_adv1/2, adpe_rpe_adv1/2 and
the MAE+ baselines) once the ``encoder.`` prefix is removed.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from .mae import PixelLoss, build_pixel_decoder
from .masking import keep_from_noise, num_kept
from .method import MethodOutput, PretrainMethod, encoder_from_config
from .pos_embed import grid_coords, sincos_2d
from . import option_checks as check
from .registry import register_method
from .relpos import ContextualRelPosBlock, rel_pos_modules
from .vit import VisionTransformer, init_linear_and_norm

POS_MODES = ("abs", "rel")
ADVERSARIES = ("none", "embed", "coord")
PROJECTIONS = ("none", "l2", "linf")
REL_ADVERSARY_IMPLS = ("suite", "released")  # how the relative-position adversary acts (relpos.py)
ADVERSARIAL_NAMES = ("adv_token", "adv_shift")  # parameter leaf names (reference)


def is_adversarial(name: str) -> bool:
    """True for the adversary's parameters (``adv_token``, ``*.adv_shift`` ...)."""
    return name.rsplit(".", 1)[-1] in ADVERSARIAL_NAMES


@torch.no_grad()
def project_(params: list[torch.Tensor], kind: str, eps: float) -> None:
    """Project each tensor onto its own ball of radius ``eps`` (``l2``) or box (``linf``), in place."""
    if kind == "none":
        return
    for p in params:
        if kind == "l2":
            norm = torch.linalg.vector_norm(p.float())
            p.mul_((eps / norm.clamp_min(1e-12)).clamp(max=1.0).to(p.dtype))
        elif kind == "linf":
            p.clamp_(-eps, eps)
        else:
            raise ValueError(f"unknown projection {kind!r}; choose one of {PROJECTIONS}")


@register_method("adpe")
class AdPE(PixelLoss, PretrainMethod):
    """MAE+ with optional adversarial positions around the suite's ViT.

    Args:
        encoder: the ViT; for ``pos='rel'`` built with ``create_vit(..., rel_pos=True)``.
        pos: 'abs' (sin-cos table only) or 'rel' (table + relative position in every block).
        adversary: 'none' (MAE+), 'embed' or 'coord'.
        mask_ratio: share of patches replaced by the mask (or adversarial) token.
        decoder_dim, decoder_depth, decoder_heads: the MAE pixel decoder.
        norm_pix_loss: regress per-patch normalised pixels.
        projection: 'none', 'l2' or 'linf' ball for the adversary after each step.
        eps: the ball's radius.
        num_crops, crop_scale: random crops per image (``model.img_size`` px) and their scale.
        adv_blr, adv_lr: adversary lr, ``adv_lr`` or ``adv_blr * total_batch / 256``.
        adv_weight_decay: weight decay of the adversary's group.
        rel_adversary_impl: 'suite' or 'released' computation of the relative-position adversary.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        pos: str = "abs",
        adversary: str = "none",
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        projection: str = "none",
        eps: float = 1.0,
        num_crops: int = 4,
        crop_scale: Sequence[float] = (0.08, 1.0),
        adv_blr: float = 1.5e-4,
        adv_lr: float | None = None,
        adv_weight_decay: float = 0.0,
        rel_adversary_impl: str = "suite",
    ) -> None:
        super().__init__()
        if pos not in POS_MODES:
            raise ValueError(f"unknown position mode {pos!r}; choose one of {POS_MODES}")
        if adversary not in ADVERSARIES:
            raise ValueError(f"unknown adversary {adversary!r}; choose one of {ADVERSARIES}")
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {projection!r}; choose one of {PROJECTIONS}")
        if rel_adversary_impl not in REL_ADVERSARY_IMPLS:
            raise ValueError(f"unknown rel_adversary_impl {rel_adversary_impl!r}; choose one of {REL_ADVERSARY_IMPLS}")
        self.rel = pos == "rel"
        if self.rel != all(isinstance(b, ContextualRelPosBlock) for b in encoder.blocks):
            raise ValueError(f"pos={pos!r} needs an encoder built with create_vit(..., rel_pos={self.rel})")
        self.encoder, self.pos, self.adversary, self.mask_ratio = encoder, pos, adversary, mask_ratio
        self.norm_pix_loss, self.projection, self.eps = norm_pix_loss, projection, float(eps)
        self.num_crops = int(num_crops)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.adv_blr = float(adv_blr)
        self.adv_lr = None if adv_lr is None else float(adv_lr)
        self.adv_weight_decay = float(adv_weight_decay)
        self.patch = encoder.patch_embed.patch_size[0]
        self.num_visible = num_kept(encoder.num_patches, mask_ratio)
        dim = encoder.embed_dim

        # Encoder-side tokens, with the reference names and shapes.
        if not self.rel and adversary == "embed":
            self.adv_token = nn.Parameter(torch.zeros(1, 1, dim))  # replaces the mask token
        else:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        if not self.rel and adversary == "coord":
            self.adv_token = nn.Parameter(torch.zeros(2))  # (x = col, y = row) shift of masked positions
        build_pixel_decoder(
            self, dim, encoder.grid_size, self.patch, decoder_dim, decoder_depth, decoder_heads,
            block_fn=ContextualRelPosBlock if self.rel else Block,
        )
        if self.rel and adversary != "none":
            for rpe in rel_pos_modules(self.encoder) + rel_pos_modules(self.decoder_blocks):
                rpe.enable_adversary(adversary, released=rel_adversary_impl == "released")
        self.init_weights()

    # ----------------------------------------------------------------- setup
    def init_weights(self) -> None:
        """Reference init: MAE encoder/decoder init, N(0, 0.02) tokens, zero shifts and relative tables."""
        self.encoder.init_weights_mae()
        if hasattr(self, "mask_token"):
            nn.init.normal_(self.mask_token, std=0.02)
        if hasattr(self, "adv_token"):
            if self.adv_token.dim() == 3:
                nn.init.normal_(self.adv_token, std=0.02)
            else:
                nn.init.zeros_(self.adv_token)
        for m in [self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred]:
            m.apply(init_linear_and_norm)
        for rpe in rel_pos_modules(self):
            nn.init.zeros_(rpe.lookup_table_weight)
            for name in ("adv_token", "adv_shift"):
                if hasattr(rpe, name):
                    nn.init.zeros_(getattr(rpe, name))

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Choices; the mask ratio keeps and masks a patch of the crop's grid; crops, lr and radius in range."""
        a = cfg.adpe
        for key, allowed in (("pos", POS_MODES), ("adversary", ADVERSARIES), ("projection", PROJECTIONS),
                             ("rel_adversary_impl", REL_ADVERSARY_IMPLS)):
            check.one_of(f"adpe.{key}", a[key], allowed)
        check.ratio_keeping("adpe.mask_ratio", a.mask_ratio, check.grid_patches(cfg), "patches of a crop")
        check.at_least("adpe.num_crops", a.num_crops, 1)
        check.at_least("adpe.adv_blr", a.adv_blr, 0.0)
        check.optional_number("adpe.adv_lr", a.adv_lr)
        check.at_least("adpe.eps", a.eps, 0.0, strict=True)
        check.flag("adpe.norm_pix_loss", a.norm_pix_loss)

    @classmethod
    def from_config(cls, cfg: Any) -> "AdPE":
        """AdPE / MAE+ from a run config; ``adpe.pos='rel'`` builds a relative-position ViT."""
        a = dict(cfg.adpe)
        return cls(encoder_from_config(cfg.model, rel_pos=a["pos"] == "rel"), **a)

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | ({"mask_token"} if hasattr(self, "mask_token") else set())

    def adversarial_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of the adversary; empty for MAE+."""
        return [(n, p) for n, p in self.named_parameters() if is_adversarial(n)]

    def adversary_lr(self, total_batch: int) -> float:
        """Absolute adversary lr: ``adv_lr`` or ``adv_blr * total_batch / 256`` (the main lr's rule)."""
        return self.adv_lr if self.adv_lr is not None else self.adv_blr * total_batch / 256

    def param_groups(
        self, weight_decay: float, lr: float, total_batch: int, skip_list: bool = False
    ) -> list[dict[str, Any]]:
        """Optimizer groups: undecayed (biases, 1-D, and with ``skip_list`` the no_weight_decay
        names), decayed weights, and the adversary with lr = base_lr = -adversary_lr(total_batch)
        and ``adv_weight_decay``. ``skip_list=False`` is the released rule (``mask_token`` and
        ``cls_token`` decayed); see ``PretrainMethod.param_groups``.

        total_batch = batch_size * accum_iter * world size.
        """
        adv_lr = self.adversary_lr(total_batch)
        skip = self.weight_decay_skip(skip_list)
        decay, no_decay, adv = [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if is_adversarial(name):
                adv.append(p)
            elif p.ndim <= 1 or name.endswith(".bias") or name in skip:
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
        if adv:
            groups.append({"params": adv, "weight_decay": self.adv_weight_decay, "lr": -adv_lr, "base_lr": -adv_lr, "adversary": True})
        return groups

    def after_optimizer_step(self) -> None:
        """Keep the adversary inside its ball (called by the engine after every optimizer step)."""
        if self.projection != "none":
            project_([p for _, p in self.adversarial_parameters()], self.projection, self.eps)

    # ----------------------------------------------------------------- masks and positions
    def mask_noise_lengths(self) -> tuple[int]:
        return (self.encoder.num_patches,)

    def masks_from_noise(self, noise: Sequence[torch.Tensor]) -> torch.Tensor:
        """[B, N] bool, True where a patch is masked (independent per sample, one row per crop)."""
        return keep_from_noise(noise[0], self.num_visible)[1]

    def shifted_pos_embed(self) -> torch.Tensor:
        """Sin-cos PE of every cell moved by the coordinate adversary: [1, N, D] (float32).

        Evaluated in float64 so that a zero shift reproduces the fixed table exactly.
        """
        coords = grid_coords(self.encoder.grid_size, device=self.adv_token.device, dtype=torch.float64)
        shift = torch.stack([self.adv_token[1], self.adv_token[0]]).to(torch.float64)  # (row, col)
        return sincos_2d(coords + shift, self.encoder.embed_dim).float().unsqueeze(0)

    # ----------------------------------------------------------------- passes
    def embed(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images and mask -> encoder input with cls: [B, 1 + N, D]."""
        b = imgs.shape[0]
        tokens = self.encoder.embed_patches(imgs)  # [B, N, D]
        m = mask.unsqueeze(-1)  # [B, N, 1]
        fill = self.adv_token if (not self.rel and self.adversary == "embed") else self.mask_token
        x = torch.where(m, fill.to(tokens.dtype), tokens)
        pe = self.encoder.pos_embed_patches().to(tokens.dtype)  # [1, N, D]
        if not self.rel and self.adversary == "coord":
            pe = torch.where(m, self.shifted_pos_embed().to(tokens.dtype), pe)
        return torch.cat([self.encoder.cls_with_pos(b).to(tokens.dtype), x + pe], dim=1)

    def _run_blocks(self, blocks: nn.Module, x: torch.Tensor, query_mask: torch.Tensor | None) -> torch.Tensor:
        if not self.rel:
            for blk in blocks:
                x = blk(x)
            return x
        for blk in blocks:
            x = blk(x, query_mask=query_mask)
        return x

    def forward_encoder(self, x: torch.Tensor, query_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, 1 + N, D] -> encoded [B, 1 + N, D]."""
        x = self.encoder.norm_pre(x)
        x = self._run_blocks(self.encoder.blocks, x, query_mask)
        return self.encoder.norm(x)

    def forward_decoder(self, latent: torch.Tensor, query_mask: torch.Tensor | None) -> torch.Tensor:
        """[B, 1 + N, D] -> pixel predictions for all N patches [B, N, p*p*3]."""
        x = self.decoder_embed(latent) + self.decoder_pos_embed.to(latent.dtype)
        x = self._run_blocks(self.decoder_blocks, x, query_mask)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:]

    def forward(
        self,
        imgs: torch.Tensor,
        masks: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        """imgs [B, 3, H, W] (crops already flattened into B), masks [B, N] bool -> masked-patch MSE."""
        mask = self.sample_masks(imgs.shape[0], generator, imgs.device) if masks is None else masks
        x = self.embed(imgs, mask)
        query_mask = None
        if self.rel and self.adversary != "none":
            query_mask = torch.cat([mask.new_zeros(mask.shape[0], 1), mask], dim=1)  # cls is never masked
        latent = self.forward_encoder(x, query_mask)
        pred = self.forward_decoder(latent, query_mask)
        loss = self.forward_loss(imgs, pred, mask)
        metrics = {"loss": loss.detach()}
        adv = [p for _, p in self.adversarial_parameters()]
        if adv:
            with torch.no_grad():
                metrics["adv_norm"] = torch.linalg.vector_norm(torch.cat([p.detach().float().flatten() for p in adv]))
        return MethodOutput(loss=loss, metrics=metrics, outputs={"pred": pred, "mask": mask})
