"""COCO detection transfer: ViTDet-style Mask R-CNN on the suite's ViT, with Detectron2.

Importing the package applies the Detectron2 compatibility shims (``detection.compat``)
before any module of the package imports Detectron2.
"""
from .compat import apply_detectron2_shims

apply_detectron2_shims()
