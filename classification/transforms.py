"""The fine-tuning input pipeline: timm's recipe with the suite's fast crop and normalisation.

timm's ``create_transform(is_training=True)`` (the MAE / DeiT recipe) is three stages:
RandomResizedCrop (bicubic) + flip on a PIL image, RandAugment on the PIL crop, then
ToTensor + Normalize + RandomErasing. :class:`FinetuneTransform` keeps timm's
RandAugment and RandomErasing objects (same ops, same magnitudes, same draws) and
replaces the two ends, where most of the time goes:

- the crop box comes from the JPEG header, the file is decoded by
  ``torchvision.io`` (at 1/2, 1/4, 1/8 scale when the box allows) and cropped and
  resized as a uint8 tensor with torch's antialiased bicubic kernel
  (``pretrain.data.transforms.PretrainTransform``);
- the 224 px crop goes to PIL only for RandAugment and comes back as a uint8 tensor;
  RandAugment's rotate / shear / translate run on OpenCV
  (:mod:`classification.opencv_geometry`: PIL's matrix and fill, OpenCV's bicubic
  kernel), the recipe's costliest ops; ``geometry="pil"`` keeps timm's PIL ops.
  With ``normalize=False`` (what ``classification.finetune`` uses) that uint8 crop is
  the sample: DataLoader workers ship a quarter of the bytes, and the fused
  normalisation and timm's RandomErasing run on the training device, on the batch
  (:meth:`FinetuneTransform.device_finish`), as timm's prefetcher does. With
  ``normalize=True`` the sample is finished in the worker instead.

``tools/benchmark_data.py`` measures it against the plain timm / torchvision pipeline
on the same folder and prints the output statistics of both.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from pretrain.data.decode import EncodedImage
from pretrain.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PretrainTransform


def patch_timm_posterize() -> None:
    """Make timm's RandAugment posterize work with Pillow >= 12, which rejects ``bits=0``.

    timm 1.0.x asks for 0 bits when rand-m9-mstd0.5's sampled magnitude reaches 10
    (``PosterizeIncreasing``); older Pillow returned a black image, Pillow 12+ raises
    ``ValueError`` and kills the DataLoader worker mid-epoch. This restores the old
    result. Idempotent.
    """
    from PIL import ImageOps
    from timm.data import auto_augment as aa

    def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
        if bits_to_keep >= 8:
            return img
        if bits_to_keep < 1:
            return Image.new(img.mode, img.size)  # every bit dropped: black
        return ImageOps.posterize(img, bits_to_keep)

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        aa.NAME_TO_OP[name] = posterize


def timm_train_transform(
    size: int,
    scale: Sequence[float] = (0.08, 1.0),
    hflip: float = 0.5,
    auto_augment: str | None = "rand-m9-mstd0.5-inc1",
    color_jitter: float | None = None,
    interpolation: str = "bicubic",
    re_prob: float = 0.25,
    re_mode: str = "pixel",
    re_count: int = 1,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    separate: bool = False,
):
    """timm's own training transform (PIL in, normalised tensor out), with the posterize fix."""
    from timm.data import create_transform

    patch_timm_posterize()
    return create_transform(
        input_size=int(size), is_training=True, scale=tuple(scale), hflip=float(hflip), color_jitter=color_jitter,
        auto_augment=auto_augment or None, interpolation=interpolation, re_prob=float(re_prob), re_mode=re_mode,
        re_count=int(re_count), mean=tuple(mean), std=tuple(std), separate=separate)


class FinetuneTransform:
    """RandomResizedCrop (bicubic) + flip + timm's RandAugment / colour jitter + normalise + RandomErasing.

    Input: an :class:`EncodedImage` (what ``ImageFolderDataset`` hands a transform whose
    ``input_kind`` is "encoded"), a PIL image or a uint8 tensor [3, H, W].
    Output: float32 [3, size, size], normalised and erased, as timm's pipeline returns;
    with ``normalize=False`` the uint8 crop [3, size, size], to be finished on the device.
    """

    input_kind = "encoded"

    def __init__(
        self,
        size: int,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        color_jitter: float | None = None,
        re_prob: float = 0.25,
        re_mode: str = "pixel",
        re_count: int = 1,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        normalize: bool = True,
        geometry: str = "opencv",
    ) -> None:
        if geometry not in ("opencv", "pil"):
            raise ValueError(f"geometry (aug.geometry in a fine-tuning config) must be 'opencv' or 'pil', "
                             f"got {geometry!r}")
        self.normalize, self.geometry = normalize, geometry
        self.mean, self.std = tuple(mean), tuple(std)
        self.re_prob, self.re_mode, self.re_count = float(re_prob), re_mode, int(re_count)
        self.crop = PretrainTransform(size, scale=scale, ratio=ratio, hflip=hflip, normalize=False)
        _, secondary, _ = timm_train_transform(
            size, scale, hflip, auto_augment, color_jitter, "bicubic", re_prob, re_mode, re_count, mean, std,
            separate=True)
        self.augment = list(secondary.transforms)  # timm's RandAugment (or ColorJitter), PIL -> PIL
        if geometry == "opencv":
            from classification.opencv_geometry import use_opencv_geometry

            for t in self.augment:
                use_opencv_geometry(t)
        self._finish = self.device_finish("cpu") if normalize else None

    def __call__(self, img: Image.Image | torch.Tensor | EncodedImage) -> torch.Tensor:
        x = self.crop.crops(img, 1)[0]  # uint8 [3, size, size], HWC in memory (see resize_uint8)
        if self.augment:
            pil = Image.fromarray(x.permute(1, 2, 0).contiguous().numpy())  # a view when already HWC
            for t in self.augment:
                pil = t(pil)
            x = torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1)
        if self._finish is None:
            return x.contiguous()
        return self._finish(x[None])[0]  # the device step's finish, on a batch of one

    def device_finish(self, device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 batch [B, 3, H, W] on ``device`` -> normalised, randomly erased float32 batch.

        What ``normalize=False`` leaves to the training step. The erasing is timm's
        ``RandomErasing`` in batch mode (each sample erased with probability ``re_prob``,
        noise drawn on ``device``), the op timm's own pipeline applies per sample.
        """
        from timm.data.random_erasing import RandomErasing

        from pretrain.data.transforms import Uint8Normalize

        normalize = Uint8Normalize(self.mean, self.std)
        erase = (RandomErasing(self.re_prob, mode=self.re_mode, max_count=self.re_count, device=str(device))
                 if self.re_prob > 0 else None)

        def finish(x: torch.Tensor) -> torch.Tensor:
            if x.dtype != torch.uint8:
                raise TypeError(f"device_finish expects the uint8 batch of a normalize=False transform, got {x.dtype}")
            x = normalize(x)
            return erase(x) if erase is not None else x

        return finish

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(crop={self.crop}, augment={self.augment}, geometry={self.geometry!r}, "
                f"re_prob={self.re_prob}, normalize={self.normalize})")
