"""The fine-tuning input pipeline: timm's recipe with the suite's crop and normalisation."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from classification.transforms import FinetuneTransform, patch_timm_posterize, timm_train_transform
from pretrain.data.imagefolder import ImageFolderDataset


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_posterize_to_zero_bits_is_black_not_an_error():
    from timm.data import auto_augment as aa

    patch_timm_posterize()
    img = Image.new("RGB", (8, 8), (200, 100, 50))
    assert aa.NAME_TO_OP["PosterizeIncreasing"](img, 0).getpixel((0, 0)) == (0, 0, 0)
    assert aa.NAME_TO_OP["PosterizeIncreasing"](img, 4).getpixel((0, 0)) == (192, 96, 48)


def test_uint8_samples_finished_on_device_equal_worker_finished(small_builtin):
    """normalize=False + device_finish gives the same tensors as finishing in the worker."""
    kw = dict(auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.0)
    worker = ImageFolderDataset(small_builtin / "imagenet", "train", FinetuneTransform(64, **kw))
    raw_tf = FinetuneTransform(64, normalize=False, **kw)
    raw = ImageFolderDataset(small_builtin / "imagenet", "train", raw_tf)
    seed_all(3)
    a = torch.stack([worker[i][0] for i in range(6)])
    seed_all(3)
    u8 = torch.stack([raw[i][0] for i in range(6)])
    assert u8.dtype == torch.uint8 and u8.shape == (6, 3, 64, 64)
    torch.testing.assert_close(raw_tf.device_finish("cpu")(u8), a)


def test_device_erasing_erases_with_noise():
    tf = FinetuneTransform(32, auto_augment=None, re_prob=1.0, re_mode="pixel", normalize=False)
    seed_all(0)
    x = torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)
    out = tf.device_finish("cpu")(x)
    plain = FinetuneTransform(32, auto_augment=None, re_prob=0.0, normalize=False).device_finish("cpu")(x)
    changed = (out != plain).any(1)  # [4, 32, 32]
    assert all(changed[i].any() for i in range(4))  # every image got an erased box
    assert out[~changed.unsqueeze(1).expand_as(out)].eq(plain[~changed.unsqueeze(1).expand_as(out)]).all()
    with pytest.raises(TypeError, match="uint8"):
        tf.device_finish("cpu")(x.float())


def test_output_statistics_match_timm(small_builtin):
    """Same recipe, two implementations: per-channel mean / std of many samples agree."""
    root = small_builtin / "imagenet"
    ours_tf = FinetuneTransform(64)
    ours = ImageFolderDataset(root, "train", ours_tf)
    timm_ds = ImageFolderDataset(root, "train", timm_train_transform(64), input_kind="pil")
    seed_all(0)
    a = torch.stack([ours[i % len(ours)][0] for i in range(240)])
    seed_all(0)
    b = torch.stack([timm_ds[i % len(timm_ds)][0] for i in range(240)])
    assert a.shape == b.shape == (240, 3, 64, 64) and a.dtype == b.dtype == torch.float32
    ma, mb = a.mean((0, 2, 3)), b.mean((0, 2, 3))
    sa, sb = a.std((0, 2, 3)), b.std((0, 2, 3))
    assert (ma - mb).abs().max() < 0.08, (ma, mb)
    assert ((sa - sb).abs() / sb).max() < 0.05, (sa, sb)
