"""Where each patch is predicted to belong: by a DropPos checkpoint's own position head, or by the probe.

The full DropPos model (encoder + position head) is rebuilt through the method registry
(``pretrain.models.registry.build_method``) from a pretraining config that describes the
checkpoint: the ViT and the head's width and depth from the weights' shapes, the other
DropPos options from the config saved in the file (the defaults where there is none, as in
the reference code's checkpoints).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from pretrain.models.vit import VIT_SIZES, VisionTransformer
from pretrain.weights import load_checkpoint_file, load_method_weights, model_state

from .backbone import LoadedBackbone


def vit_size(vit: VisionTransformer) -> str | None:
    """The standard size name (``model.size``) of a ViT's width, depth and heads; None if it has none."""
    shape = {"embed_dim": vit.embed_dim, "depth": len(vit.blocks), "num_heads": vit.blocks[0].attn.num_heads}
    return next((name for name, args in VIT_SIZES.items() if all(args[k] == v for k, v in shape.items())), None)


def _decoder_heads(options: dict, decoder_dim: int) -> int:
    """The position head's attention heads: as saved, else the reference's (512 wide, 16 heads)."""
    if options.get("decoder_heads"):
        return int(options["decoder_heads"])
    return 16 if decoder_dim % 16 == 0 else max(decoder_dim // 32, 1)


def droppos_config(ckpt: dict, state: dict[str, torch.Tensor], vit: VisionTransformer) -> DictConfig | None:
    """The pretraining config that rebuilds a checkpoint's DropPos model; None if ``cfg.model`` cannot hold its ViT.

    Args:
        ckpt: the checkpoint file's contents (its ``config``, if any, gives the DropPos options).
        state: its method weights (the head's shapes).
        vit: its encoder as ``analysis.backbone`` rebuilt it (the ViT's shape).
    """
    from pretrain.engine.config import load_config

    size = vit_size(vit)
    if size is None:
        return None
    saved = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    known = load_config().droppos  # keys of this version's DropPos options
    options = {k: v for k, v in (saved.get("droppos") or {}).items() if k in known}
    decoder_dim = int(state["decoder_embed.weight"].shape[0])
    options.update(
        decoder_dim=decoder_dim,
        decoder_depth=len({k.split(".")[1] for k in state if k.startswith("decoder_blocks.")}),
        decoder_heads=_decoder_heads(options, decoder_dim),
    )
    overrides = [
        "method=droppos",
        f"model.size={size}",
        f"model.img_size={int(vit.patch_embed.img_size[0])}",
        f"model.patch_size={int(vit.patch_embed.patch_size[0])}",
    ]
    return load_config(overrides=overrides + [f"droppos.{k}={json.dumps(v)}" for k, v in options.items()])


def droppos_from_checkpoint(path: str | Path, backbone: LoadedBackbone) -> "torch.nn.Module | None":
    """The full DropPos model of a checkpoint that holds its position head, in eval mode on the backbone's device.

    None when the file holds no head (``decoder_pred``, ``mask_pos_token``) or its ViT is none
    of the standard sizes a pretraining config names.
    """
    from pretrain.models.registry import build_method

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickled RNG states and the like: not weights, reported by load_backbone
        ckpt = load_checkpoint_file(path)
    state = model_state(ckpt, path)
    if "decoder_pred.weight" not in state or ("mask_pos_token" not in state and "encoder.mask_pos_token" not in state):
        return None
    cfg = droppos_config(ckpt, state, backbone.model)
    if cfg is None:
        return None
    model = build_method(cfg)
    load_method_weights(model, state, strict=True)
    return model.eval().to(backbone.position_token.device)


@torch.no_grad()
def predict_with_droppos_head(model, imgs: torch.Tensor, seed: int = 0) -> dict[str, np.ndarray]:
    """The method's own prediction on its pretraining setup (random visible patches, dropped positions)."""
    gen = torch.Generator(device=imgs.device).manual_seed(seed)
    masks = model.sample_masks(1, gen, imgs.device)
    tokens = model.encoder.embed_patches(imgs)
    logits = model.forward_head(model.forward_encoder(tokens, masks))[0]  # [V, N]
    keep, dropped = masks.ids_keep[0], masks.pos_dropped[0]
    pred = logits.argmax(-1)
    hidden = sorted(set(range(model.encoder.num_patches)) - set(keep.tolist()))
    return {
        "true": keep[dropped].cpu().numpy(),
        "pred": pred[dropped].cpu().numpy(),
        "kept": keep[~dropped].cpu().numpy(),
        "hidden": np.asarray(hidden, dtype=int),
    }


@torch.no_grad()
def predict_with_probe(
    backbone: LoadedBackbone, head, imgs: torch.Tensor, drop_ratio: float, seed: int = 0
) -> dict[str, np.ndarray]:
    """All patches visible; a share ``drop_ratio`` lose their position; the probe head predicts them."""
    from .position_probe import dropped_positions, encode_with_dropped_positions

    n = backbone.model.num_patches
    dropped = dropped_positions(1, n, drop_ratio, torch.Generator().manual_seed(seed))[0]
    feats = encode_with_dropped_positions(backbone, imgs, dropped[None].to(imgs.device))[0]
    pred = head.to(feats.device)(feats).argmax(-1).cpu()
    cells = torch.arange(n)
    return {
        "true": cells[dropped].numpy(),
        "pred": pred[dropped].numpy(),
        "kept": cells[~dropped].numpy(),
        "hidden": np.zeros(0, dtype=int),
    }
