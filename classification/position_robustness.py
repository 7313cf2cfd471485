"""Position-specific robustness of a fine-tuned ViT: top-1 when the spatial layout is broken or hidden.

The perturbations, each drawn per image from ``(seed, image index)`` so that every classifier
sees exactly the same shuffles, drop sets and occluder positions (paired comparisons):

- ``shuffle k``: the image is cut into k x k equal blocks and the blocks are permuted at random
  (k = 2, 4 and ``grid``, the ViT's patch grid: then every patch moves). The pixels are only
  moved, never changed (:func:`shuffle_blocks` is a permutation of the image's pixels).
- ``drop r``: a random share r of the patch tokens is *removed* before the encoder (not zeroed):
  the kept tokens carry their content plus their position embedding, so the positions of the
  few visible patches are the only spatial cue left. The cls token always stays; average
  pooling averages the kept tokens. A ViT with relative-position attention (AdPE) keeps the full
  sequence and masks the dropped tokens out of every attention instead, which computes the same
  for the kept tokens (no kept token ever sees a dropped one) with the relative offsets intact.
- ``occlude centre r`` / ``occlude random r``: a square covering the share r of the image area,
  at the centre or at a random place, is set to the normalisation mean (0 after normalising).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from pretrain.models.masking import gather_tokens, keep_from_noise, num_kept
from pretrain.models.vit import VisionTransformer

SALT = {"shuffle": 1, "drop": 2, "occlude_random": 3}  # separate random streams per perturbation kind


@dataclass(frozen=True)
class Perturbation:
    """One row of the position-robustness table: ``kind`` (clean, shuffle, drop, occlude_centre,
    occlude_random) and its parameter (blocks per side, or a ratio)."""

    kind: str
    value: float | int | None = None
    label: str | None = None  # e.g. shuffle_grid: the same row name whatever the grid side

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.kind == "clean":
            return "clean"
        v = self.value
        return f"{self.kind}_{v:g}" if isinstance(v, float) else f"{self.kind}_{v}"


def default_perturbations(grid: int, shuffles: Sequence[int | str] = (2, 4, "grid"),
                          drops: Sequence[float] = (0.25, 0.5, 0.75),
                          occlusions: Sequence[float] = (0.25, 0.5)) -> list[Perturbation]:
    """clean, shuffle k (``'grid'`` = the patch grid side), drop r, centre and random occlusion r."""
    rows = [Perturbation("clean")]
    for k in shuffles:
        rows.append(Perturbation("shuffle", grid, "shuffle_grid") if k == "grid" else Perturbation("shuffle", int(k)))
    rows += [Perturbation("drop", float(r)) for r in drops]
    rows += [Perturbation("occlude_centre", float(r)) for r in occlusions]
    rows += [Perturbation("occlude_random", float(r)) for r in occlusions]
    names = [p.name for p in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"the same perturbation twice: {names} (grid side {grid})")
    return rows


def image_generator(seed: int, index: int, kind: str) -> torch.Generator:
    """The random stream of one image for one kind of perturbation."""
    return torch.Generator().manual_seed(((int(seed) * 1_000_003 + int(index)) * 7 + SALT[kind]) % (2**63 - 1))


# ------------------------------------------------------------------ pixel perturbations
def shuffle_blocks(images: torch.Tensor, k: int, seed: int, indices: Sequence[int]) -> torch.Tensor:
    """Permute the k x k blocks of each image [B, C, H, W] (H and W divisible by k) at random."""
    b, c, h, w = images.shape
    if k < 1 or h % k or w % k:
        raise ValueError(f"cannot cut a {h}x{w} image into {k}x{k} equal blocks")
    bh, bw = h // k, w // k
    blocks = images.reshape(b, c, k, bh, k, bw).permute(0, 2, 4, 1, 3, 5).reshape(b, k * k, c, bh, bw)
    perms = torch.stack([torch.randperm(k * k, generator=image_generator(seed, i, "shuffle")) for i in indices])
    blocks = torch.gather(blocks, 1, perms.to(images.device)[:, :, None, None, None].expand_as(blocks))
    return blocks.reshape(b, k, k, c, bh, bw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def occluder_side(size: int, ratio: float) -> int:
    """Side of the square covering (about) ``ratio`` of a ``size`` x ``size`` image."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"occlusion ratio must lie in (0, 1), got {ratio}")
    return max(1, int(round(size * math.sqrt(ratio))))


