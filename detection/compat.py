"""Run-time shims that let Detectron2's Python sources run on this stack.

Detectron2 v0.6 installed from Python sources only (see ``tools/install_detectron2.sh``)
lacks its compiled ``detectron2._C`` and predates Pillow 10 and NumPy 1.24. Mask R-CNN
training and inference need none of the compiled ops (ROIAlign and NMS come from
torchvision), so three small shims suffice. Each is applied only when the thing it stands
in for is missing, so a full official build (or Detectron2 main) is left untouched.

- ``detectron2._C``: an empty module is registered so that the modules importing it load;
  it answers the two version queries of ``collect_env_info`` and raises a clear error for
  any op (deformable conv, rotated boxes, the fast COCO evaluator; use
  ``COCOEvaluator(..., use_fast_impl=False)``).
- ``PIL.Image.LINEAR``: removed in Pillow 10, used as a default argument in v0.6.
- ``np.bool`` / ``np.int`` / ``np.float``: removed in NumPy 1.24 (``np.bool``
  is back in NumPy 2); v0.6 uses ``np.int`` in the dataset class histogram that every
  training run prints, and ``np.bool`` for empty polygons.

Besides, ``name_unreadable_images()`` makes Detectron2's ``read_image`` raise the suite's
``BadImageError`` naming the file (PIL's own errors do not say which file), so that a
broken image ends a run with one ``error:`` line (``detection.train_net``).

``apply_detectron2_shims()`` runs when the ``detection`` package is imported, before any
Detectron2 import in the package.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

_APPLIED: list[str] = []


def _missing_op(name: str):
    raise AttributeError(
        f"detectron2._C.{name} is not available: Detectron2 was installed from Python sources "
        "without its C++ ops (deformable conv, rotated boxes and the fast COCO evaluator need them)"
    )


def _compiled_ops_available() -> bool:
    if "detectron2._C" in sys.modules:
        return not getattr(sys.modules["detectron2._C"], "DROPPOS_SHIM", False)
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except (ImportError, ValueError):
        return False


def has_compiled_ops() -> bool:
    """True when Detectron2's compiled extension is really there (not our stand-in)."""
    return _compiled_ops_available()


def _register_empty_c_module() -> bool:
    if importlib.util.find_spec("detectron2") is None or _compiled_ops_available():
        return False
    module = types.ModuleType("detectron2._C", "Stand-in for Detectron2's missing compiled ops.")
    module.__spec__ = importlib.machinery.ModuleSpec("detectron2._C", loader=None)
    module.DROPPOS_SHIM = True
    module.get_compiler_version = lambda: "not built (python-only install)"
    module.get_cuda_version = lambda: "not built (python-only install)"
    module.has_cuda = lambda: False
    module.__getattr__ = _missing_op  # PEP 562: any op raises a clear error when used
    sys.modules["detectron2._C"] = module
    import detectron2

    detectron2._C = module
    return True


def _alias_pil_linear() -> bool:
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR
    return True


def _alias_numpy_types() -> list[str]:
    import warnings

    import numpy as np

    added = []
    for name, value in (("bool", bool), ("int", int), ("float", float)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            present = hasattr(np, name)
        if not present:
            setattr(np, name, value)
            added.append(f"np.{name}")
    return added


def apply_detectron2_shims() -> list[str]:
    """Apply the needed shims once; return the names of those applied (for logging)."""
    if _APPLIED:
        return list(_APPLIED)
    applied = []
    if _register_empty_c_module():
        applied.append("detectron2._C")
    if _alias_pil_linear():
        applied.append("PIL.Image.LINEAR")
    applied += _alias_numpy_types()
    _APPLIED.extend(applied or ["none"])
    return list(_APPLIED)


def name_unreadable_images() -> bool:
    """Wrap ``detectron2.data.detection_utils.read_image`` (once) so a file that cannot be read
    raises ``pretrain.data.decode.BadImageError`` with its path, and one whose shape no
    training resize survives (``pretrain.data.image_shape``) ``UnusableImageError``; 16-bit
    greyscale is scaled to 8 bits as the suite's loaders do (PIL would clip it to white). EXIF
    orientation is still applied by Detectron2, as the suite's own loaders do."""
    from detectron2.data import detection_utils

    from pretrain.data.image_shape import check_image_shape
    from pretrain.data.decode import BadImageError, to_8bit

    original = detection_utils.read_image
    if getattr(original, "names_bad_files", False):
        return False

    def read_image(file_name, format=None):
        try:
            image = original(file_name, format)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for truncated / non-image files
            raise BadImageError(file_name, exc) from exc
        check_image_shape(file_name, image.shape[1], image.shape[0])  # the validator's rule: no 4000 x 1 images
        return image

    convert = detection_utils.convert_PIL_to_numpy

    def convert_PIL_to_numpy(image, format):  # noqa: N802 - Detectron2's name
        return convert(to_8bit(image), format)  # 16-bit greyscale scaled, not clipped to white

    read_image.names_bad_files = True
    detection_utils.read_image = read_image
    detection_utils.convert_PIL_to_numpy = convert_PIL_to_numpy
    return True
