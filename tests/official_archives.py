"""Tiny archives in the official layouts of ImageNet, COCO 2017 and ADE20K, for the preparation tests.

Class k is drawn in colour k (``jpeg`` / ``colour_label``), so a prepared tree's labels can be
checked from its pixels. Import through the tests folder on ``sys.path``.
"""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tools.prepare.imagenet_labels import imagenet_wnids

WNIDS = imagenet_wnids()[:3]  # n01440764 n01443537 n01484850
COLOURS = [(220, 40, 40), (40, 220, 40), (40, 40, 220), (220, 220, 40), (40, 220, 220), (220, 40, 220)]


def jpeg(label: int, size: tuple[int, int] = (24, 20), noise: int = 0, seed: int = 0) -> bytes:
    """A small JPEG whose colour says its class."""
    img = np.zeros((size[1], size[0], 3), np.uint8) + np.array(COLOURS[label % len(COLOURS)], np.uint8)
    if noise:
        img = (img.astype(int) + np.random.default_rng(seed).integers(-noise, noise + 1, img.shape)).clip(0, 255)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def colour_label(img) -> int:
    """The class whose colour the decoded image (uint8 [3, H, W] tensor) shows."""
    mean = np.asarray(img, dtype=float).reshape(3, -1).mean(1)
    return int(np.argmin([np.abs(mean - np.array(c)).sum() for c in COLOURS]))


def add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def tar_bytes(files: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            add(tf, name, data)
    return buf.getvalue()


def make_train_tar(path: Path, wnids=WNIDS, per_class: int = 4, noise: int = 0) -> dict[str, list[str]]:
    """ILSVRC2012_img_train.tar: one inner tar per class of ``<wnid>_<n>.JPEG``."""
    names = {}
    outer = {}
    for k, w in enumerate(wnids):
        files = {f"{w}_{100 + i}.JPEG": jpeg(k, noise=noise, seed=i) for i in range(per_class)}
        names[w] = sorted(files)
        outer[f"{w}.tar"] = tar_bytes(files)
    path.write_bytes(tar_bytes(outer))
    return names


def make_val(n: int = 6, wnids=WNIDS) -> tuple[dict[str, bytes], list[int]]:
    """Flat val images ILSVRC2012_val_XXXXXXXX.JPEG and their class indices (into ``wnids``)."""
    labels = [(i * 2 + 1) % len(wnids) for i in range(n)]
    return {f"ILSVRC2012_val_{i + 1:08d}.JPEG": jpeg(labels[i]) for i in range(n)}, labels


def make_devkit(path: Path, labels: list[int], wnids=WNIDS, extra_lines: int = 0) -> None:
    """ILSVRC2012_devkit_t12.tar.gz: data/meta.mat (leaf synsets + a parent) and the val ground truth."""
    import scipy.io as sio

    dt = [(f, "O") for f in ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "wordnet_height",
                             "num_train_images")]
    ids = [5, 2, 9]  # ILSVRC2012_IDs are not the sorted order: the ground truth must go through meta.mat
    rows = [(ids[k], w, f"class {k}, name {k}", "gloss", 0, 0, 4) for k, w in enumerate(wnids)]
    rows.append((1001, "n00001740", "entity", "gloss", 3, 10, 0))
    buf = io.BytesIO()
    sio.savemat(buf, {"synsets": np.array(rows, dtype=dt)})
    gt = "".join(f"{ids[c]}\n" for c in labels) + "".join(f"{ids[0]}\n" for _ in range(extra_lines))
    files = {"ILSVRC2012_devkit_t12/data/meta.mat": buf.getvalue(),
             "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": gt.encode()}
    path.write_bytes(tar_bytes(files, "w:gz"))


def coco_categories() -> list[dict]:
    """Detectron2's 80 COCO thing categories (read from builtin_meta.py's source, without importing Detectron2)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("detectron2")
    if spec is None:
        pytest.skip("needs Detectron2 (tools/install_detectron2.sh)")
    source = (Path(spec.submodule_search_locations[0]) / "data" / "datasets" / "builtin_meta.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COCO_CATEGORIES":
            cats = ast.literal_eval(node.value)
            return [{"id": c["id"], "name": c["name"], "supercategory": "thing"} for c in cats if c["isthing"]]
    raise AssertionError("COCO_CATEGORIES not found")


def make_coco(folder: Path) -> dict[str, list[tuple[str, int]]]:
    """train2017.zip, val2017.zip, annotations_trainval2017.zip; each image holds one box of one category."""
    cats = coco_categories()
    splits = {"train2017": [("person", 0), ("dog", 1), ("dog", 1)], "val2017": [("dog", 1), ("person", 0)]}
    ids = {c["name"]: c["id"] for c in cats}
    image_id, anns = 1, {}
    for split, items in splits.items():
        images, records = [], []
        with zipfile.ZipFile(folder / f"{split}.zip", "w") as z:
            for k, (name, colour) in enumerate(items):
                file = f"{image_id:012d}.jpg"
                z.writestr(f"{split}/{file}", jpeg(colour, size=(40, 30)))
                images.append({"id": image_id, "file_name": file, "width": 40, "height": 30})
                records.append({"id": 100 + image_id, "image_id": image_id, "category_id": ids[name],
                                "bbox": [2.0, 3.0, 20.0 + k, 10.0], "area": 200.0, "iscrowd": 0,
                                "segmentation": [[2, 3, 22 + k, 3, 22 + k, 13, 2, 13]]})
                image_id += 1
        anns[split] = {"images": images, "annotations": records, "categories": cats}
    with zipfile.ZipFile(folder / "annotations_trainval2017.zip", "w") as z:
        for split, data in anns.items():
            z.writestr(f"annotations/instances_{split}.json", json.dumps(data))
            z.writestr(f"annotations/captions_{split}.json", json.dumps({"images": [], "annotations": []}))
    return splits


def make_ade(path: Path, with_annotations: bool = True) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    labels: dict[str, list[np.ndarray]] = {}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("ADEChallengeData2016/objectInfo150.txt", "Idx\tRatio\tTrain\tVal\tName\n")
        for split, prefix, n in (("training", "ADE_train", 3), ("validation", "ADE_val", 2)):
            labels[split] = []
            for i in range(n):
                stem = f"{prefix}_{i + 1:08d}"
                z.writestr(f"ADEChallengeData2016/images/{split}/{stem}.jpg", jpeg(i, size=(32, 24)))
                lab = rng.integers(0, 151, (24, 32)).astype(np.uint8)
                labels[split].append(lab)
                buf = io.BytesIO()
                Image.fromarray(lab).save(buf, "PNG")
                if with_annotations:
                    z.writestr(f"ADEChallengeData2016/annotations/{split}/{stem}.png", buf.getvalue())
    return labels