def occlude(images: torch.Tensor, ratio: float, where: str, seed: int, indices: Sequence[int]) -> torch.Tensor:
    """Zero (= the normalisation mean) a square of ``ratio`` of the area: ``where`` centre or random."""
    b, _, h, w = images.shape
    side = occluder_side(min(h, w), ratio)
    out = images.clone()
    for row, i in enumerate(indices):
        if where == "centre":
            top, left = (h - side) // 2, (w - side) // 2
        elif where == "random":
            g = image_generator(seed, i, "occlude_random")
            top = int(torch.randint(0, h - side + 1, (1,), generator=g))
            left = int(torch.randint(0, w - side + 1, (1,), generator=g))
        else:
            raise ValueError(f"occlusion must be 'centre' or 'random', got {where!r}")
        out[row, :, top:top + side, left:left + side] = 0
    return out


# ------------------------------------------------------------------ token dropping
def kept_patches(num_patches: int, ratio: float, seed: int, indices: Sequence[int], device=None) -> torch.Tensor:
    """[B, K] indices of the patches each image keeps (K = int(N * (1 - ratio))), sorted."""
    keep = num_kept(num_patches, ratio)
    if keep < 1:
        raise ValueError(f"drop ratio {ratio} keeps no patch of {num_patches}")
    noise = torch.stack([torch.rand(num_patches, generator=image_generator(seed, i, "drop")) for i in indices])
    ids, _ = keep_from_noise(noise, keep)
    return ids.sort(dim=1).values.to(device)


def _has_rel_pos(model: VisionTransformer) -> bool:
    return any(hasattr(blk.attn, "rpe_k") for blk in model.blocks)


def logits_without(model: VisionTransformer, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits when only the patches ``keep`` [B, K] enter the encoder (the others removed).

    Patch embedding plus the position table, the kept tokens gathered, the cls token (with its
    position row) in front, blocks, final norm, the model's own pooling and head.
    """
    if _has_rel_pos(model):
        return _logits_masked(model, images, keep)
    x = model.patch_embed(images) + model.pos_embed_patches()
    x = torch.cat([model.cls_with_pos(len(x)), gather_tokens(x, keep)], dim=1)
    x = model.forward_encoder_tokens(model.pos_drop(x))
    return model.forward_head(x)


def _logits_masked(model: VisionTransformer, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The same as :func:`logits_without` on the full sequence: dropped tokens are hidden from every
    attention (as keys) and from the pooling, so relative-position tables see the true grid."""
    b, n = len(images), model.num_patches
    visible = torch.zeros(b, n, dtype=torch.bool, device=images.device)
    visible.scatter_(1, keep, True)
    keys = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=images.device), visible], dim=1)  # cls always
    attn_mask = keys[:, None, None, :].expand(b, 1, n + 1, n + 1)
    x = model.forward_features(images, attn_mask=attn_mask)
    if model.global_pool == "avg":
        w = visible[..., None].to(x.dtype)
        pooled = (x[:, model.num_prefix_tokens:] * w).sum(1) / w.sum(1)
    else:
        pooled = x[:, 0]
    return model.head(model.head_drop(model.fc_norm(pooled)))


# ------------------------------------------------------------------ one perturbation's logits
def perturbed_logits(model: VisionTransformer, images: torch.Tensor, p: Perturbation, seed: int,
                     indices: Sequence[int]) -> torch.Tensor:
    """The classifier's logits on a batch under perturbation ``p`` (images already normalised)."""
    if p.kind == "clean":
        return model(images)
    if p.kind == "shuffle":
        return model(shuffle_blocks(images, int(p.value), seed, indices))
    if p.kind == "drop":
        keep = kept_patches(model.num_patches, float(p.value), seed, indices, images.device)
        return logits_without(model, images, keep)
    if p.kind in ("occlude_centre", "occlude_random"):
        return model(occlude(images, float(p.value), p.kind.split("_")[1], seed, indices))
    raise ValueError(f"unknown perturbation {p.kind!r}")


PROTOCOL = {
    "clean": "the eval view (Resize img/crop_pct + CenterCrop img, bicubic) as fine-tuning evaluates it",
    "shuffle": "k x k equal blocks of the eval view permuted at random per image (k = grid: every ViT patch)",
    "drop": "share r of the patch tokens removed before the encoder (not zeroed); kept tokens keep their "
            "position embedding, cls token kept, pooling over the kept tokens",
    "occlude_centre": "a centred square of share r of the image area set to the normalisation mean",
    "occlude_random": "a square of share r of the image area at a random place set to the normalisation mean",
}
