"""Image transforms for pretraining (DropPos / MAE, AdPE's multi-crop MAE+) and evaluation.

Why not torchvision's PIL pipeline: the same augmentations run on uint8 CHW
tensors are about twice as fast per core (README, Performance). Decoding goes through
``torchvision.io.decode_jpeg`` (see ``imagefolder.py``), cropping is a view,
resizing is torch's antialiased uint8 bicubic kernel (the same filter as PIL's
bicubic), and normalisation is one fused float pass at the end, or deferred to
the accelerator with ``normalize=False`` and :class:`Uint8Normalize`.

Random draws use torch's generator in the same order as torchvision
(``RandomResizedCrop`` then ``RandomHorizontalFlip``), so a seeded run samples
the same crops as the torchvision pipeline and DataLoader worker seeding works
as usual.

Every transform accepts a uint8 tensor [3, H, W] (or [1, H, W]), a PIL image or
an :class:`EncodedImage` (undecoded bytes). It declares ``input_kind = "encoded"``,
so :class:`ImageFolderDataset` hands it the bytes: the crop box is drawn from the
header's size first, then a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's
DCT scaling) whenever the box still covers the output size at that scale; the
resize that follows is then a smaller downscale of the same region.
``reduced_decode=False`` always decodes at full size.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .decode import EncodedImage

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875


def to_uint8_tensor(img: Image.Image | torch.Tensor) -> torch.Tensor:
    """PIL image or uint8 tensor -> uint8 tensor [3, H, W] (grey expanded to 3 channels)."""
    if isinstance(img, Image.Image):
        if img.mode != "RGB":
            img = img.convert("RGB")
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)  # [3, H, W] channels-last view
    if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8 or img.ndim != 3:
        raise TypeError(f"expected a PIL image or a uint8 tensor [C, H, W], got {type(img).__name__} "
                        f"{getattr(img, 'dtype', '')} {tuple(getattr(img, 'shape', ()))}")
    if img.shape[0] == 1:
        return img.expand(3, -1, -1)
    if img.shape[0] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {img.shape[0]}")
    return img


class Uint8Normalize:
    """uint8 [..., 3, H, W] -> float32 (x / 255 - mean) / std, in one fused pass.

    The constants are made once per device: building them from Python floats in every
    training step would be a blocking host-to-device copy on CUDA.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_DEFAULT_MEAN, std: Sequence[float] = IMAGENET_DEFAULT_STD) -> None:
        self.mean, self.std = tuple(mean), tuple(std)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = self._constants.get(x.device)
        if c is None:
            mean255 = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(3, 1, 1) * 255
            inv_std255 = 1.0 / (torch.tensor(self.std, dtype=torch.float32, device=x.device).view(3, 1, 1) * 255)
            c = self._constants[x.device] = (mean255, inv_std255)
        return x.float().sub_(c[0]).mul_(c[1])


def normalize_uint8(
    x: torch.Tensor,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
) -> torch.Tensor:
    """One-off :class:`Uint8Normalize` (loops should keep an instance)."""
    return Uint8Normalize(mean, std)(x)


def sample_resized_crop(
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
) -> tuple[int, int, int, int]:
    """Random crop box (top, left, h, w) of random area share and aspect ratio.

    The RandomResizedCrop rule (Szegedy et al., 2015): up to 10 tries of an area
    share in ``scale`` and a log-uniform aspect ratio in ``ratio``; if none fits,
    the largest centred box with a clamped aspect ratio.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def decode_reduced(
    img: EncodedImage,
    boxes: Sequence[tuple[int, int, int, int]],
    out_size: tuple[int, int],
    enabled: bool = True,
) -> tuple[torch.Tensor, list[tuple[int, int, int, int]]]:
    """Decode at the largest JPEG scale 1/r (r in 8, 4, 2, 1) at which every box stays >= ``out_size``.

    Returns the uint8 image [3, ~H / r, ~W / r] and the boxes (top, left, h, w) in its pixels.
    """
    reduce = 8 if enabled and img.is_jpeg else 1
    while reduce > 1 and any(h < reduce * out_size[0] or w < reduce * out_size[1] for _, _, h, w in boxes):
        reduce //= 2
    x = img.decode(reduce)
    if reduce == 1:
        return x, list(boxes)
    full_h, full_w = img.size
    sy, sx = full_h / x.shape[-2], full_w / x.shape[-1]
    scaled = []
    for top, left, h, w in boxes:
        t, l = min(int(round(top / sy)), x.shape[-2] - 1), min(int(round(left / sx)), x.shape[-1] - 1)
        h_s = min(max(int(round(h / sy)), 1), x.shape[-2] - t)
        w_s = min(max(int(round(w / sx)), 1), x.shape[-1] - l)
        scaled.append((t, l, h_s, w_s))
    return x, scaled


def resize_uint8(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, h, w], antialiased bicubic (PIL's filter), no float round trip.

    Runs channels-last (the layout decoders produce and torch's uint8 kernel prefers); the
    result is in HWC memory, so ``x.permute(1, 2, 0)`` is a contiguous image.
    """
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    x = img[None].contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)[0]


class _TensorTransform:
    """Shared parts: the options every transform takes and the tail (contiguous uint8 or normalised float32).

    Options (keyword only): ``normalize`` (False: return uint8, to be normalised later by
    :class:`Uint8Normalize`), ``mean`` / ``std`` of the normalisation and ``reduced_decode``
    (False: always decode a JPEG at full size).
    """

    input_kind = "encoded"  # EncodedImage, tensor and PIL all work; bytes allow reduced decoding

    def __init__(
        self,
        *,
        normalize: bool = True,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        reduced_decode: bool = True,
    ) -> None:
        self.reduced_decode = reduced_decode
        self.normalize = normalize
        self.mean, self.std = tuple(mean), tuple(std)
        self._normalize = Uint8Normalize(mean, std)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        if not self.normalize:
            return x
        return self._normalize(x)


