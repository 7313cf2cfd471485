"""A fine-tuned classifier back from its checkpoint: the ViT with its head, its classes and eval transform.

The robustness evaluations need the whole classifier, head included, as
``classification.finetune`` saves it (``best.pth`` in its run folder, ``{"model": state}``).
The architecture is read off the weights (width and depth -> the ViT size, patch size,
position grid -> input size, ``fc_norm`` -> average pooling, ``*.attn.rpe_k.*`` -> relative
position attention) and the weights load strictly. ``config.yaml`` beside the checkpoint
(the fine-tuning run's) gives the input size, ``data.crop_pct`` and the class folders of its
training split, i.e. what output ``i`` means; without it a 1000-way head is taken as
ImageNet-1K (timm's class list), anything else needs ``classes``.
A file without a classification head (a pretrained backbone) is refused in one line that
names the stage which makes a classifier.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import OmegaConf

from pretrain.models.vit import VIT_SIZES, VisionTransformer
from pretrain.weights import CheckpointError, load_checkpoint_file, model_state

from .model import build_classifier, needs_rel_pos

BEST = "best.pth"
NO_HEAD = ("has no classification head (no head.weight): robustness needs a fine-tuned classifier; "
           "the finetune stage (python -m classification.finetune, the end-to-end run's 'finetune') writes one "
           "as best.pth in its run folder")


@dataclass
class FinetunedClassifier:
    """The classifier in eval mode and what its outputs and inputs are."""

    model: VisionTransformer
    classes: list[str]
    classes_from: str
    img_size: int
    crop_pct: float
    arch: str
    path: str
    global_pool: str
    notes: list[str] = field(default_factory=list)


def resolve_path(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a fine-tuning run folder (then its best.pth)."""
    path = Path(path)
    if path.is_dir():
        if not (path / BEST).is_file():
            raise CheckpointError(f"{path} is a folder without {BEST}: name the fine-tuned checkpoint file")
        return path / BEST
    return path


def size_name(dim: int, depth: int) -> str:
    """The ViT size of a width and depth (tiny .. huge), or an error naming them."""
    for name, spec in VIT_SIZES.items():
        if spec["embed_dim"] == dim and spec["depth"] == depth:
            return name
    known = ", ".join(f"{n} {spec['embed_dim']}x{spec['depth']}" for n, spec in VIT_SIZES.items())
    raise CheckpointError(f"no standard ViT size has width {dim} and depth {depth} (known: {known})")


def read_classes(spec: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line, output order) or a folder (its sorted class folders)."""
    spec = Path(spec)
    if spec.is_dir():
        names = sorted(e.name for e in os.scandir(spec) if e.is_dir() and not e.name.startswith("."))
    elif spec.is_file():
        names = [line.strip() for line in spec.read_text().splitlines() if line.strip()]
    else:
        raise FileNotFoundError(f"class list not found: {spec} (a text file of class names or an ImageFolder split)")
    if not names:
        raise ValueError(f"{spec} names no classes")
    return names


def _run_config(path: Path) -> dict:
    cfg_path = path.parent / "config.yaml"
    if not cfg_path.is_file():
        return {}
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    except Exception:  # noqa: BLE001 - an unreadable config only loses the defaults it would give
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _classes(num_classes: int, classes: str | os.PathLike | None, cfg: dict, path: Path) -> tuple[list[str], str]:
    if classes is not None:
        names, source = read_classes(classes), str(classes)
    else:
        data = cfg.get("data") or {}
        split = Path(str(data.get("path", ""))) / str(data.get("train_split", "train"))
        if data.get("path") and split.is_dir():
            names, source = read_classes(split), f"class folders of {split} (the fine-tuning data)"
        elif num_classes == 1000:
            from .imagenet_variants import imagenet_classes

            names, source = imagenet_classes(), "ImageNet-1K (timm's imagenet_synsets.txt)"
        else:
            raise CheckpointError(f"{path}: a {num_classes}-way head whose classes are unknown (no config.yaml with "
                                  "the fine-tuning data beside it): pass the class list")
    if len(names) != num_classes:
        raise CheckpointError(f"{path}: the head has {num_classes} outputs but {source} names {len(names)} classes")
    return names, source


def load_finetuned(
    path: str | os.PathLike,
    classes: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    img_size: int | None = None,
    crop_pct: float | None = None,
) -> FinetunedClassifier:
    """Build and strictly load the fine-tuned classifier saved at ``path`` (file or run folder)."""
    path = resolve_path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pickled non-tensor objects are skipped safely
        ckpt = load_checkpoint_file(path)
    state = model_state(ckpt, path)
    if "head.weight" not in state:
        raise CheckpointError(f"{path} {NO_HEAD}")
    if "patch_embed.proj.weight" not in state or "pos_embed" not in state:
        raise CheckpointError(f"{path}: no ViT weights (patch_embed.proj.weight, pos_embed) next to the head")
    num_classes, dim = (int(x) for x in state["head.weight"].shape)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    rows = int(state["pos_embed"].shape[1]) - 1
    side = int(round(rows ** 0.5))
    if side * side != rows:
        raise CheckpointError(f"{path}: pos_embed holds {rows} patch rows, not a square grid")
    cfg = _run_config(path)
    model_cfg, data_cfg = cfg.get("model") or {}, cfg.get("data") or {}
    trained_size = side * patch
    img = int(img_size or model_cfg.get("img_size") or trained_size)
    if img != trained_size:
        raise CheckpointError(f"{path}: fine-tuned at {trained_size} px ({side}x{side} patches of {patch}); "
                              f"evaluate it at that size, not {img}")
    pool = "avg" if "fc_norm.weight" in state else "token"
    size = size_name(dim, depth)
    model = build_classifier(size, num_classes=num_classes, img_size=img, patch_size=patch, global_pool=pool,
                             rel_pos=needs_rel_pos(state))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: the weights do not fit vit_{size}_patch{patch}_{img}: "
                              f"{' '.join(first[1:3]) if len(first) > 1 else first[0]}") from None
    model.requires_grad_(False).eval().to(device)
    names, source = _classes(num_classes, classes, cfg, path)
    notes = [] if cfg else ["no config.yaml beside the checkpoint: crop_pct 0.875 unless given"]
    return FinetunedClassifier(
        model=model, classes=names, classes_from=source, img_size=img,
        crop_pct=float(crop_pct or data_cfg.get("crop_pct") or 0.875), arch=f"vit_{size}_patch{patch}_{img}",
        path=str(path), global_pool=pool, notes=notes,
    )
