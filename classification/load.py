"""Pretrained encoder weights into a classifier, with a report of what happened to every key.

Any checkpoint ``pretrain.weights`` understands works: this suite's pretraining
checkpoints (any method) and exported ``backbone.pth``, the reference DropPos, MAE
and AdPE files (``module.`` prefixes, pickled ``args`` ignored safely) and timm ViT
weights. As in MAE's ``main_finetune.py``, the only model weights allowed to stay
unloaded are the classifier ``head`` and, with average pooling, the ``fc_norm`` that
replaces the encoder's final ``norm`` (which is then skipped). Anything else that
does not fit (a different width, depth or patch size, nothing matching at all) is
an error naming the keys, never a silent partial load. A position table of another
grid is resized bicubically, its cls row kept.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from pretrain.weights.loading import LoadReport, LoadRules, load_encoder_into
from pretrain.weights import detect_format, encoder_state_dict, load_checkpoint_file, model_state

FINAL_NORM_SKIPPED = "final norm unused with global_pool='avg' (fc_norm after pooling replaces it, as in MAE)"


@dataclass
class PretrainedEncoder:
    """Timm-named encoder weights read from a file, with where they came from."""

    state: dict[str, torch.Tensor]
    source: str
    format: str
    dropped: list[str] = field(default_factory=list)  # non-encoder keys of the file (decoder, mask tokens ...)
    ignored_objects: list[str] = field(default_factory=list)  # pickled non-tensor objects (argparse.Namespace ...)
    method: str | None = None  # pretraining method when the file says (ours) or its format shows (reference files)


def read_pretrained(path: str | os.PathLike) -> PretrainedEncoder:
    """Read any supported checkpoint file and keep its timm-named encoder weights.

    Pickled non-tensor objects (the reference's argparse Namespace) are skipped safely;
    they are listed in the report rather than warned about.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ignored pickled objects.*")
        ckpt = load_checkpoint_file(path)
    full = model_state(ckpt, path)
    fmt = detect_format(full)
    enc = encoder_state_dict(full, path)
    inner = {k[len("encoder."):] if k.startswith("encoder.") else k for k in full}
    dropped = sorted(inner - set(enc))
    method = ckpt.get("method") if isinstance(ckpt.get("method"), str) else None
    if method is None and fmt in ("droppos", "mae", "adpe"):
        method = fmt
    return PretrainedEncoder(enc, str(path), fmt, dropped, list(ckpt.get("__ignored__", [])), method)


def expected_new_keys(model: nn.Module) -> set[str]:
    """Keys a pretrained encoder never provides: the head and, when pooling averages, fc_norm."""
    own = model.state_dict()
    prefixes = ["head."]
    if not isinstance(getattr(model, "fc_norm", nn.Identity()), nn.Identity):
        prefixes.append("fc_norm.")
    return {k for k in own if any(k.startswith(p) for p in prefixes)}


def classifier_rules(model: nn.Module) -> LoadRules:
    """Classifier names are timm names; every encoder key must load and only head / fc_norm stay new."""
    skip = {k: FINAL_NORM_SKIPPED for k in ("norm.weight", "norm.bias")}
    return LoadRules(
        skip=skip if isinstance(getattr(model, "norm", None), nn.Identity) else {},
        grid=tuple(model.patch_embed.grid_size),
        strict=True,
        allowed_new=frozenset(expected_new_keys(model)),
        hint="check model.size, model.patch_size",
    )


def load_pretrained(model: nn.Module, pretrained: PretrainedEncoder | str | os.PathLike) -> LoadReport:
    """Load encoder weights into ``model`` (a ViT classifier); raise CheckpointError on any mismatch.

    Returns the report; the model's head (and fc_norm) keep their fresh initialisation.
    """
    if not isinstance(pretrained, PretrainedEncoder):
        pretrained = read_pretrained(pretrained)
    report = load_encoder_into(model, pretrained.state, classifier_rules(model), pretrained.source)
    return replace(report, format=pretrained.format, method=pretrained.method,
                   dropped_from_file=pretrained.dropped, ignored_objects=pretrained.ignored_objects)
