"""Timm-named encoder weights into a model, with one report of what happened to every key.

Every transfer task loads the same thing, a plain encoder state dict
(``pretrain.weights.load_encoder``), into a target whose names and rules differ:

- the classifier: timm names; only the head (and ``fc_norm`` with average pooling)
  may stay new, anything that does not fit is an error;
- the MMSeg backbone: timm names; anything may stay new, keys it lacks are skipped;
- the ViTDet detector: ``backbone.net.`` + timm name, no cls token, no final norm;
- the analyses' frozen ViT, built from the weights: every key must fit.

:class:`LoadRules` says which. :func:`match_encoder` decides key by key, resizes a
position table of another grid bicubically (cls row kept) and refuses what the
rules forbid; :func:`load_encoder_into` also copies the tensors into a model and
checks that they took. Both return a :class:`LoadReport`.

One refusal rule holds for every target: a load that leaves any of the target's
*encoder* weights (patch embedding, cls token, position table, block norms,
attention and MLP, final norm) at their initialisation is refused, unless those
keys are asked for by name in ``LoadRules.partial`` (glob patterns of timm names).
Weights a pretrained encoder never has (layer scale, relative-position tables,
heads, necks) may stay new.
"""
from __future__ import annotations

import fnmatch
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn

from ..atomic import atomic_write_json
from ..models.pos_embed import resize_pos_embed
from .read import CheckpointError


@dataclass(frozen=True)
class LoadRules:
    """Where a timm-named encoder goes in a target, and what may stay unmatched.

    Attributes:
        prefix: target name = ``prefix`` + timm name (``"backbone.net."`` in ViTDet).
        skip: timm keys (or glob patterns) the target never takes, with the reason shown
            in the report.
        grid: the target's patch grid for a resized ``pos_embed`` (None: the square
            grid of the target table's rows).
        strict: every other encoder key must load; a key the target lacks or a
            shape mismatch is an error instead of a skipped key.
        allowed_new: target keys that may keep their initialisation (None: any).
        require_blocks: refuse a load in which no transformer block weight fits.
        hint: what to check, shown in the errors.
        partial: glob patterns of timm names of encoder weights that may keep their
            initialisation (``("cls_token", "norm.*")`` for a detector's backbone);
            any other encoder weight left new refuses the load.
    """

    prefix: str = ""
    skip: Mapping[str, str] = field(default_factory=dict)
    grid: tuple[int, int] | None = None
    strict: bool = False
    allowed_new: frozenset[str] | None = None
    require_blocks: bool = True
    hint: str = ""
    partial: tuple[str, ...] = ()


