"""RandAugment's geometric ops on OpenCV against timm's PIL ops: same geometry and fill."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from classification import opencv_geometry as og
from classification.transforms import FinetuneTransform, timm_train_transform

BILINEAR, BICUBIC = Image.Resampling.BILINEAR, Image.Resampling.BICUBIC
FILL = (1, 2, 3)  # no pixel of the test image has it: marks exactly the filled pixels

CASES = [("ShearX", 0.3), ("ShearX", -0.17), ("ShearY", 0.25), ("TranslateXRel", 0.41), ("TranslateYRel", -0.33),
         ("TranslateX", 17.3), ("TranslateY", -9.6), ("Rotate", 27.0), ("Rotate", -13.5), ("Rotate", 180.0),
         ("Rotate", 0.0)]


@pytest.fixture(scope="module")
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    small = rng.integers(60, 200, (12, 10, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((80, 96), Image.Resampling.BICUBIC)  # smooth, not square, in [~40, ~220]


@pytest.mark.parametrize("name,arg", CASES)
@pytest.mark.parametrize("resample", [BILINEAR, BICUBIC])
def test_op_matches_pil(image, name, arg, resample):
    from timm.data import auto_augment as aa

    pil = np.asarray(aa.NAME_TO_OP[name](image, arg, fillcolor=FILL, resample=resample)).astype(int)
    ours_img = og._OPS[name](image, arg, fillcolor=FILL, resample=resample)
    assert ours_img.size == image.size and ours_img.mode == "RGB"
    ours = np.asarray(ours_img).astype(int)
    filled = (pil == FILL).all(-1)
    np.testing.assert_array_equal((ours == FILL).all(-1), filled)  # PIL's fill rule, pixel for pixel
    if arg not in (0.0, 180.0):
        assert filled.any()
    diff = np.abs(ours - pil)[~filled]
    if resample == BILINEAR:  # same filter and truncation; OpenCV's 5-bit weights move a few pixels by 1
        assert diff.max() <= 1 and diff.mean() < 0.15
    else:  # OpenCV's cubic kernel (a = -0.75) vs PIL's affine bicubic (a = -1)
        assert diff.max() <= 3 and diff.mean() < 0.6


def test_random_resample_choice_uses_python_random(image):
    random.seed(5)
    a = og.shear_x(image, 0.2, fillcolor=FILL, resample=(BILINEAR, BICUBIC))
    random.seed(5)
    choice = random.choice((BILINEAR, BICUBIC))
    b = og.shear_x(image, 0.2, fillcolor=FILL, resample=choice)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="resample"):
        og.affine(image, (1, 0, 0, 0, 1, 0), resample=Image.Resampling.LANCZOS)


def test_swaps_only_the_geometric_ops_of_one_instance():
    from timm.data import auto_augment as aa

    _, secondary, _ = timm_train_transform(64, separate=True)
    table = dict(aa.NAME_TO_OP)
    ra = secondary.transforms[0]
    assert og.use_opencv_geometry(ra) == 5  # rand-*-inc1: Rotate, ShearX, ShearY, TranslateXRel, TranslateYRel
    assert {op.name for op in ra.ops if op.aug_fn.__module__ == og.__name__} == {
        "Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}
    assert aa.NAME_TO_OP == table  # timm's own table (and its pipeline) untouched


def test_finetune_transform_opencv_draws_what_pil_draws(small_builtin):
    """Same seed, both geometries: the same ops and magnitudes are drawn (outputs differ by the filter only)."""
    from pretrain.data.imagefolder import ImageFolderDataset

    root = small_builtin / "imagenet"
    kw = dict(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.0, normalize=False)
    outs = {}
    for geometry in ("opencv", "pil"):
        ds = ImageFolderDataset(root, "train", FinetuneTransform(64, geometry=geometry, **kw))
        random.seed(11)
        np.random.seed(11)  # timm draws the ops with numpy, their magnitudes with random
        torch.manual_seed(11)
        outs[geometry] = torch.stack([ds[i % len(ds)][0] for i in range(40)]).float()
    per_sample = (outs["opencv"] - outs["pil"]).abs().mean((1, 2, 3))
    assert per_sample.max() < 2.0  # a different draw would move a sample by tens of levels
    assert (per_sample > 0).any()  # and some samples did go through a geometric op
    with pytest.raises(ValueError, match="geometry"):
        FinetuneTransform(64, geometry="skimage")


def test_workers_run_opencv_on_one_thread(small_builtin):
    """OpenCV would start a thread per core in every DataLoader worker; the loaders stop that."""
    import cv2

    from classification.data import train_loader

    before = cv2.getNumThreads()
    try:
        og.one_opencv_thread(0)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
    ds = [(torch.zeros(3), 0)] * 4
    loader, _ = train_loader(ds, batch_size=2, seed=0, workers=0, device=torch.device("cpu"))
    assert loader.worker_init_fn is og.one_opencv_thread


def test_grey_images_and_bad_modes(image):
    from timm.data import auto_augment as aa

    grey = image.convert("L")
    pil = np.asarray(aa.NAME_TO_OP["Rotate"](grey, 20.0, fillcolor=7, resample=BILINEAR)).astype(int)
    ours = og.rotate(grey, 20.0, fillcolor=7, resample=BILINEAR)
    assert ours.mode == "L" and np.abs(np.asarray(ours).astype(int) - pil).max() <= 1
    with pytest.raises(ValueError, match="RGBA"):
        og.shear_x(image.convert("RGBA"), 0.1, fillcolor=FILL)


def test_config_key_picks_the_geometry():
    from classification.data import build_train_transform
    from classification.finetune import load_finetune_config

    assert build_train_transform(load_finetune_config(None, ["model.img_size=32"])).geometry == "opencv"
    assert build_train_transform(load_finetune_config(None, ["model.img_size=32", "aug.geometry=pil"])).geometry == "pil"
    with pytest.raises(ValueError, match="aug.geometry"):
        build_train_transform(load_finetune_config(None, ["aug.geometry=skimage"]))
