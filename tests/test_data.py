"""Built-in dataset generator, image-folder dataset and transforms (pretrain/data)."""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from pretrain.data import (
    ADE_CLASSES,
    BUILTIN_CLASSES,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    BadImageError,
    ImageFolderDataset,
    build_eval_transform,
    build_multicrop_transform,
    build_pretrain_transform,
    make_builtin_dataset,
    normalize_uint8,
)
from pretrain.data.decode import EncodedImage, jpeg_size, read_bytes
from pretrain.data.builtin_config import BuiltinConfig
from pretrain.data.polygons import polygon_area, polygon_mask
from pretrain.data.scenes import render_scene
from pretrain.data.synthetic import read_manifest
from pretrain.data.write_coco import coco_scene
from pretrain.data.write_imagefolder import imagefolder_scene
from pretrain.data.transforms import decode_reduced, sample_resized_crop

SMALL = dict(  # a few images per format, one line each
    num_classes=3,
    imagefolder_size=64, imagefolder_train_per_class=4, imagefolder_val_per_class=2,
    coco_train=6, coco_val=3, coco_size=(96, 128),
    ade_train=5, ade_val=2, ade_size=(64, 96),
)
BICUBIC = T.InterpolationMode.BICUBIC


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def builtin(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("builtin")
    paths = make_builtin_dataset(root, seed=0, **SMALL)
    paths["root"] = root
    return paths


def save_jpeg(path: Path, array: np.ndarray, quality: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=quality)
    return path


def textured_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Gradients + a fine pattern + pixel noise: tells resampling filters apart."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * yy / h, 255 * xx / w, 128 + 60 * np.sin(xx / 3) * np.cos(yy / 4)], -1)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


def grey_level_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of two normalised images, in 0..255 grey levels."""
    return (a - b).abs() * torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1) * 255


def assert_same_pixels(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Same resampling as PIL's bicubic up to uint8 rounding (a rare pixel off by more)."""
    d = grey_level_diff(ours, ref)
    assert d.mean() < 0.05 and (d > 1.01).float().mean() < 0.01 and d.max() < 10


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB test image (gradients + low-frequency noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = np.asarray(Image.fromarray(rng.standard_normal((8, 8)).astype(np.float32)).resize((w, h), Image.BICUBIC))
    img = np.stack([255 * yy / h, 255 * xx / w, 128 + 40 * noise], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- generator


def test_generator_is_deterministic_and_seeded(builtin, tmp_path):
    again = make_builtin_dataset(tmp_path / "a", seed=0, **SMALL)
    digest0 = tree_digest(builtin["root"])
    digest_again = tree_digest(tmp_path / "a")
    assert digest0 == digest_again and len(digest0) == 3 * 6 + 9 + 2 + 2 * 7 + 1
    make_builtin_dataset(tmp_path / "b", seed=1, **SMALL)
    digest1 = tree_digest(tmp_path / "b")
    assert digest1.keys() == digest0.keys()
    changed = [k for k in digest0 if digest0[k] != digest1[k] and not k.endswith("manifest.json")]
    assert len(changed) == len(digest0) - 1  # every data file differs
    assert set(again) == {"imagefolder", "coco", "ade20k"}


def test_generator_is_idempotent_and_rebuilds_on_change(tmp_path):
    small = dict(SMALL, coco_train=2, coco_val=1)
    make_builtin_dataset(tmp_path, seed=3, formats=("coco",), **small)
    image = tmp_path / "coco" / "train2017" / "000000000001.jpg"
    stamp = image.stat().st_mtime_ns
    make_builtin_dataset(tmp_path, seed=3, formats=("coco",), **small)
    assert image.stat().st_mtime_ns == stamp  # kept
    manifest = read_manifest(tmp_path)
    assert manifest["formats"]["coco"]["seed"] == 3 and manifest["formats"]["coco"]["counts"]["train"] == 2
    make_builtin_dataset(tmp_path, seed=3, formats=("coco",), **dict(small, coco_train=1))
    assert len(list((tmp_path / "coco" / "train2017").iterdir())) == 1  # rebuilt from scratch
    with pytest.raises(ValueError, match="unknown formats"):
        make_builtin_dataset(tmp_path, formats=("voc",))
    with pytest.raises(TypeError):
        make_builtin_dataset(tmp_path, coco_images=3)


def test_imagefolder_layout_and_main_object(builtin):
    root = builtin["imagefolder"]
    cfg = BuiltinConfig(**SMALL)
    for split, n in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(BUILTIN_CLASSES[:3])
        for label, name in enumerate(BUILTIN_CLASSES[:3]):
            files = sorted((root / split / name).glob("*.JPEG"))
            assert len(files) == n
            for k, f in enumerate(files):
                assert Image.open(f).size == (64, 64)
                scene = imagefolder_scene(0, split, label * n + k, label, cfg)
                main = scene.objects[0]
                assert main.label == label  # the class is the main object's class...
                assert all(o.area < 0.6 * main.area for o in scene.objects[1:])  # ...and it is the largest


def test_coco_annotations_valid(builtin):
    coco_api = pytest.importorskip("pycocotools.coco")
    root = builtin["coco"]
    ids = set()
    cfg = BuiltinConfig(**SMALL)
    for split, n in (("train", 6), ("val", 3)):
        path = root / "annotations" / f"instances_{split}2017.json"
        data = json.loads(path.read_text())
        assert [c["id"] for c in data["categories"]] == [1, 2, 3]
        assert [c["name"] for c in data["categories"]] == list(BUILTIN_CLASSES[:3])
        coco = coco_api.COCO(str(path))
        assert len(coco.getImgIds()) == n and coco.getAnnIds()
        for index, img in enumerate(coco.loadImgs(sorted(coco.getImgIds()))):
            ids.add(img["id"])
            with Image.open(root / f"{split}2017" / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"])
            scene = coco_scene(0, split, index, cfg)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert len(anns) == len(scene.objects) >= 1
            for ann, obj in zip(anns, scene.objects):
                x, y, w, h = ann["bbox"]
                assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"] and w > 4 and h > 4
                assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 3
                poly = np.array(ann["segmentation"][0]).reshape(-1, 2)
                assert polygon_area(poly) == pytest.approx(ann["area"], rel=0.05)
                mask = coco.annToMask(ann).astype(bool)  # pycocotools' rasterisation of our polygon
                assert mask.sum() == pytest.approx(ann["area"], rel=0.05)
                iou = (mask & obj.mask).sum() / (mask | obj.mask).sum()  # outline == drawn pixels
                assert iou > 0.93
                xs, ys = np.nonzero(mask.any(0))[0], np.nonzero(mask.any(1))[0]
                assert abs(xs[0] - x) <= 1 and abs(ys[-1] + 1 - (y + h)) <= 1
    assert len(ids) == 9  # image ids unique across splits


def test_ade20k_labels(builtin):
    root = builtin["ade20k"]
    num = len(ADE_CLASSES)
    assert num == 12 and ADE_CLASSES[:2] == ("sky", "ground")
    for sub, prefix, n in (("training", "ADE_train", 5), ("validation", "ADE_val", 2)):
        images = sorted((root / "images" / sub).glob("*.jpg"))
        assert [p.stem for p in images] == [f"{prefix}_{i:08d}" for i in range(1, n + 1)]
        for p in images:
            ann = Image.open(root / "annotations" / sub / f"{p.stem}.png")
            assert ann.mode == "L" and ann.size == Image.open(p).size
            lab = np.asarray(ann)
            assert lab.max() <= num and (lab == 0).mean() < 0.1
            assert (lab[0] == 1).mean() > 0.5 and (lab[-1] == 2).mean() > 0.5  # sky above ground
            assert set(np.unique(lab)) - {0, 1, 2} <= set(range(3, 3 + 3))  # only the 3 object classes


def test_scenes_have_spatial_structure():
    rng = np.random.default_rng(0)
    imgs = np.stack([render_scene(rng, 64, 64, [(int(rng.integers(10)), 12.0)]).image for _ in range(40)]).astype(float)
    top, bottom = imgs[:, :6].mean((0, 1, 2)), imgs[:, -6:].mean((0, 1, 2))
    assert top[2] > top[0] + 50  # blue sky at the top
    assert np.abs(top - bottom).max() > 40 and bottom[2] < bottom[0]  # earthy ground below
    # A patch's row is predictable from its mean colour: nearest-centroid over 4 row bands.
    patches = imgs.reshape(40, 8, 8, 8, 8, 3).mean((2, 4))  # [img, row, col, rgb] of 8x8 patches
    band = np.repeat(np.arange(4), 2)  # row -> band
    centroids = np.stack([patches[:20, band == b].reshape(-1, 3).mean(0) for b in range(4)])
    test = patches[20:]  # held-out images
    dist = ((test[..., None, :] - centroids) ** 2).sum(-1)  # [img, row, col, band]
    accuracy = (dist.argmin(-1) == band[None, :, None]).mean()
    assert accuracy > 0.5  # chance is 0.25


def test_polygon_mask_matches_area():
    square = np.array([[2.0, 3.0], [12.0, 3.0], [12.0, 9.0], [2.0, 9.0]])
    mask = polygon_mask(square, 16, 16)
    assert mask.sum() == 60 == polygon_area(square) and mask[3:9, 2:12].all()
    star = render_scene(np.random.default_rng(1), 96, 96, [(3, 30.0)]).objects[0]
    assert star.area == pytest.approx(polygon_area(star.polygon), rel=0.03)


def test_cli_prints_counts(tmp_path, capsys):
    from tools.prepare_data import get_args_parser, main

    argv = ["builtin", "--out", str(tmp_path), "--seed", "2", "--formats", "imagefolder", "--no-progress",
            "--num-classes", "2", "--imagefolder-train-per-class", "2", "--imagefolder-val-per-class", "1"]
    main(get_args_parser().parse_args(argv))
    out = capsys.readouterr().out
    assert "imagefolder  wrote" in out and "train=4, val=2" in out
    main(get_args_parser().parse_args(argv))
    assert "imagefolder  kept" in capsys.readouterr().out


# ----------------------------------------------------------------------------- dataset


def test_dataset_matches_torchvision_imagefolder(builtin):
    root = builtin["imagefolder"]
    ours = ImageFolderDataset(root, "train")
    ref = torchvision.datasets.ImageFolder(str(root / "train"))
    assert ours.classes == ref.classes == list(BUILTIN_CLASSES[:3])
    assert ours.class_to_idx == ref.class_to_idx
    assert [(str(Path(p)), t) for p, t in ours.samples] == [(str(Path(p)), t) for p, t in ref.samples]
    img, target = ours[5]
    assert img.dtype == torch.uint8 and img.shape == (3, 64, 64) and target == ref.samples[5][1]
    ref_img = torch.from_numpy(np.array(ref[5][0])).permute(2, 0, 1)
    assert torch.equal(img, ref_img)  # same libjpeg decode
    # A foreign (PIL) transform gets PIL images; the suite's transforms get encoded bytes.
    pil_ds = ImageFolderDataset(root, "val", transform=T.ToTensor())
    assert pil_ds.input_kind == "pil" and pil_ds[0][0].dtype == torch.float32
    enc_ds = ImageFolderDataset(root, "val", transform=build_pretrain_transform(32))
    assert enc_ds.input_kind == "encoded" and enc_ds[0][0].shape == (3, 32, 32)


def test_dataset_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        ImageFolderDataset(tmp_path / "nope", "train")
    (tmp_path / "ds" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "ds" / "train")):
        ImageFolderDataset(tmp_path / "ds", "train")
    with pytest.raises(FileNotFoundError, match=f"no class folders found in {tmp_path / 'ds' / 'val'}"):
        ImageFolderDataset(tmp_path / "ds", "val")
    (tmp_path / "ds" / "val" / "cat").mkdir()
    (tmp_path / "ds" / "val" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path / "ds", "val")
    save_jpeg(tmp_path / "ds" / "val" / "dog" / "a.JPEG", smooth_image(20, 20))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "ds" / "val" / "cat")):
        ImageFolderDataset(tmp_path / "ds", "val")
    ds = ImageFolderDataset(tmp_path / "ds", "val", allow_empty=True)
    assert ds.classes == ["cat", "dog"] and ds.samples == [(str(tmp_path / "ds/val/dog/a.JPEG"), 1)]


@pytest.fixture()
def folder_with_bad_files(tmp_path) -> Path:
    root = tmp_path / "bad"
    for i in range(4):
        save_jpeg(root / "a" / f"{i}.JPEG", smooth_image(40, 48, i))
    good = (root / "a" / "0.JPEG").read_bytes()
    (root / "a" / "1.JPEG").write_bytes(good[: len(good) // 2])  # truncated JPEG
    (root / "a" / "3.JPEG").write_bytes(b"definitely not an image")
    return root


@pytest.mark.parametrize(
    "transform", [None, T.ToTensor(), build_pretrain_transform(16)], ids=["tensor", "pil", "encoded"]
)
def test_bad_images_name_the_file(folder_with_bad_files, transform):
    ds = ImageFolderDataset(folder_with_bad_files, transform=transform)
    assert ds[0][0].shape[0] == 3
    for i, name in ((1, "1.JPEG"), (3, "3.JPEG")):
        with pytest.raises(BadImageError, match=f"cannot read image file .*{name}"):
            ds[i]


def test_skip_bad_counts_and_warns_once(folder_with_bad_files):
    ds = ImageFolderDataset(folder_with_bad_files, transform=build_eval_transform(16), skip_bad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = [ds[i][0] for i in range(len(ds))]
    assert all(x.shape == (3, 16, 16) for x in out)
    assert torch.equal(out[1], out[2]) and torch.equal(out[3], out[0])  # replaced by the next readable one
    assert ds.num_skipped == 2 and {Path(p).name for p in ds.bad_files} == {"1.JPEG", "3.JPEG"}
    assert len([w for w in caught if "skipping bad image" in str(w.message)]) == 1
    # Counts from DataLoader workers reach the main process.
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    assert sum(len(x) for x, _ in loader) == 4
    assert ds.num_skipped == 4


def test_decode_paths_agree(tmp_path):
    arr = smooth_image(60, 90)
    path = save_jpeg(tmp_path / "x.jpg", arr)
    data = read_bytes(path)
    assert jpeg_size(data) == (60, 90)
    enc = EncodedImage(data, path)
    full = enc.decode(1)
    assert full.shape == (3, 60, 90) and full.dtype == torch.uint8
    assert torch.equal(full, torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1))
    half = enc.decode(2)  # libjpeg DCT scaling
    assert half.shape == (3, 30, 45)
    down = torch.nn.functional.avg_pool2d(full[None].float(), 2)[0]
    assert (half.float() - down).abs().mean() < 2.0
    Image.fromarray(arr).save(tmp_path / "x.png")
    png = EncodedImage(read_bytes(tmp_path / "x.png"), tmp_path / "x.png")
    assert png.size == (60, 90) and png.decode(4).shape == (3, 60, 90)  # non-JPEG: full decode


# ----------------------------------------------------------------------------- transforms


def test_sample_resized_crop_matches_torchvision():
    rrc = T.RandomResizedCrop(8, scale=(0.2, 1.0))
    for h, w in ((375, 500), (64, 64), (10, 300)):
        torch.manual_seed(h)
        ours = [sample_resized_crop(h, w, (0.2, 1.0), (3 / 4, 4 / 3)) for _ in range(20)]
        torch.manual_seed(h)
        ref = [rrc.get_params(torch.empty(3, h, w), [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(20)]
        assert ours == [tuple(r) for r in ref]


@pytest.mark.parametrize("kind", ["tensor", "pil", "encoded"])
def test_pretrain_transform_matches_torchvision_pipeline(tmp_path, kind):
    arr = textured_image(72, 96)
    path = save_jpeg(tmp_path / "x.jpg", arr)
    ref_t = T.Compose([T.RandomResizedCrop(48, scale=(0.2, 1.0), interpolation=BICUBIC), T.RandomHorizontalFlip(),
                       T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
    ours_t = build_pretrain_transform(48)
    pil = Image.open(path).convert("RGB")
    inp = {"tensor": torch.from_numpy(np.array(pil)).permute(2, 0, 1), "pil": pil,
           "encoded": EncodedImage(read_bytes(path), path)}[kind]
    for seed in range(6):
        torch.manual_seed(seed)
        ref = ref_t(pil)
        torch.manual_seed(seed)
        ours = ours_t(inp)
        assert ours.shape == ref.shape == (3, 48, 48) and ours.dtype == torch.float32 and ours.is_contiguous()
        assert_same_pixels(ours, ref)
    raw = build_pretrain_transform(48, normalize=False)
    torch.manual_seed(0)
    x = raw(inp)
    torch.manual_seed(0)
    assert x.dtype == torch.uint8 and torch.allclose(normalize_uint8(x[None])[0], ours_t(inp), atol=1e-5)


def test_reduced_decode_keeps_statistics(tmp_path):
    arr = smooth_image(512, 640)
    path = save_jpeg(tmp_path / "big.jpg", arr)
    enc = EncodedImage(read_bytes(path), path)
    x, boxes = decode_reduced(enc, [(0, 0, 512, 640), (100, 64, 300, 256)], (32, 32))
    assert x.shape == (3, 64, 80) and boxes[1] == (12, 8, 38, 32)  # 1/8 scale
    x, _ = decode_reduced(enc, [(0, 0, 100, 100)], (32, 32))
    assert x.shape == (3, 256, 320)  # a 100 px box allows only 1/2
    fast, slow = build_pretrain_transform(32), build_pretrain_transform(32, reduced_decode=False)
    fast_out, slow_out = [], []
    for seed in range(16):
        torch.manual_seed(seed)
        fast_out.append(fast(enc))
        torch.manual_seed(seed)
        slow_out.append(slow(enc))
        assert grey_level_diff(fast_out[-1], slow_out[-1]).mean() < 3.0  # same crop up to half a 1/8-scale pixel
    a, b = torch.stack(fast_out), torch.stack(slow_out)
    assert a.mean() == pytest.approx(b.mean().item(), abs=0.01) and a.std() == pytest.approx(b.std().item(), rel=0.01)
    ev_fast, ev_slow = build_eval_transform(64)(enc), build_eval_transform(64, reduced_decode=False)(enc)
    assert ev_fast.shape == ev_slow.shape == (3, 64, 64) and grey_level_diff(ev_fast, ev_slow).mean() < 2.0


def test_multicrop_transform(tmp_path):
    path = save_jpeg(tmp_path / "x.jpg", smooth_image(150, 200))
    enc = EncodedImage(read_bytes(path), path)
    t = build_multicrop_transform()
    assert t.num_crops == 4 and t.size == 112 and t.scale == (0.08, 1.0)
    torch.manual_seed(0)
    out = t(enc)
    assert out.shape == (4, 3, 112, 112) and out.dtype == torch.float32
    assert not torch.allclose(out[0], out[1])  # independent crops
    small = build_multicrop_transform(num_crops=2, crop_size=24, normalize=False)(Image.open(path))
    assert small.shape == (2, 3, 24, 24) and small.dtype == torch.uint8


@pytest.mark.parametrize("hw", [(72, 96), (100, 60), (30, 40)])
def test_eval_transform_matches_torchvision(hw):
    pil = Image.fromarray(textured_image(*hw))
    ref = T.Compose([T.Resize(int(48 / 0.875), interpolation=BICUBIC), T.CenterCrop(48), T.ToTensor(),
                     T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])(pil)
    ours = build_eval_transform(48)(pil)
    assert ours.shape == ref.shape == (3, 48, 48)
    assert_same_pixels(ours, ref)


def test_normalize_constants():
    assert IMAGENET_DEFAULT_MEAN == (0.485, 0.456, 0.406) and IMAGENET_DEFAULT_STD == (0.229, 0.224, 0.225)
    x = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8)
    ref = T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(x.float() / 255)
    assert torch.allclose(normalize_uint8(x), ref, atol=1e-5)
    grey = build_eval_transform(8)(torch.full((1, 10, 10), 128, dtype=torch.uint8))
    assert grey.shape == (3, 8, 8)
    with pytest.raises(TypeError):
        build_eval_transform(8)(torch.rand(3, 10, 10))
