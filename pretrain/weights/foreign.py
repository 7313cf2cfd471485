"""Other packages' ViT key layouts -> timm names: Detectron2, MMEngine / MMSegmentation.

A detector or segmentor checkpoint holds the encoder among its heads, under a
package's prefix and sometimes under its own names:

- Detectron2 (this suite's ViTDet and the official ViTDet ``model_final.pth``):
  ``backbone.net.<timm name>``; no cls token, no final norm (the position table
  keeps its cls row); decomposed relative-position tables ``attn.rel_pos_h/w``;
- MMEngine checkpoints of an MMSegmentation segmentor (``iter_*.pth``, this suite's
  UperNet): ``backbone.<timm name>`` under ``state_dict``;
- MMSegmentation's own MAE / BEiT / VisionTransformer backbone (model-zoo files, flat or
  under ``backbone.``; this suite's ``--to mmseg`` / ``mmseg-vit`` exports): ``layers.i.ln1``,
  ``attn.q_bias``/``v_bias``, ``attn.attn.in_proj_*`` / ``out_proj``, ``ffn.layers.0.0``,
  ``gamma_1``, ``patch_embed.projection``, final norm ``ln1``.

:func:`layouts_of` names the layouts a state dict shows; :func:`to_timm_names`
returns its encoder part under timm names (heads, necks and buffers left out).
"""
from __future__ import annotations

import re

import torch

DETECTRON2_BACKBONE = "backbone.net."
MMENGINE_BACKBONE = "backbone."
# MMSegmentation name <-> timm name: the one table of both directions (``mmseg_mae_to_timm`` reads, and
# ``pretrain.weights.targets.mmseg_name`` writes, with it). Block parts apply after ``layers.i.`` <->
# ``blocks.i.``; a part that ends in '.' matches inside a key, any other at its end.
MMSEG_BLOCK_PAIRS = [  # MMSeg's MAE / BEiT backbone
    (".ln1.", ".norm1."),
    (".ln2.", ".norm2."),
    (".ffn.layers.0.0.", ".mlp.fc1."),
    (".ffn.layers.1.", ".mlp.fc2."),
    (".gamma_1", ".ls1.gamma"),
    (".gamma_2", ".ls2.gamma"),
]
MMSEG_VIT_ATTN_PAIRS = [  # MMSeg's VisionTransformer (nn.MultiheadAttention) on top of those
    (".attn.attn.in_proj_weight", ".attn.qkv.weight"),
    (".attn.attn.in_proj_bias", ".attn.qkv.bias"),
    (".attn.attn.out_proj.", ".attn.proj."),
]
MMSEG_TOP_PAIRS = [("patch_embed.projection", "patch_embed.proj"), ("ln1", "norm")]  # .weight / .bias


def _renames(pairs: list[tuple[str, str]], to_timm: bool) -> list[tuple[str, str]]:
    """(regex, replacement) of each pair, MMSeg -> timm (``to_timm``) or timm -> MMSeg."""
    out = []
    for mmseg, timm in pairs:
        src, dst = (mmseg, timm) if to_timm else (timm, mmseg)
        out.append((re.escape(src) + ("" if src.endswith(".") else "$"), dst))
    return out


_MMSEG_BLOCK_NAMES = _renames(MMSEG_BLOCK_PAIRS + MMSEG_VIT_ATTN_PAIRS, to_timm=True)
_MMSEG_TOP_NAMES = {f"{mmseg}.{part}": f"{timm}.{part}" for mmseg, timm in MMSEG_TOP_PAIRS for part in ("weight", "bias")}
TIMM_TO_MMSEG_BLOCK = _renames(MMSEG_BLOCK_PAIRS, to_timm=False)
TIMM_TO_MMSEG_VIT_ATTN = _renames(MMSEG_VIT_ATTN_PAIRS, to_timm=False)
TIMM_TO_MMSEG_TOP = {timm: mmseg for mmseg, timm in _MMSEG_TOP_NAMES.items()}
_BUFFERS = re.compile(r"(^|\.)relative_position_index$")


def layouts_of(state: dict[str, torch.Tensor]) -> list[str]:
    """Every layout the keys show: ``ours``, ``detectron2``, ``mmengine``, ``mmseg-mae``, ``timm-names``."""
    keys = list(state)
    found = []
    if any(k.startswith("encoder.blocks.") for k in keys):
        found.append("ours")
    if any(k.startswith(DETECTRON2_BACKBONE + "blocks.") for k in keys):
        found.append("detectron2")
    if any(k.startswith((MMENGINE_BACKBONE + "blocks.", MMENGINE_BACKBONE + "layers.")) for k in keys):
        found.append("mmengine")
    inner = [k[len(MMENGINE_BACKBONE):] if k.startswith(MMENGINE_BACKBONE) else k for k in keys]
    if any(k.startswith("layers.") and ".ffn.layers." in k for k in inner):
        found.append("mmseg-mae")
    if any(k.startswith("blocks.") for k in keys):
        found.append("timm-names")
    return found


def mmseg_mae_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MMSeg MAE / BEiT backbone keys -> timm keys; q/v biases become one qkv bias (k bias zero)."""
    out: dict[str, torch.Tensor] = {}
    biases: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if _BUFFERS.search(key):
            continue
        if key in _MMSEG_TOP_NAMES:
            out[_MMSEG_TOP_NAMES[key]] = value
            continue
        m = re.match(r"^layers\.(\d+)(\..*)$", key)
        if not m:
            out[key] = value
            continue
        name = f"blocks.{m.group(1)}{m.group(2)}"
        bias = re.match(r"^(blocks\.\d+\.attn)\.(q|v)_bias$", name)
        if bias:
            biases.setdefault(bias.group(1), {})[bias.group(2)] = value
            continue
        for pattern, repl in _MMSEG_BLOCK_NAMES:
            name = re.sub(pattern, repl, name)
        out[name] = value
    for attn, qv in biases.items():
        q, v = qv["q"], qv.get("v", torch.zeros_like(qv["q"]))
        out[f"{attn}.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    return _exact_simplifications(out)


def _exact_simplifications(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What changes no feature, made explicit for timm-named loaders: layer-scale gammas that are all 1
    and relative bias tables that are all 0 (an MMSeg MAE backbone's own fill for an encoder without
    them) are left out; a patch embedding without bias (MMSeg's VisionTransformer default) gets a zero one."""
    out = {}
    for key, value in state.items():
        if key.endswith((".ls1.gamma", ".ls2.gamma")) and bool((value == 1).all()):
            continue
        if key.endswith(".attn.relative_position_bias_table") and not value.any():
            continue
        out[key] = value
    weight = out.get("patch_embed.proj.weight")
    if weight is not None and "patch_embed.proj.bias" not in out:
        out["patch_embed.proj.bias"] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return out


def to_timm_names(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """The encoder part of a ``layout`` state dict under timm names (other parts left out)."""
    if layout == "detectron2":
        return {k[len(DETECTRON2_BACKBONE):]: v for k, v in state.items() if k.startswith(DETECTRON2_BACKBONE)}
    flat = state
    if any(k.startswith(MMENGINE_BACKBONE) for k in state):
        flat = {k[len(MMENGINE_BACKBONE):]: v for k, v in state.items() if k.startswith(MMENGINE_BACKBONE)}
    if layout == "mmseg-mae":
        return mmseg_mae_to_timm(flat)
    return {k: v for k, v in flat.items() if not _BUFFERS.search(k)}
