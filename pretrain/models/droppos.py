"""DropPos: pre-training ViTs by reconstructing dropped positions (Wang et al., NeurIPS 2023).

Per image: keep a random (1 - mask_ratio) share of the patches; among those,
keep the true sin-cos position embedding for a random (1 - pos_drop_ratio)
share and give the rest one learnable position mask token; encode; a small
position head (no position embedding) classifies every visible token into one
of the N grid cells. The loss is a soft-target cross-entropy on the tokens whose
position was dropped, with Gaussian position smoothing (sigma decaying to 0) and
attentive reconstruction weights (cls-to-patch cosine similarity of a no-grad
pass over the full image, softmax at temperature tau).

State-dict keys equal the reference model's once the ``encoder.`` prefix is
removed (see ``pretrain.weights``): mask_pos_token, decoder_embed,
decoder_blocks.{i}, decoder_norm, decoder_pred (plus aux_decoder_* and mask_token
with ``drop_pos_type=multi_task``). The released code's ablation variants are
options, off by default (``pretrain.models.droppos_variants``).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from . import droppos_variants as variants
from .mae import masked_pixel_loss
from .masking import gather_tokens, keep_from_noise, num_kept
from . import option_checks as check
from .method import MethodOutput, PretrainMethod
from .pos_embed import grid_coords
from .registry import register_method
from .vit import VisionTransformer

SMOOTHING_MODES = ("paper", "reference")
# softmax(cos / tau) over N, gathered at the visible patches: cosines differ by at most 2, and
# fp32's exp underflows below e^-87, so a smaller tau can give every visible patch weight 0
# (0 / 0 in the renormalisation: NaN at step 1, measured at tau 1e-4 on the demo recipe).
MIN_TAU = 2.0 / 87.0


@dataclass
class DropPosMasks:
    """Which patches are seen and which of them lost their position.

    ids_keep: [B, V] indices of the visible patches (= their true positions).
    pos_dropped: [B, V] bool, True where the position embedding was replaced
        by the position mask token (these tokens carry the loss).
    pos_source: [B, V] (``mask_token_type=wrong_pos`` only) the visible token whose
        true embedding each token gets.
    ids_shuffle: [B, V] (``shuffle`` only) the order the visible tokens enter the encoder.
    """

    ids_keep: torch.Tensor
    pos_dropped: torch.Tensor
    pos_source: torch.Tensor | None = None
    ids_shuffle: torch.Tensor | None = None


# --------------------------------------------------------------------------- smoothing
def smoothing_matrix(
    grid_size: tuple[int, int],
    sigma: torch.Tensor | float,
    mode: str = "paper",
    img_size: int | None = None,
) -> torch.Tensor:
    """Soft position targets: row y is the target distribution for true cell y, [N, N].

    ``paper``: w(y, j) = exp(-d(y, j)^2 / sigma^2) on the true grid, each row
    normalised to sum to 1; sigma == 0 gives the identity (one-hot targets).

    ``reference``: the released code's behaviour, kept for exact reproduction: the
    map is built on a (img_size // grid_side)^2 grid (16 x 16 = 256 cells at 224 px,
    patch 16), normalised by ``weight / weight.sum(-1)`` (which scales columns),
    and only its first N rows and columns are used.
    """
    if mode not in SMOOTHING_MODES:
        raise ValueError(f"unknown smoothing mode {mode!r}; choose one of {SMOOTHING_MODES}")
    sigma = torch.as_tensor(sigma, dtype=torch.float32)
    n = grid_size[0] * grid_size[1]
    if mode == "paper":
        coords = grid_coords(grid_size, device=sigma.device)
    else:
        if img_size is None:
            raise ValueError("reference smoothing needs img_size")
        side = img_size // grid_size[1]
        coords = grid_coords((side, side), device=sigma.device)
    d2 = torch.cdist(coords, coords).square()  # [M, M]
    # sigma -> 0 makes every off-diagonal logit -inf-like: exact one-hot rows.
    logits = -d2 / sigma.clamp_min(1e-4).square()
    if mode == "paper":
        return torch.softmax(logits, dim=-1)
    weight = torch.exp(logits)
    weight = weight / weight.sum(-1)  # broadcasts over the last dim: column scaling
    return weight[:n, :n]


def sigma_at(epoch: float, total_epochs: int, sigma0: float, decay: bool = True, per_epoch: bool = True) -> float:
    """Linear decay of sigma from ``sigma0`` to 0 over training.

    The reference updates once per epoch (``per_epoch``): sigma = (1 - e / E) * sigma0.
    """
    if not decay or total_epochs <= 0:
        return sigma0
    e = float(int(epoch)) if per_epoch else float(epoch)
    return max(0.0, 1.0 - e / float(total_epochs)) * sigma0


# --------------------------------------------------------------------------- method
@register_method("droppos")
class DropPos(PretrainMethod):
    """DropPos pretraining around the suite's ViT.

    Args:
        encoder: the ViT (its pos_embed is the fixed sin-cos table).
        mask_ratio: share of patches not fed to the encoder (gamma).
        pos_drop_ratio: share of visible patches whose position is dropped.
        decoder_dim, decoder_depth, decoder_heads: the position head.
        sigma: initial smoothing sigma (decays to 0 via ``set_progress``).
        sigma_decay: decay sigma linearly over training.
        sigma_per_epoch: update sigma once per epoch (reference) or every step.
        tau: attentive-reconstruction temperature.
        attentive: weight tokens by the attentive-reconstruction pass.
        smoothing: 'paper' (true grid, rows normalised) or 'reference'.
        mask_token_type: what replaces a dropped embedding: 'param', 'zeros', 'wrong_pos'.
        drop_pos_type: 'droppos', or 'multi_task' (plus an auxiliary MAE pixel loss).
        pos_weight: multi_task loss = pos_weight * loss_droppos + loss_mae.
        norm_pix_loss: multi_task MAE target is per-patch normalised pixels.
        conf_ignore: leave out tokens predicted above their target's diagonal.
        shuffle: feed the visible tokens in a random order, restore the predictions.
    """

    @classmethod
    def check_config(cls, cfg) -> None:
        """gamma and the position drop ratio keep and drop a patch on this grid; sigma >= 0, tau >= MIN_TAU, choices, flags."""
        d = cfg.droppos
        visible = check.ratio_keeping("droppos.mask_ratio", d.mask_ratio, check.grid_patches(cfg), "patches")
        check.ratio_keeping("droppos.pos_drop_ratio", d.pos_drop_ratio, visible, "visible patches' positions")
        check.at_least("droppos.sigma", d.sigma, 0.0, " (0 = one-hot position targets)")
        check.at_least("droppos.tau", d.tau, MIN_TAU, " (smaller: the attentive weights underflow to 0 / 0)")
        check.at_least("droppos.pos_weight", d.pos_weight, 0.0)
        check.one_of("droppos.smoothing", d.smoothing, SMOOTHING_MODES)
        check.one_of("droppos.mask_token_type", d.mask_token_type, variants.MASK_TOKEN_TYPES)
        check.one_of("droppos.drop_pos_type", d.drop_pos_type, variants.DROP_POS_TYPES)
        for key in ("sigma_decay", "sigma_per_epoch", "attentive", "norm_pix_loss", "conf_ignore", "shuffle"):
            check.flag(f"droppos.{key}", d[key])

    def __init__(
        self,
        encoder: VisionTransformer,
        mask_ratio: float = 0.75,
        pos_drop_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 2,
        decoder_heads: int = 16,
        sigma: float = 1.0,
        sigma_decay: bool = True,
        sigma_per_epoch: bool = True,
        tau: float = 0.1,
        attentive: bool = True,
        smoothing: str = "paper",
        mask_token_type: str = "param",
        drop_pos_type: str = "droppos",
        pos_weight: float = 1.0,
        norm_pix_loss: bool = True,
        conf_ignore: bool = False,
        shuffle: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.pos_drop_ratio = pos_drop_ratio
        self.num_visible = num_kept(encoder.num_patches, mask_ratio)
        self.num_pos_kept = num_kept(self.num_visible, pos_drop_ratio)
        self.sigma0, self.sigma_decay, self.sigma_per_epoch = sigma, sigma_decay, sigma_per_epoch
        self.tau, self.attentive, self.smoothing = tau, attentive, smoothing
        self.mask_token_type, self.multi_task = mask_token_type, drop_pos_type == "multi_task"
        self.pos_weight, self.norm_pix_loss = float(pos_weight), norm_pix_loss
        self.conf_ignore, self.shuffle = conf_ignore, shuffle
        self.patch = encoder.patch_embed.patch_size[0]
        dim = encoder.embed_dim
        n = encoder.num_patches
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        # Kept (frozen, unused) for zeros / wrong_pos, as in the released model, so its checkpoints load.
        self.mask_pos_token = nn.Parameter(torch.zeros(1, 1, dim), requires_grad=mask_token_type == "param")
        # Position head: no position embedding anywhere in it.
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm_layer) for _ in range(decoder_depth)]
        )
        self.decoder_norm = norm_layer(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, n)
        if self.multi_task:
            variants.build_aux_decoder(
                self, dim, encoder.grid_size, self.patch, decoder_dim, decoder_depth, decoder_heads,
                token_trainable=mask_token_type == "param",
            )

        # Current sigma and its target matrix live on the device; not part of checkpoints.
        self.register_buffer("sigma", torch.tensor(float(sigma)), persistent=False)
        self.register_buffer("smooth_targets", self._targets(float(sigma)), persistent=False)
        self._sigma_now = float(sigma)
        self.init_weights()

    # ----------------------------------------------------------------- setup
    def init_weights(self) -> None:
        if not self.multi_task:
            self.init_reference(self.mask_pos_token)
            return
        self.init_reference(self.mask_pos_token, self.mask_token)
        variants.init_aux_decoder(self)

    def _targets(self, sigma: float) -> torch.Tensor:
        img = self.encoder.patch_embed.img_size[1]
        return smoothing_matrix(self.encoder.grid_size, sigma, self.smoothing, img_size=img)

    def set_progress(self, epoch: float, total_epochs: int) -> None:
        """Update sigma for the fractional ``epoch`` (called by the engine before a step)."""
        sigma = sigma_at(epoch, total_epochs, self.sigma0, self.sigma_decay, self.sigma_per_epoch)
        if sigma != self._sigma_now:
            self.smooth_targets.copy_(self._targets(sigma).to(self.smooth_targets.device))
            self.sigma.fill_(sigma)
            self._sigma_now = sigma

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"mask_pos_token"} | ({"mask_token"} if self.multi_task else set())

    # ----------------------------------------------------------------- masks
    def mask_noise_lengths(self) -> tuple[int, ...]:
        """Patch noise over the N cells, then position noise over the V visible tokens;
        then noise permuting the dropped tokens (wrong_pos) and the visible ones (shuffle)."""
        lengths = (self.encoder.num_patches, self.num_visible)
        if self.mask_token_type == "wrong_pos":
            lengths += (self.num_visible - self.num_pos_kept,)
        return lengths + ((self.num_visible,) if self.shuffle else ())

    def masks_from_noise(self, noise: Sequence[torch.Tensor]) -> DropPosMasks:
        """Patch and position masks (and the variants' permutations), independent per sample."""
        ids_keep, _ = keep_from_noise(noise[0], self.num_visible)
        _, pos_dropped = keep_from_noise(noise[1], self.num_pos_kept)
        masks = DropPosMasks(ids_keep=ids_keep, pos_dropped=pos_dropped)
        extra = list(noise[2:])
        if self.mask_token_type == "wrong_pos":
            masks.pos_source = variants.wrong_pos_sources(noise[1], extra.pop(0), self.num_pos_kept)
        if self.shuffle:
            masks.ids_shuffle = variants.shuffle_order(extra.pop(0))[0]
        return masks

    # ----------------------------------------------------------------- passes
    def forward_encoder(self, tokens: torch.Tensor, masks: DropPosMasks) -> torch.Tensor:
        """Encode the visible tokens with kept or dropped positions: [B, 1 + V, D]."""
        b = tokens.shape[0]
        x = gather_tokens(tokens, masks.ids_keep)  # [B, V, D]
        pe = gather_tokens(self.encoder.pos_embed_patches(), masks.ids_keep)  # [B, V, D]
        pe = variants.replace_dropped(
            pe, masks.pos_dropped, self.mask_token_type, self.mask_pos_token, masks.pos_source
        )
        x = x + pe
        if masks.ids_shuffle is not None:  # shuffle: the blocks see the tokens in this order
            x = gather_tokens(x, masks.ids_shuffle)
        x = torch.cat([self.encoder.cls_with_pos(b), x], dim=1)
        return self.encoder.forward_encoder_tokens(x)

    def forward_head(self, latent: torch.Tensor) -> torch.Tensor:
        """Position logits for every visible token: [B, 1 + V, D] -> [B, V, N]."""
        x = self.decoder_embed(latent)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:]

    @torch.no_grad()
    def attentive_weights(self, tokens: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Attentive-reconstruction weights of the visible tokens: [B, V], rows sum to 1.

        A no-grad pass of the current encoder over all N patches with their true
        positions; softmax(cos(cls, patch) / tau) over N, gathered at the visible
        patches and renormalised.
        """
        b = tokens.shape[0]
        x = torch.cat([self.encoder.cls_with_pos(b), tokens + self.encoder.pos_embed_patches()], dim=1)
        x = self.encoder.forward_encoder_tokens(x)
        sim = F.cosine_similarity(x[:, :1].float(), x[:, 1:].float(), dim=-1)  # [B, N]
        attn = torch.softmax(sim / self.tau, dim=-1)
        attn = torch.gather(attn, 1, ids_keep)
        return attn / attn.sum(-1, keepdim=True)

    def loss(
        self,
        logits: torch.Tensor,
        ids_keep: torch.Tensor,
        weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted soft-target cross-entropy and weighted position accuracy.

        logits [B, V, N]; ids_keep [B, V] true positions; weights [B, V] (zero for
        tokens that kept their position). Normalised by the batch's weight sum.
        """
        targets = self.smooth_targets[ids_keep]  # [B, V, N]
        log_prob = F.log_softmax(logits.float(), dim=-1)
        per_token = -(targets * log_prob).sum(-1)  # [B, V]
        denom = weights.sum().clamp_min(1e-12)
        loss = (per_token * weights).sum() / denom
        with torch.no_grad():
            correct = (logits.argmax(-1) == ids_keep).float()
            acc = (correct * weights).sum() / denom
        return loss, acc

    def forward(
        self,
        imgs: torch.Tensor,
        masks: DropPosMasks | None = None,
        generator: torch.Generator | None = None,
    ) -> MethodOutput:
        """imgs [B, 3, H, W] -> loss, position accuracy and the pieces for analysis."""
        b = imgs.shape[0]
        if masks is None:
            masks = self.sample_masks(b, generator, imgs.device)
        tokens = self.encoder.embed_patches(imgs)  # [B, N, D]
        latent = self.forward_encoder(tokens, masks)
        logits = self.forward_head(latent)  # [B, V, N]
        if masks.ids_shuffle is not None:  # back to the order of ids_keep
            restore = torch.argsort(masks.ids_shuffle, dim=1)
            logits = gather_tokens(logits, restore)
            latent = torch.cat([latent[:, :1], gather_tokens(latent[:, 1:], restore)], dim=1)
        weights = masks.pos_dropped.float()
        if self.conf_ignore:
            weights = weights * variants.unconfident(logits, masks.ids_keep, self.smooth_targets).float()
        if self.attentive:
            attn = self.attentive_weights(tokens.detach(), masks.ids_keep)
            weights = weights * attn
        loss, acc = self.loss(logits, masks.ids_keep, weights)
        metrics = {"loss": loss.detach(), "pos_acc": acc, "sigma": self.sigma.detach().clone()}
        outputs = {"logits": logits, "ids_keep": masks.ids_keep, "pos_dropped": masks.pos_dropped, "weights": weights}
        if self.multi_task:
            mask = torch.ones(b, self.encoder.num_patches, dtype=torch.bool, device=imgs.device)
            mask.scatter_(1, masks.ids_keep, 0)  # True = hidden from the encoder
            pred = variants.aux_decode(self, latent, masks.ids_keep)
            loss_mae = masked_pixel_loss(imgs, pred, mask, self.patch, self.norm_pix_loss)
            metrics.update(loss_droppos=loss.detach(), loss_mae=loss_mae.detach())
            outputs.update(pred=pred, mask=mask)
            loss = self.pos_weight * loss + loss_mae
            metrics["loss"] = loss.detach()
        return MethodOutput(loss=loss, metrics=metrics, outputs=outputs)
