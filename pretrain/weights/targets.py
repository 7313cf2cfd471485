"""What each export target holds, in its own names, and the settings its library needs to load it.

Every target starts from the timm-named encoder (``pretrain.weights.load_encoder``).

- ``timm``: what ``timm.create_model('vit_*', pretrained=True, ...)`` loads strictly, nothing
  else: layer scale folded into ``attn.proj`` / ``mlp.fc2`` (exact), a missing qkv bias
  filled with zeros (exact), a missing cls token (zeros) or final norm (weight 1, bias 0)
  filled and said on screen; relative position tables that are all zero are dropped
  (exact), learned ones, distillation or register tokens and a non-square grid are refused
  (timm's ViT has no place for them: ``--to safetensors`` keeps every weight);
- ``safetensors``: every encoder weight under timm names (the suite's lossless format);
- ``detectron2``: ``backbone.net.<timm name>`` for this suite's ViTDet (ViTDet's own names):
  layer scale folded, the cls token, final norm, BEiT / iRPE tables kept aside;
- ``mmseg``: MMSegmentation's own MAE backbone (``mmseg.models.backbones.MAE``, the MAE /
  BEiT UperNet recipe) in its names (``layers.i.ln1``, ``attn.qkv``, ``ffn.layers.0.0``,
  ``gamma_1``, ``patch_embed.projection``, ``attn.relative_position_bias_table``), flat
  under ``state_dict`` as MMSeg's ``init_cfg=dict(type='Pretrained')`` reads it; gammas of
  1 and zero bias tables where the encoder has none (exact); needs ``norm_cfg`` LayerNorm
  eps 1e-6 and ``init_values > 0``;
- ``mmseg-vit``: MMSegmentation's ``VisionTransformer`` (``attn.attn.in_proj_*``,
  ``attn.attn.out_proj``): layer scale folded, the patch-embedding bias folded into the
  position table (MMSeg's patch embedding has none by default; exact);
- ``droppos-upernet``: this suite's UperNet backbone (``segmentation.backbone.DropPosViT``):
  ``backbone.<timm name>`` in an MMEngine ``state_dict``.

What a target cannot use travels under ``droppos_extras`` (so an import gets it back); a
learned weight the target's model will not use is said on screen (``Plan.warnings``),
not only in the card.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .foreign import DETECTRON2_BACKBONE as DETECTRON2_PREFIX
from .foreign import MMENGINE_BACKBONE as UPERNET_PREFIX
from .foreign import TIMM_TO_MMSEG_BLOCK, TIMM_TO_MMSEG_TOP, TIMM_TO_MMSEG_VIT_ATTN
from .loading import group_keys
from .read import CheckpointError
from .shape import attention_heads, encoder_shape, standard_size

TARGETS = ("timm", "safetensors", "detectron2", "mmseg", "mmseg-vit", "droppos-upernet")
LN_EPS = 1e-6  # timm's ViT LayerNorm; MMSeg's default LN eps is 1e-5

RELATIVE = {
    "blocks.*.attn.relative_position_bias_table": "the BEiT-style relative position bias",
    "blocks.*.attn.rel_pos_*": "the decomposed relative position tables (ViTDet rel_pos_h/w)",
    "blocks.*.attn.rpe_k.*": "the contextual relative position tables (iRPE, AdPE)",
}
TOKENS = {"dist_token": "a distillation token (DeiT)", "reg_token": "register tokens"}


@dataclass
class Plan:
    """An encoder laid out for one target."""

    take: dict[str, torch.Tensor]  # the target's names
    aside: dict[str, torch.Tensor] = field(default_factory=dict)  # kept under droppos_extras (target names)
    notes: dict[str, str] = field(default_factory=dict)  # the card's target_notes
    warnings: list[str] = field(default_factory=list)  # learned weights the target's model will not use
    config: dict[str, Any] = field(default_factory=dict)  # settings the target's model needs
    load_with: str = ""  # how the target's library loads the file ('{dst}' is the file)
    heads_note: str = ""  # the card's note when ``config`` / ``load_with`` give a guessed number of heads


@dataclass(frozen=True)
class Arch:
    embed_dim: int
    depth: int
    patch_size: int
    grid: tuple[int, int] | None
    num_heads: int
    mlp_ratio: float
    cls_row: bool | None = None  # the absolute position table starts with a cls row (None: no such table)
    heads_from: str = ""  # pretrain.weights.shape.attention_heads: the bias table, the source, the width, a guess


def encoder_arch(encoder: dict[str, torch.Tensor], num_heads: int | None = None) -> Arch:
    """Width, depth, patch, grid (:func:`pretrain.weights.shape.encoder_shape`), heads and MLP ratio of the
    weights. Heads: the bias table's when there is one, else ``num_heads`` (the source's config or card),
    else the standard ViT of that width, else guessed (``heads_from`` says which)."""
    shape = encoder_shape(encoder)
    dim = shape.embed_dim
    heads, heads_from = attention_heads(encoder, num_heads)
    fc1 = encoder.get("blocks.0.mlp.fc1.weight")
    ratio: float = float(fc1.shape[0]) / dim if fc1 is not None else 4.0
    ratio = int(ratio) if ratio.is_integer() else ratio  # MMSeg builds its FFN with int(dim * ratio) only for ints
    return Arch(dim, shape.depth, shape.patch_size, shape.grid, heads, ratio, shape.cls_row, heads_from)


def _guessed_heads(plan: Plan, arch: Arch) -> None:
    """Say in the card that the heads ``plan`` gives its target are a guess, when they are."""
    if arch.heads_from.startswith("guessed"):
        plan.heads_note = (f"num_heads={arch.num_heads} {arch.heads_from}: set the target's num_heads to the "
                           "source's if it differs")


def _split_relative(encoder: dict[str, torch.Tensor], held: tuple[str, ...] = ()) -> tuple[dict, dict[str, list[str]],
                                                                                           list[str]]:
    """(encoder without the relative tables a target cannot hold, learned ones by kind, all-zero ones dropped).

    ``held``: the RELATIVE patterns the target keeps. A table that is all zeros adds nothing to
    the attention, so leaving it out is exact."""
    out, learned, zero = {}, {}, []
    for key, value in encoder.items():
        pattern = next((p for p in RELATIVE if fnmatch.fnmatchcase(key, p)), None)
        if pattern is None or pattern in held:
            out[key] = value
        elif not value.any():
            zero.append(key)
        else:
            learned.setdefault(RELATIVE[pattern], []).append(key)
    return out, learned, zero


def fold_layer_scale(encoder: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Multiply ``ls1``/``ls2`` gammas into ``attn.proj`` / ``mlp.fc2`` (exact) for targets without layer scale."""
    out = dict(encoder)
    folded = 0
    for key in [k for k in encoder if k.endswith((".ls1.gamma", ".ls2.gamma"))]:
        block = key.rsplit(".", 2)[0]
        layer = f"{block}.attn.proj" if ".ls1." in key else f"{block}.mlp.fc2"
        gamma = out.pop(key).float()
        weight = out[f"{layer}.weight"]
        out[f"{layer}.weight"] = (weight.float() * gamma[:, None]).to(weight.dtype)
        if f"{layer}.bias" in out:
            bias = out[f"{layer}.bias"]
            out[f"{layer}.bias"] = (bias.float() * gamma).to(bias.dtype)
        folded += 1
    return out, folded


