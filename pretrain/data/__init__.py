"""Data for the suite: the built-in synthetic dataset, the image-folder dataset and transforms."""
from .decode import BadImageError, EncodedImage, decode_image, load_image
from .imagefolder import ImageFolderDataset
from .synthetic import (
    ADE_CLASSES,
    ADE_PALETTE,
    BUILTIN_CLASSES,
    BuiltinConfig,
    builtin_paths,
    make_builtin_dataset,
)
from .transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    EvalTransform,
    MultiCropTransform,
    PretrainTransform,
    build_eval_transform,
    build_multicrop_transform,
    build_pretrain_transform,
    Uint8Normalize,
    normalize_uint8,
)

__all__ = [
    "ADE_CLASSES",
    "ADE_PALETTE",
    "BUILTIN_CLASSES",
    "BadImageError",
    "BuiltinConfig",
    "EncodedImage",
    "EvalTransform",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "ImageFolderDataset",
    "MultiCropTransform",
    "PretrainTransform",
    "build_eval_transform",
    "build_multicrop_transform",
    "build_pretrain_transform",
    "builtin_paths",
    "decode_image",
    "load_image",
    "make_builtin_dataset",
    "Uint8Normalize",
    "normalize_uint8",
]