class PretrainTransform(_TensorTransform):
    """RandomResizedCrop (bicubic) + RandomHorizontalFlip + normalise: [3, size, size].

    ``options``: normalize, mean, std, reduced_decode (see :class:`_TensorTransform`).
    """

    def __init__(self, size: int, scale: Sequence[float] = (0.2, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                 hflip: float = 0.5, **options: Any) -> None:
        super().__init__(**options)
        self.size, self.scale, self.ratio, self.hflip = int(size), tuple(scale), tuple(ratio), float(hflip)

    def crops(self, img: Image.Image | torch.Tensor | EncodedImage, n: int) -> list[torch.Tensor]:
        """``n`` random resized, maybe flipped, uint8 crops [3, size, size] of one image.

        Random draws per crop: box, then flip (torchvision's order); all boxes are drawn
        before decoding so an encoded JPEG is decoded once, at the scale they allow.
        """
        encoded = isinstance(img, EncodedImage)
        if not encoded:
            img = to_uint8_tensor(img)
        height, width = img.size if encoded else img.shape[-2:]
        boxes, flips = [], []
        for _ in range(n):
            boxes.append(sample_resized_crop(height, width, self.scale, self.ratio))
            flips.append(self.hflip > 0 and torch.rand(1).item() < self.hflip)
        if encoded:
            img, boxes = decode_reduced(img, boxes, (self.size, self.size), self.reduced_decode)
        out = []
        for (top, left, h, w), flip in zip(boxes, flips):
            x = resize_uint8(img[:, top:top + h, left:left + w], (self.size, self.size))
            out.append(x.flip(-1) if flip else x)
        return out

    def __call__(self, img: Image.Image | torch.Tensor | EncodedImage) -> torch.Tensor:
        return self._finish(self.crops(img, 1)[0])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
                f"hflip={self.hflip}, normalize={self.normalize})")


class MultiCropTransform(PretrainTransform):
    """``num_crops`` independent random resized crops of one image: [num_crops, 3, size, size].

    AdPE's MAE+ recipe: 4 crops of 112 px, scale (0.08, 1.0), each flipped at random.
    """

    def __init__(self, num_crops: int = 4, size: int = 112, scale: Sequence[float] = (0.08, 1.0),
                 **kwargs: Any) -> None:
        super().__init__(size, scale, **kwargs)
        self.num_crops = int(num_crops)

    def __call__(self, img: Image.Image | torch.Tensor | EncodedImage) -> torch.Tensor:
        return self._finish(torch.stack(self.crops(img, self.num_crops)))

    def __repr__(self) -> str:
        return super().__repr__().replace("(", f"(num_crops={self.num_crops}, ", 1)


class EvalTransform(_TensorTransform):
    """Resize the short side to int(size / crop_pct) (bicubic), centre crop ``size``, normalise.

    ``options``: normalize, mean, std, reduced_decode (see :class:`_TensorTransform`).
    """

    def __init__(self, size: int, crop_pct: float = DEFAULT_CROP_PCT, **options: Any) -> None:
        super().__init__(**options)
        self.size, self.crop_pct = int(size), float(crop_pct)
        self.resize_to = int(self.size / self.crop_pct)

    def __call__(self, img: Image.Image | torch.Tensor | EncodedImage) -> torch.Tensor:
        if isinstance(img, EncodedImage):
            h, w = img.size  # reduce while the short side stays >= the resize target
            img, _ = decode_reduced(img, [(0, 0, h, w)], (self.resize_to, self.resize_to), self.reduced_decode)
        img = to_uint8_tensor(img)
        h, w = img.shape[-2:]
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.resize_to * long / short)  # torchvision's Resize(int) rule
        new_h, new_w = (new_long, self.resize_to) if w <= h else (self.resize_to, new_long)
        img = resize_uint8(img, (new_h, new_w))
        s = self.size
        if new_h < s or new_w < s:  # as torchvision CenterCrop: zero-pad a too small image
            pad_h, pad_w = max(s - new_h, 0), max(s - new_w, 0)
            img = F.pad(img, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            new_h, new_w = img.shape[-2:]
        top, left = int(round((new_h - s) / 2.0)), int(round((new_w - s) / 2.0))
        return self._finish(img[:, top:top + s, left:left + s])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, resize={self.resize_to}, normalize={self.normalize})"


def build_pretrain_transform(
    input_size: int,
    scale: Sequence[float] = (0.2, 1.0),
    normalize: bool = True,
    **kwargs,
) -> PretrainTransform:
    """DropPos / MAE pretraining augmentation: RandomResizedCrop(input_size, scale, bicubic) + flip."""
    return PretrainTransform(input_size, scale=scale, normalize=normalize, **kwargs)


def build_multicrop_transform(
    num_crops: int = 4,
    crop_size: int = 112,
    scale: Sequence[float] = (0.08, 1.0),
    normalize: bool = True,
    **kwargs,
) -> MultiCropTransform:
    """AdPE MAE+ augmentation: ``num_crops`` low-resolution random crops, stacked [n, 3, s, s]."""
    return MultiCropTransform(num_crops, crop_size, scale=scale, normalize=normalize, **kwargs)


def build_eval_transform(
    input_size: int,
    crop_pct: float = DEFAULT_CROP_PCT,
    normalize: bool = True,
    **kwargs,
) -> EvalTransform:
    """Evaluation: Resize(int(input_size / 0.875), bicubic) + CenterCrop(input_size) + normalise."""
    return EvalTransform(input_size, crop_pct=crop_pct, normalize=normalize, **kwargs)