def _fill_qkv_bias(encoder: dict[str, torch.Tensor], arch: Arch) -> tuple[dict[str, torch.Tensor], int]:
    """A zero qkv bias for blocks without one (exact: the same attention)."""
    out, filled = dict(encoder), 0
    for i in range(arch.depth):
        w = out.get(f"blocks.{i}.attn.qkv.weight")
        if w is not None and f"blocks.{i}.attn.qkv.bias" not in out:
            out[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
            filled += 1
    return out, filled


def _exact_fixes(plan: Plan, enc: dict[str, torch.Tensor], arch: Arch, fold: bool = True) -> dict[str, torch.Tensor]:
    """Layer scale folded (``fold``) and missing qkv biases zero-filled, both exact, noted in ``plan``."""
    if fold:
        enc, folded = fold_layer_scale(enc)
        if folded:
            plan.notes["layer scale folded"] = f"{folded} gammas multiplied into attn.proj / mlp.fc2 (exact)"
    enc, filled = _fill_qkv_bias(enc, arch)
    if filled:
        plan.notes["qkv bias filled"] = f"zeros in {filled} blocks without one (exact)"
    return enc


def _need_square_grid(arch: Arch, to: str, src: str) -> tuple[int, int]:
    if arch.grid is None:
        raise CheckpointError(f"{src}: --to {to} needs the encoder's square patch grid, and its position tables "
                              "give none (no absolute table, or rows that are not a square grid); "
                              "--to safetensors keeps it as it is")
    if arch.cls_row is False:
        raise CheckpointError(f"{src}: --to {to} needs a position table with a cls row, and this one is the "
                              f"{arch.grid[0]} x {arch.grid[1]} square grid alone; --to safetensors keeps it as it is")
    return arch.grid


def _said(notes: dict[str, str], warnings: list[str], what: str, keys: list[str], why: str) -> None:
    notes[f"kept aside: {what}"] = group_keys(keys)
    warnings.append(f"{why}: {what} ({group_keys(keys, most=4)}) kept aside under droppos_extras, not used")


def _set_aside_unheld(plan: Plan, encoder: dict[str, torch.Tensor], held: tuple[str, ...], who: str,
                      rename: Callable[[str], str]) -> dict[str, torch.Tensor]:
    """``encoder`` without the relative tables (but ``held``) and tokens the target cannot hold: all-zero
    tables dropped (exact), learned ones and tokens kept aside (``rename``: the target's name) and said."""
    enc, learned, zero = _split_relative(encoder, held=held)
    if zero:
        plan.notes["dropped: all-zero relative tables (exact)"] = group_keys(zero)
    for what, keys in learned.items():
        _said(plan.notes, plan.warnings, what, keys, f"{who} has no place for it")
        plan.aside.update({rename(k): encoder[k] for k in keys})
    for key in [k for k in enc if k in TOKENS]:
        _said(plan.notes, plan.warnings, TOKENS[key], [key], f"{who} has no place for it")
        plan.aside[rename(key)] = enc.pop(key)
    return enc


# ------------------------------------------------------------------ timm and safetensors
def timm_vit_keys(depth: int) -> set[str]:
    """Every key of timm's ``VisionTransformer`` (class token, qkv bias, final norm, no head)."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(depth):
        for part in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    return keys


def timm_call(arch: Arch, dst: str = "{dst}") -> str:
    """``timm.create_model(...)`` that builds this encoder's ViT from ``dst``, sizes always given
    (timm would otherwise resample a position table of another grid without a word)."""
    size = standard_size(arch.embed_dim, arch.depth)
    kwargs = ""
    name = f"vit_{size}_patch{14 if size == 'huge' else 16}_224" if size else "vit_base_patch16_224"
    if size is None:
        kwargs += f", embed_dim={arch.embed_dim}, depth={arch.depth}, num_heads={arch.num_heads}"
    if arch.mlp_ratio != 4.0:
        kwargs += f", mlp_ratio={arch.mlp_ratio:g}"
    img = arch.grid[0] * arch.patch_size if arch.grid else None
    return (f"timm.create_model('{name}', pretrained=True, num_classes=0, img_size={img}, "
            f"patch_size={arch.patch_size}{kwargs}, pretrained_cfg_overlay=dict(file='{dst}', num_classes=0))")


def plan_timm(encoder: dict[str, torch.Tensor], src: str, num_heads: int | None = None) -> Plan:
    """Exactly the keys timm's ViT loads strictly; refuses what it cannot hold (see the module docstring)."""
    arch = encoder_arch(encoder, num_heads)
    enc, learned, zero = _split_relative(encoder)
    refused = [f"{TOKENS[k]} ({k})" for k in enc if k in TOKENS]
    refused += [f"{what} ({group_keys(keys, most=4)})" for what, keys in learned.items()]
    if arch.grid is None:
        refused.append("a position table that is not a cls row plus a square grid"
                       if "pos_embed" in enc else "no absolute position table")
    elif arch.cls_row is False:
        refused.append(f"a position table without a cls row (the {arch.grid[0]} x {arch.grid[1]} square grid alone)")
    if refused:
        raise CheckpointError(f"{src}: timm's VisionTransformer has no place for {'; '.join(refused)}; a timm file "
                              "would drop them (--to safetensors keeps every weight for this suite's loaders)")
    plan = Plan(take={})
    if zero:
        plan.notes["dropped: all-zero relative tables (exact)"] = group_keys(zero)
    enc = _exact_fixes(plan, enc, arch)
    if "cls_token" not in enc:
        enc["cls_token"] = torch.zeros(1, 1, arch.embed_dim)
        plan.notes["cls token filled"] = "zeros: the source has none"
        plan.warnings.append("the source has no cls token (a detector's backbone): filled with zeros; timm's "
                             "features then differ from the source's")
    if "norm.weight" not in enc:
        enc["norm.weight"], enc["norm.bias"] = torch.ones(arch.embed_dim), torch.zeros(arch.embed_dim)
        plan.notes["final norm filled"] = "weight 1, bias 0: the source has none"
        plan.warnings.append("the source has no final norm: filled with weight 1, bias 0; timm normalises its "
                             "output tokens where the source did not")
    want = timm_vit_keys(arch.depth)
    extra, missing = sorted(set(enc) - want), sorted(want - set(enc))
    if extra or missing:
        what = "; ".join(x for x in (f"weights it has no place for: {group_keys(extra, most=6)}" if extra else "",
                                     f"weights it needs: {group_keys(missing, most=6)}" if missing else "") if x)
        raise CheckpointError(f"{src}: not a plain timm ViT encoder ({what}); --to safetensors keeps it as it is")
    plan.take = enc
    plan.config = {"img_size": arch.grid[0] * arch.patch_size, "patch_size": arch.patch_size}
    plan.load_with = timm_call(arch)
    if standard_size(arch.embed_dim, arch.depth) is None:  # the call names the heads
        _guessed_heads(plan, arch)
    return plan


def plan_safetensors(encoder: dict[str, torch.Tensor], src: str, num_heads: int | None = None) -> Plan:
    return Plan(take=dict(encoder), load_with="safetensors.torch.load_file('{dst}') (timm names; the card is "
                                              "the metadata 'droppos_card'), or any loader of this suite")


# ------------------------------------------------------------------ Detectron2 and the suite's UperNet
def plan_detectron2(encoder: dict[str, torch.Tensor], src: str, num_heads: int | None = None) -> Plan:
    arch = encoder_arch(encoder, num_heads)
    _need_square_grid(arch, "detectron2", src)
    plan = Plan(take={})
    enc = _set_aside_unheld(plan, encoder, ("blocks.*.attn.rel_pos_*",), "ViTDet", lambda k: DETECTRON2_PREFIX + k)
    enc, folded = fold_layer_scale(enc)
    if folded:
        plan.notes["layer scale folded"] = f"{folded} gammas multiplied into attn.proj / mlp.fc2 (exact; ViTDet has none)"
    by_design = [k for k in enc if k == "cls_token" or k.startswith("norm.")]
    if by_design:
        plan.notes["kept aside: ViTDet has no cls token and no final norm"] = group_keys(by_design)
        plan.aside.update({DETECTRON2_PREFIX + k: enc.pop(k) for k in by_design})
    plan.take = {DETECTRON2_PREFIX + k: v for k, v in enc.items()}
    plan.load_with = "train.init_checkpoint='{dst}' (this suite's ViTDet, Detectron2's DetectionCheckpointer)"
    return plan


def plan_upernet(encoder: dict[str, torch.Tensor], src: str, num_heads: int | None = None) -> Plan:
    """This suite's DropPosViT (MAE recipe: layer scale, BEiT bias tables, no final norm), timm names."""
    arch = encoder_arch(encoder, num_heads)
    _need_square_grid(arch, "droppos-upernet", src)
    plan = Plan(take={})
    enc = _set_aside_unheld(plan, encoder, ("blocks.*.attn.relative_position_bias_table",),
                            "the suite's UperNet backbone", lambda k: UPERNET_PREFIX + k)
    norm = [k for k in enc if k.startswith("norm.")]
    if norm:
        plan.notes["kept aside: the MAE-recipe backbone has no final norm"] = group_keys(norm)
        plan.aside.update({UPERNET_PREFIX + k: enc.pop(k) for k in norm})
    plan.take = {UPERNET_PREFIX + k: v for k, v in enc.items()}
    plan.load_with = ("segmentation/train.py CONFIG --checkpoint '{dst}' (model.backbone.pretrained of the suite's "
                      "DropPosViT UperNet configs)")
    return plan


# ------------------------------------------------------------------ MMSegmentation's own backbones
def mmseg_name(key: str, vit: bool = False) -> str:
    """A timm encoder key in MMSegmentation's MAE (``vit=False``) or VisionTransformer names: the inverse of
    ``pretrain.weights.foreign``'s reading, from the same name pairs."""
    if key in TIMM_TO_MMSEG_TOP:
        return TIMM_TO_MMSEG_TOP[key]
    m = re.match(r"^blocks\.(\d+)(\..*)$", key)
    if not m:
        return key
    name = f"layers.{m.group(1)}{m.group(2)}"
    for pattern, repl in TIMM_TO_MMSEG_BLOCK + (TIMM_TO_MMSEG_VIT_ATTN if vit else []):
        name = re.sub(pattern, repl, name)
    return name


def _mmseg_common(encoder: dict[str, torch.Tensor], src: str, to: str, held: tuple[str, ...],
                  who: str, num_heads: int | None) -> tuple[dict[str, torch.Tensor], Plan, Arch, tuple[int, int]]:
    arch = encoder_arch(encoder, num_heads)
    grid = _need_square_grid(arch, to, src)  # square: MMSeg resizes position tables as square grids
    plan = Plan(take={})
    _guessed_heads(plan, arch)  # its config names the heads
    enc = _set_aside_unheld(plan, encoder, held, who, mmseg_name)
    if "cls_token" not in enc:
        enc["cls_token"] = torch.zeros(1, 1, arch.embed_dim)
        plan.warnings.append(f"the source has no cls token (a detector's backbone): filled with zeros for {who}; "
                             "its features then differ from the source's")
        plan.notes["cls token filled"] = "zeros: the source has none"
    norm = [k for k in enc if k.startswith("norm.")]
    if norm:  # the MAE / BEiT / ViT UperNet recipes run without it; in state_dict MMSeg would report it unexpected
        plan.notes["kept aside: the final norm (MMSeg's UperNet configs use final_norm=False)"] = group_keys(norm)
        plan.aside.update({mmseg_name(k): enc.pop(k) for k in norm})
    if "pos_embed" not in enc:  # a BEiT encoder: no absolute table; zeros add nothing (exact)
        enc["pos_embed"] = torch.zeros(1, 1 + grid[0] * grid[1], arch.embed_dim)
        plan.notes["position table filled"] = "zeros: the source has no absolute table (exact)"
    return enc, plan, arch, grid


def _mmseg_config(kind: str, arch: Arch, grid: tuple[int, int], extra: dict[str, Any]) -> tuple[dict[str, Any], str]:
    config = {"type": kind, "img_size": [grid[0] * arch.patch_size, grid[1] * arch.patch_size],  # a JSON list
              "patch_size": arch.patch_size, "embed_dims": arch.embed_dim, "num_layers": arch.depth,
              "num_heads": arch.num_heads, "mlp_ratio": arch.mlp_ratio, **extra,
              "norm_cfg": {"type": "LN", "eps": LN_EPS}, "final_norm": False}
    text = ", ".join(f"{k}={v!r}" if not isinstance(v, dict) else f"{k}=dict({', '.join(f'{a}={b!r}' for a, b in v.items())})"
                     for k, v in config.items())
    return config, f"model.backbone=dict({text}, init_cfg=dict(type='Pretrained', checkpoint='{{dst}}'))"


def plan_mmseg(encoder: dict[str, torch.Tensor], src: str, num_heads: int | None = None) -> Plan:
    """MMSeg's MAE backbone: every parameter of it filled (gammas 1 / zero bias tables where the encoder has none)."""
    who = "MMSeg's MAE backbone"
    enc, plan, arch, grid = _mmseg_common(encoder, src, "mmseg", ("blocks.*.attn.relative_position_bias_table",), who,
                                          num_heads)
    enc = _exact_fixes(plan, enc, arch, fold=False)
    ones = zeros = 0
    rows = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
    for i in range(arch.depth):
        for gamma in (f"blocks.{i}.ls1.gamma", f"blocks.{i}.ls2.gamma"):
            if gamma not in enc:
                enc[gamma], ones = torch.ones(arch.embed_dim), ones + 1
        table = f"blocks.{i}.attn.relative_position_bias_table"
        if table not in enc:
            enc[table], zeros = torch.zeros(rows, arch.num_heads), zeros + 1
    if ones:
        plan.notes["layer scale filled"] = f"{ones} gammas of 1 (the encoder has no layer scale; exact)"
    if zeros:
        plan.notes["relative bias filled"] = f"{zeros} zero tables (the encoder has none; exact)"
    plan.take = {mmseg_name(k): v for k, v in enc.items()}
    plan.config, plan.load_with = _mmseg_config("MAE", arch, grid, {"init_values": 1.0})
    plan.notes["MMSeg settings"] = ("norm_cfg=dict(type='LN', eps=1e-6) (with MMSeg's default 1e-5 the features are "
                                    "not the encoder's) and init_values > 0 (the gammas come from this file)")
    return plan


def plan_mmseg_vit(encoder: dict[str, torch.Tensor], src: str, num_heads: int | None = None) -> Plan:
    """MMSeg's VisionTransformer: no layer scale (folded), no patch bias (folded into the position table)."""
    enc, plan, arch, grid = _mmseg_common(encoder, src, "mmseg-vit", (), "MMSeg's VisionTransformer", num_heads)
    enc = _exact_fixes(plan, enc, arch)
    bias = enc.pop("patch_embed.proj.bias", None)
    if bias is not None:  # every patch token gets it before the position table: the same sum
        pos = enc["pos_embed"].clone()
        pos[:, 1:] = pos[:, 1:] + bias.to(pos.dtype)
        enc["pos_embed"] = pos
        plan.notes["patch bias folded"] = "into the patch rows of pos_embed (MMSeg's patch embedding has no bias; exact)"
    plan.take = {mmseg_name(k, vit=True): v for k, v in enc.items()}
    plan.config, plan.load_with = _mmseg_config("VisionTransformer", arch, grid,
                                                {"qkv_bias": True, "with_cls_token": True, "interpolate_mode": "bicubic"})
    plan.notes["MMSeg settings"] = "norm_cfg=dict(type='LN', eps=1e-6), qkv_bias=True, patch_bias=False (the default)"
    return plan


PLANNERS = {"timm": plan_timm, "safetensors": plan_safetensors, "detectron2": plan_detectron2, "mmseg": plan_mmseg,
            "mmseg-vit": plan_mmseg_vit, "droppos-upernet": plan_upernet}


def plan_target(encoder: dict[str, torch.Tensor], to: str, src: str = "<encoder>", num_heads: int | None = None) -> Plan:
    """The encoder laid out for ``to`` (one of :data:`TARGETS`); CheckpointError for what it refuses.
    ``num_heads``: the source's heads where its config or card says (else read off, or guessed from, the width)."""
    if to not in PLANNERS:
        raise ValueError(f"unknown export target {to!r}; choose one of {list(TARGETS)}")
    return PLANNERS[to](dict(encoder), src, num_heads)


def grid_note(encoder: dict[str, torch.Tensor]) -> str | None:
    """Why the card has no image size, when the tables give no square grid (:mod:`pretrain.weights.shape`)."""
    return encoder_shape(encoder).grid_note()


__all__ = ["TARGETS", "Plan", "Arch", "encoder_arch", "plan_target", "fold_layer_scale", "timm_call", "mmseg_name",
           "timm_vit_keys", "grid_note"]
