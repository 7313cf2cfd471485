"""Register COCO-format instance data with Detectron2 by path, from inside a LazyConfig.

The real COCO uses Detectron2's own names (``coco_2017_train`` / ``coco_2017_val`` under
``$DETECTRON2_DATASETS/coco``). Any other COCO-layout folder, the suite's built-in
synthetic scenes included, is registered on demand: configs call these functions through
``LazyCall`` so the registration happens at instantiation, after command-line overrides of
the root, and the call returns the dataset name that Detectron2's loaders and
``COCOEvaluator`` look up.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from pretrain.data.validate import read_json_file, validate_coco_json
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

SPLIT_DIRS = {"train": "train2017", "val": "val2017"}


def register_coco_split(
    json_file: str | os.PathLike,
    image_root: str | os.PathLike,
    name: str | None = None,
    validate: bool = True,
) -> str:
    """Register one COCO instances json + image folder (idempotent); return its name.

    The default name is derived from the absolute json path, so two roots never clash.
    Category names, the id map and ``json_file`` (for ``COCOEvaluator``) come from the json.
    With ``validate`` the json is checked first (``pretrain.data.validate``): a broken
    annotation is a clear error naming the file and annotation, never a silent skip.
    """
    json_file, image_root = Path(json_file).resolve(), Path(image_root).resolve()
    if not json_file.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    if name is None:
        tag = hashlib.sha1(str(json_file).encode()).hexdigest()[:8]
        name = f"coco_{json_file.stem}_{tag}"
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if getattr(meta, "json_file", None) == str(json_file) and getattr(meta, "image_root", None) == str(image_root):
            return name
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    if validate:
        validate_coco_json(json_file, image_root)
    register_coco_instances(name, {}, str(json_file), str(image_root))
    return name


def builtin_coco(root: str | os.PathLike = "data/builtin", split: str = "train", make_if_missing: bool = True) -> str:
    """Register a split of the built-in synthetic COCO data under ``root/coco``; return its name.

    With ``make_if_missing`` the data is generated first (``pretrain.data.synthetic``,
    deterministic, about a minute) when its annotation file is absent.
    """
    coco = Path(root) / "coco"
    json_file = coco / "annotations" / f"instances_{SPLIT_DIRS[split]}.json"
    if not json_file.is_file() and make_if_missing:
        from pretrain.data.synthetic import make_builtin_dataset

        make_builtin_dataset(root, formats=("coco",))
    return register_coco_split(json_file, coco / SPLIT_DIRS[split], name=f"builtin_coco_{split}")


def coco_folder(root: str | os.PathLike, split: str = "train") -> str:
    """Register a split of any COCO-layout folder (``root/{train2017,val2017}``,
    ``root/annotations/instances_*.json``); return its name."""
    root = Path(root)
    return register_coco_split(root / "annotations" / f"instances_{SPLIT_DIRS[split]}.json", root / SPLIT_DIRS[split])


def dataset_categories(name: str) -> int | None:
    """Number of categories of a registered dataset: its metadata's ``thing_classes``, else its
    json's ``categories`` (None when neither is known)."""
    meta = MetadataCatalog.get(name)
    classes = getattr(meta, "thing_classes", None)
    if classes:
        return len(classes)
    json_file = getattr(meta, "json_file", None)
    if json_file and os.path.isfile(json_file):
        data = read_json_file(Path(json_file))  # a compressed or non-UTF-8 file: one clear DatasetError
        return len(data.get("categories", [])) if isinstance(data, dict) else None
    return None


def check_num_classes(cfg: Any) -> None:
    """Refuse a ``model.roi_heads.num_classes`` that differs from the training data's category count.

    Detectron2 trains categories past ``num_classes`` as background and exits 0 without a
    word (and more classes than categories leave heads that never see a target).
    """
    from detectron2.config import instantiate

    from pretrain.engine.config import ConfigError

    heads = cfg.model.get("roi_heads") if "model" in cfg else None
    configured = heads.get("num_classes") if heads is not None else None
    if configured is None or "train" not in cfg.dataloader:
        return
    names = cfg.dataloader.train.dataset.names
    names = instantiate(names)  # a LazyCall (builtin_coco, coco_folder) registers and returns the name
    for name in [names] if isinstance(names, str) else list(names):
        found = dataset_categories(name)
        if found is not None and found != int(configured):
            raise ConfigError(f"model.roi_heads.num_classes={configured} but the training data {name} has {found} "
                              f"categories: set model.roi_heads.num_classes={found}")
