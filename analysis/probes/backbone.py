"""Any supported checkpoint -> a frozen suite ViT plus the method's position replacement.

The analyses (position probe, pictures) take whatever ``pretrain.weights``
reads: this suite's pretraining checkpoints and exported ``backbone.pth``, the
reference DropPos / MAE / AdPE checkpoints, timm ViT weights (supervised, MoCo
v3 ...). The architecture is read off the weights (width, depth, patch size and
grid from the tensor shapes; heads from the standard sizes), so no config is
needed.

"Dropping" a position embedding means replacing it by what the checkpoint's
method feeds for a token without position:

- DropPos: its learned ``mask_pos_token`` (from the file, or, for an exported
  ``backbone.pth`` that lacks it, from the newest ``checkpoint-*.pth`` beside it);
- everything else (MAE, AdPE, timm): zero, i.e. the patch enters with no
  position at all. AdPE's ``adv_token`` / ``mask_token`` stand in for a masked
  patch's *content* (they are added to the true position), not for a missing
  position, so they are only used when asked for explicitly.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pretrain.weights.card import resolve_method
from pretrain.weights.loading import LoadRules, load_encoder_into
from pretrain.weights.shape import attention_heads, encoder_shape
from pretrain.weights import (
    ENCODER_PREFIX,
    CheckpointError,
    detect_format,
    encoder_state_dict,
    load_checkpoint_file,
    model_state,
)
from pretrain.models.vit import VIT_SIZES, VisionTransformer

REPLACEMENTS = ("auto", "zero", "mask_pos_token", "adv_token", "mask_token")
_STEP = re.compile(r"^checkpoint-(\d+)\.pth$")


@dataclass
class LoadedBackbone:
    """A frozen encoder and what to feed for a dropped position.

    Attributes:
        model: the suite ViT in eval mode, gradients off.
        method: droppos | mae | adpe | timm | unknown (from the file or its keys).
        source_format: what ``pretrain.weights.detect_format`` called the weights.
        position_token: [1, 1, D] replacement for a dropped position embedding.
        replacement: the replacement's name (zero, mask_pos_token, ...).
        path: the checkpoint file.
        notes: how things were resolved (where the token came from, shims applied).
    """

    model: VisionTransformer
    method: str
    source_format: str
    position_token: torch.Tensor
    replacement: str
    path: str
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.model.grid_size

    @property
    def img_size(self) -> int:
        return int(self.model.patch_embed.img_size[0])

    def arch(self) -> str:
        m = self.model
        return f"vit_d{m.embed_dim}_l{len(m.blocks)}_patch{m.patch_embed.patch_size[0]}_{self.img_size}"


RANDOM_ARCH = re.compile(r"^vit_(?P<size>[a-z]+)_patch(?P<patch>\d+)_(?P<img>\d+)$")


def random_backbone(arch: str, seed: int = 0, device: torch.device | str = "cpu") -> LoadedBackbone:
    """A randomly initialised suite ViT (MAE's init, drawn from ``seed``): the scratch baseline.

    ``arch`` names it as the other stages do, ``vit_<size>_patch<p>_<img>`` (e.g. vit_tiny_patch8_64);
    dropped positions get zeros (a random network has no position token).
    """
    from pretrain.models.vit import create_vit

    m = RANDOM_ARCH.match(arch)
    if m is None or m["size"] not in VIT_SIZES:
        raise ValueError(f"--random-arch {arch!r}: expected vit_<size>_patch<p>_<img> with size one of {sorted(VIT_SIZES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_vit(m["size"], img_size=int(m["img"]), patch_size=int(m["patch"]))
        model.init_weights_mae()
    model.requires_grad_(False).eval().to(device)
    return LoadedBackbone(
        model=model, method="scratch", source_format="random-init", position_token=torch.zeros(1, 1, model.embed_dim, device=device),
        replacement="zero", path="none", extras={}, notes=[f"random initialisation (MAE's init, seed {seed})"],
    )


def infer_arch(encoder: dict[str, torch.Tensor], num_heads: int | None = None) -> dict:
    """ViT constructor arguments from timm-named encoder weights (``pretrain.weights.shape``'s rule: width,
    depth, patch and grid read off the tensors; heads from a bias table, else ``num_heads``, else the standard
    ViT of that width, else 64 channels a head)."""
    shape = encoder_shape(encoder)
    in_chans = int(encoder["patch_embed.proj.weight"].shape[1])
    if "pos_embed" not in encoder:
        raise CheckpointError("the encoder weights have no pos_embed; cannot tell the input grid")
    if shape.grid is None:
        raise CheckpointError(f"pos_embed holds {(shape.table_rows or 1) - 1} patch rows, not a square grid")
    if not shape.cls_row:
        raise CheckpointError(f"pos_embed holds {shape.table_rows} rows, a square grid without the cls row the "
                              "suite's ViT needs")
    dim = shape.embed_dim
    hidden = int(encoder["blocks.0.mlp.fc1.weight"].shape[0])
    args = dict(
        embed_dim=dim,
        depth=shape.depth,
        num_heads=attention_heads(encoder, num_heads, "the caller")[0],
        patch_size=shape.patch_size,
        img_size=shape.img_size,
        mlp_ratio=hidden / dim,
        in_chans=in_chans,
    )
    if "blocks.0.ls1.gamma" in encoder:
        args["init_values"] = 1.0
    if any(".attn.rpe_k." in k for k in encoder):
        args["rel_pos"] = True
    return args


def _read_method(ckpt: dict, state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(method, layout): ``pretrain.weights.card.resolve_method``'s (the file's method entry, its card, its
    config, the reference layout, the keys), else ``timm`` for timm weights, else ``unknown``."""
    fmt = detect_format(state)
    method, _ = resolve_method(ckpt, fmt, state)
    return method or ("timm" if fmt == "timm" else "unknown"), fmt


def _newest_full_checkpoint(folder: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*.pth") if (m := _STEP.match(p.name))]
    return max(found)[1] if found else None


def _non_encoder_tokens(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mask_pos_token / adv_token / mask_token from a flat or ``encoder.``-prefixed state."""
    return {k: v for k, v in state.items() if k in ("mask_pos_token", "adv_token", "mask_token")}


def build_vit(args: dict) -> VisionTransformer:
    """The suite ViT for ``infer_arch``'s arguments (relative-position blocks when ``rel_pos``)."""
    args = dict(args)
    if args.pop("rel_pos", False):
        from pretrain.models.relpos import ContextualRelPosAttention, ContextualRelPosBlock

        args.update(block_fn=ContextualRelPosBlock, attn_layer=ContextualRelPosAttention)
    return VisionTransformer(num_classes=0, **args)


# Relative-position tables of a fine-tuned backbone that the plain ViT has no place for.
FOREIGN_TABLES = {
    "blocks.*.attn.rel_pos_h": "decomposed relative tables (ViTDet) dropped: the plain ViT has none",
    "blocks.*.attn.rel_pos_w": "decomposed relative tables (ViTDet) dropped: the plain ViT has none",
    "blocks.*.attn.relative_position_bias_table": "relative bias tables (BEiT / UperNet) dropped: the plain ViT has none",
}
NEVER_IN_A_DETECTOR = ("cls_token", "norm.weight", "norm.bias")


def finetuned_backbone_rules(encoder: dict[str, torch.Tensor], fmt: str, args: dict, notes: list[str]) -> LoadRules:
    """Strict rules for the plain ViT; a detector's or segmentor's backbone may lack the cls token and the
    final norm (a partial load asked for by name) and loses its relative tables (both noted)."""
    hint = f"read off the weights as a plain ViT {args}"
    if fmt not in ("detectron2", "mmengine", "mmseg-mae"):
        return LoadRules(strict=True, allowed_new=frozenset(), hint=hint)
    skip = {p: why for p, why in FOREIGN_TABLES.items() if any(fnmatch.fnmatchcase(k, p) for k in encoder)}
    notes.extend(sorted(set(skip.values())))
    if fmt == "detectron2":
        notes.append("window attention of the detector's blocks is not kept: every block attends globally")
    absent = tuple(k for k in NEVER_IN_A_DETECTOR if k not in encoder)
    if absent:
        notes.append(f"not in the {fmt} backbone, left at initialisation: {', '.join(absent)}")
    return LoadRules(strict=True, allowed_new=frozenset(absent), skip=skip, partial=absent, hint=hint)


def read_encoder(path: Path, notes: list[str]) -> tuple[str, str, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(method, source format, timm-named encoder, every flat key) of a checkpoint file; what was adapted goes to ``notes``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickled argparse Namespaces etc. are reported below
        ckpt = load_checkpoint_file(path)
    state = model_state(ckpt, path)
    method, fmt = _read_method(ckpt, state)
    if ckpt.get("__ignored__") and fmt != "ours":
        notes.append(f"ignored pickled objects: {', '.join(ckpt['__ignored__'])}")
    encoder = encoder_state_dict(state, path)
    flat = {k[len(ENCODER_PREFIX) :] if k.startswith(ENCODER_PREFIX) else k: v for k, v in state.items()}
    if "norm.weight" not in encoder and "fc_norm.weight" in flat:
        # timm average-pool models normalise after pooling; per token the same LayerNorm applies.
        encoder["norm.weight"], encoder["norm.bias"] = flat["fc_norm.weight"], flat["fc_norm.bias"]
        notes.append("final norm taken from fc_norm (average-pool model)")
    return method, fmt, encoder, flat


def frozen_vit(
    path: Path, encoder: dict[str, torch.Tensor], fmt: str, notes: list[str],
    num_heads: int | None = None, img_size: int | None = None,
) -> VisionTransformer:
    """The suite ViT the weights describe (at ``img_size`` if given), loaded strictly by the encoder rules, frozen, eval."""
    args = infer_arch(encoder, num_heads)
    if img_size is not None and img_size != args["img_size"]:
        if img_size % args["patch_size"]:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {args['patch_size']}")
        old = args["img_size"] // args["patch_size"]
        new = img_size // args["patch_size"]  # load_encoder_into resizes the table to the model's grid
        notes.append(
            f"position table resized from {old}x{old} to {new}x{new} (img_size {args['img_size']} -> {img_size})"
        )
        args["img_size"] = img_size
    if args.get("rel_pos"):
        notes.append(
            "relative position encoding in every block is kept: dropping the absolute embedding leaves relative offsets"
        )
    model = build_vit(args)
    own = model.state_dict()
    for key in [k for k in own if k.endswith("attn.qkv.bias") and k not in encoder]:
        encoder[key] = torch.zeros_like(own[key])  # a model without qkv bias == zero bias
        if "qkv bias" not in " ".join(notes):
            notes.append("no qkv bias in the checkpoint: zero biases used")
    # the model is built from the weights: every key must fit and nothing may stay new, except
    # what a fine-tuned detector's / segmentor's backbone never had (named in the notes)
    rules = finetuned_backbone_rules(encoder, fmt, args, notes)
    load_encoder_into(model, encoder, rules, str(path))
    return model.requires_grad_(False).eval()


def position_token(
    path: Path, method: str, flat: dict[str, torch.Tensor], replacement: str, dim: int, notes: list[str]
) -> tuple[torch.Tensor, str, dict[str, torch.Tensor]]:
    """(the [1, 1, dim] token that replaces a dropped position, the replacement chosen, the non-encoder tokens found).

    ``auto``: a DropPos checkpoint's ``mask_pos_token`` (read from the full checkpoint beside a
    backbone file when the file lacks it), else zeros.
    """
    tokens = _non_encoder_tokens(flat)
    if method == "droppos" and "mask_pos_token" not in tokens:
        full = _newest_full_checkpoint(path.parent)
        if full is not None and full != path:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                extra = _non_encoder_tokens({k: v for k, v in model_state(load_checkpoint_file(full), full).items()})
            if "mask_pos_token" in extra:
                tokens["mask_pos_token"] = extra["mask_pos_token"]
                notes.append(f"mask_pos_token read from {full.name} beside the backbone file")
    choice = replacement
    if replacement == "auto":
        choice = "mask_pos_token" if method == "droppos" and "mask_pos_token" in tokens else "zero"
        if method == "droppos" and choice == "zero":
            notes.append("DropPos checkpoint without mask_pos_token: dropped positions are zeroed")
    if choice == "zero":
        return torch.zeros(1, 1, dim), choice, tokens
    if choice not in tokens:
        raise CheckpointError(f"{path} holds no {choice} (found: {sorted(tokens) or 'none'}); use --replacement zero")
    token = tokens[choice].float()
    if token.numel() != dim:
        raise CheckpointError(f"{path}: {choice} has shape {tuple(token.shape)}, not a [1, 1, {dim}] embedding")
    return token.reshape(1, 1, dim), choice, tokens


def load_backbone(
    path: str | Path,
    replacement: str = "auto",
    num_heads: int | None = None,
    device: torch.device | str = "cpu",
    img_size: int | None = None,
) -> LoadedBackbone:
    """Build the frozen encoder of any supported checkpoint and its dropped-position token.

    Three steps: the encoder read off the file (``read_encoder``), the ViT it describes
    loaded strictly (``frozen_vit``), the token that replaces a dropped position
    (``position_token``).

    Args:
        path: checkpoint file.
        replacement: auto (DropPos -> mask_pos_token, else zero) or one of REPLACEMENTS.
        num_heads: attention heads when the width is not a standard size's.
        device: where the model goes.
        img_size: input size if not the checkpoint's; the position table is resized
            bicubically to the new grid (as fine-tuning does).
    """
    if replacement not in REPLACEMENTS:
        raise ValueError(f"unknown replacement {replacement!r}; choose one of {REPLACEMENTS}")
    path = Path(path)
    notes: list[str] = []
    method, fmt, encoder, flat = read_encoder(path, notes)
    model = frozen_vit(path, encoder, fmt, notes, num_heads, img_size).to(device)
    token, choice, tokens = position_token(path, method, flat, replacement, model.embed_dim, notes)
    return LoadedBackbone(
        model=model,
        method=method,
        source_format=fmt,
        position_token=token.to(device),
        replacement=choice,
        path=str(path),
        extras=tokens,
        notes=notes,
    )
