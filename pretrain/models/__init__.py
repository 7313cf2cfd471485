"""Models: the shared ViT and the pretraining methods built around it (registered by name)."""
from .adpe import AdPE
from .droppos import DropPos, DropPosMasks
from .mae import MAE
from .method import MethodOutput, PretrainMethod
from .registry import build_method, method_names, register_method
from .vit import VIT_SIZES, VisionTransformer, create_vit

__all__ = [
    "AdPE", "DropPos", "DropPosMasks", "MAE", "MethodOutput", "PretrainMethod", "VIT_SIZES", "VisionTransformer",
    "build_method", "create_vit", "method_names", "register_method",
]