@dataclass
class LoadReport:
    """What loading an encoder did: keys loaded, new, skipped (with why) and resized.

    Target keys (``loaded``, ``new``) carry the target's names; encoder keys
    (``unexpected``, ``mismatched``, ``skipped``, ``resized``) their timm names.
    ``format`` .. ``ignored_objects`` say where the weights came from, when the
    caller read the file.
    """

    source: str
    loaded: list[str] = field(default_factory=list)  # target keys that received a tensor
    new: list[str] = field(default_factory=list)  # target keys the checkpoint did not fill
    unexpected: list[str] = field(default_factory=list)  # encoder keys the target has no place for
    mismatched: dict[str, str] = field(default_factory=dict)  # encoder key -> both shapes (not loaded)
    skipped: dict[str, str] = field(default_factory=dict)  # encoder key -> why the target never takes it
    resized: dict[str, str] = field(default_factory=dict)  # encoder key -> how it was resampled
    format: str | None = None
    method: str | None = None
    dropped_from_file: list[str] = field(default_factory=list)  # non-encoder keys of the file (decoder ...)
    ignored_objects: list[str] = field(default_factory=list)  # pickled non-tensor objects (argparse.Namespace)
    partial: list[str] = field(default_factory=list)  # encoder weights left at init because asked for by name

    @property
    def unused(self) -> list[str]:
        """Every encoder key that did not load: skipped, unexpected, or ``key (shape ...)``."""
        shapes = [f"{k} (shape: {why})" for k, why in self.mismatched.items()]
        return sorted([*self.skipped, *self.unexpected, *shapes])

    def summary(self, prefix: str = "") -> str:
        """Readable report, one fact a line (each starting with ``prefix``); long key lists grouped."""
        about = ""
        if self.format is not None:
            about = f" (format: {self.format}, pretraining method: {self.method or 'unknown'})"
        lines = [
            f"encoder weights from {self.source}{about}",
            f"  loaded {len(self.loaded)} encoder tensors (new {len(self.new)}, unexpected {len(self.unexpected)}, "
            f"shape mismatch {len(self.mismatched)}, skipped {len(self.skipped)}, reshaped {len(self.resized)})",
            f"  newly initialised ({len(self.new)}): {group_keys(self.new) or '(none)'}",
        ]
        lines += [f"  resized {k}: {how}" for k, how in self.resized.items()]
        if self.partial:
            lines.append(f"  partial load asked for: left at initialisation ({len(self.partial)}): "
                         f"{group_keys(self.partial)}")
        by_reason: dict[str, list[str]] = {}
        for key, why in self.skipped.items():
            by_reason.setdefault(why, []).append(key)
        lines += [f"  skipped {', '.join(sorted(keys))}: {why}" for why, keys in by_reason.items()]
        if self.mismatched:
            lines.append(f"  skipped, shape mismatch ({len(self.mismatched)}): {group_keys(self.mismatched)}")
        if self.unexpected:
            lines.append(f"  skipped, not in the model ({len(self.unexpected)}): {group_keys(self.unexpected)}")
        if self.dropped_from_file:
            lines.append(f"  not part of the encoder, ignored ({len(self.dropped_from_file)}): "
                         f"{group_keys(self.dropped_from_file)}")
        if self.ignored_objects:
            lines.append(f"  pickled objects ignored (not weights): {', '.join(self.ignored_objects)}")
        return "\n".join(prefix + line for line in lines)

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (``load_report.json``, the detector's metrics): every field plus ``unused``."""
        return {**asdict(self), "unused": self.unused}

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``out_dir/load_report.json`` atomically."""
        return atomic_write_json(Path(out_dir) / "load_report.json", self.to_dict())


def group_keys(keys: Iterable[str], most: int = 12) -> str:
    """Key names for display: indices collapsed (``blocks.*.ls1.gamma (x12)``), coarser when many.

    With more than ``most`` groups the names are cut to two, then one, leading parts
    (``roi_heads.box_head.* (x8)``, ``decoder_blocks.* (x24)``).
    """
    keys = list(keys)
    groups: dict[str, list[str]] = {}
    for depth in (None, 2, 1):
        groups = {}
        for key in keys:
            groups.setdefault(_leading(re.sub(r"\.\d+(?=\.)", ".*", key), depth), []).append(key)
        if len(groups) <= most:
            break
    return ", ".join(f"{name} (x{len(ks)})" if len(ks) > 1 else ks[0] for name, ks in sorted(groups.items()))


def _leading(name: str, depth: int | None) -> str:
    parts = name.split(".")
    if depth is None or len(parts) <= depth:
        return name
    head = parts[:depth]
    while len(head) > 1 and head[-1] == "*":
        head.pop()
    return ".".join(head) + ".*"


def _square_grid(rows: int, source: str) -> tuple[int, int]:
    side = math.isqrt(rows)
    if side * side != rows:
        raise CheckpointError(f"{source}: pos_embed has {rows} patch rows, not a square grid; cannot resize it")
    return side, side


def _resized_pos_embed(
    value: torch.Tensor, target: torch.Tensor, grid: tuple[int, int] | None, source: str
) -> tuple[torch.Tensor, str]:
    """``pos_embed`` [1, 1 + h*w, D] resampled (in fp32) to the target's grid, and how."""
    old = _square_grid(value.shape[1] - 1, source)
    new = tuple(grid) if grid is not None else _square_grid(target.shape[1] - 1, source)
    out = resize_pos_embed(value.float(), new, num_prefix_tokens=1, old_grid=old)
    return out, f"grid {old[0]}x{old[1]} -> {new[0]}x{new[1]} (bicubic, cls row kept)"


def match_encoder(
    target: Mapping[str, torch.Tensor],
    encoder: Mapping[str, torch.Tensor],
    rules: LoadRules = LoadRules(),
    source: str = "<state dict>",
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Decide, key by key, which encoder tensors go where in ``target`` (a state dict).

    Returns the tensors to load (target names, target dtypes) and the report; raises
    CheckpointError, naming the keys, for a load the rules refuse.
    """
    report = LoadReport(source=source)
    out: dict[str, torch.Tensor] = {}
    for key, value in encoder.items():
        why = skip_reason(key, rules.skip)
        if why is not None:
            report.skipped[key] = why
            continue
        name = rules.prefix + key
        if name not in target:
            report.unexpected.append(key)
            continue
        want = target[name]
        if key == "pos_embed" and value.shape != want.shape and value.shape[-1] == want.shape[-1]:
            value, report.resized[key] = _resized_pos_embed(value, want, rules.grid, source)
        if value.shape != want.shape:
            report.mismatched[key] = f"checkpoint {tuple(value.shape)} vs model {tuple(want.shape)}"
            continue
        out[name] = value.detach().to(want.dtype)
    report.loaded = sorted(out)
    report.new = sorted(k for k in target if k not in out)
    report.unexpected.sort()
    _refuse(report, rules, sorted(encoder))
    return out, report


# Target weights (timm names) every pretrained ViT encoder provides; none may stay new unasked.
ENCODER_WEIGHT = re.compile(
    r"^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|norm\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias))$"
)


def skip_reason(key: str, skip: Mapping[str, str]) -> str | None:
    """Why ``skip`` leaves ``key`` out (exact name first, then glob patterns), or None."""
    if key in skip:
        return skip[key]
    return next((why for pattern, why in skip.items() if fnmatch.fnmatchcase(key, pattern)), None)


def left_at_init(report: LoadReport, rules: LoadRules) -> tuple[list[str], list[str]]:
    """Target encoder weights the load left new: (refused, allowed by ``rules.partial``), target names."""
    refused, allowed = [], []
    for key in report.new:
        name = key[len(rules.prefix):] if key.startswith(rules.prefix) else None
        if name is None or not ENCODER_WEIGHT.match(name):
            continue
        (allowed if any(fnmatch.fnmatchcase(name, p) for p in rules.partial) else refused).append(key)
    return refused, allowed


def _refuse(report: LoadReport, rules: LoadRules, encoder_keys: list[str]) -> None:
    """Raise CheckpointError for what ``rules`` forbid: nothing fits, keys that do not fit, keys left new."""
    src, hint = report.source, f" ({rules.hint})" if rules.hint else ""
    details = []
    if report.mismatched:
        shapes = [f"{k}: {why}" for k, why in list(report.mismatched.items())[:50]]
        details.append(f"  shape mismatches ({len(report.mismatched)}):\n    " + "\n    ".join(shapes))
    if report.unexpected:
        details.append(f"  checkpoint keys the model lacks ({len(report.unexpected)}): "
                       + ", ".join(report.unexpected[:50]))
    if rules.require_blocks and not any(k.startswith(rules.prefix + "blocks.") for k in report.loaded):
        raise CheckpointError("\n".join([
            f"nothing of the encoder in {src} matches the model{hint}: no transformer block weight fits; "
            f"checkpoint keys: {', '.join(encoder_keys[:6])}, ...", *details]))
    if rules.strict and details:
        raise CheckpointError("\n".join([f"{src} does not fit the model{hint}:", *details]))
    if rules.allowed_new is not None:
        extra = sorted(set(report.new) - rules.allowed_new)
        if extra:
            expected = f"; expected only {sorted(rules.allowed_new)} to be new" if rules.allowed_new else ""
            raise CheckpointError(
                f"{src} lacks encoder weights the model needs ({len(extra)}): {', '.join(extra[:50])}{expected}")
    refused, report.partial = left_at_init(report, rules)
    if refused:
        names = sorted({_module_pattern(k[len(rules.prefix):]) for k in refused})
        raise CheckpointError(
            f"{src} would leave encoder weights at their initialisation ({len(refused)}): "
            f"{group_keys(refused, most=6)}{hint}; to accept a partial load, name them: partial={tuple(names[:12])}")


def _module_pattern(name: str) -> str:
    """``blocks.11.mlp.fc1.weight`` -> ``blocks.11.*``; ``norm.bias`` -> ``norm.*``; ``cls_token`` stays."""
    m = re.match(r"^(blocks\.\d+|patch_embed|norm)\.", name)
    return f"{m.group(1)}.*" if m else name


def load_encoder_into(
    model: nn.Module,
    encoder: Mapping[str, torch.Tensor],
    rules: LoadRules = LoadRules(),
    source: str = "<state dict>",
) -> LoadReport:
    """Load timm-named encoder weights into ``model`` by ``rules``; check every copied tensor took.

    Nothing is copied when the rules refuse the load (CheckpointError); keys left
    new keep the model's initialisation.
    """
    state, report = match_encoder(model.state_dict(), encoder, rules, source)
    model.load_state_dict(state, strict=False)
    after = model.state_dict()
    bad = [k for k, v in state.items() if not torch.equal(after[k], v.to(after[k].device))]
    if bad:
        raise CheckpointError(f"{source}: weights did not take for {group_keys(bad)}")
    return report
