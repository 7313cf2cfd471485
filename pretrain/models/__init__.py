"""Models: the shared ViT and the pretraining methods built around it."""
from .droppos import DropPos, DropPosMasks
from .mae import MAE
from .method import MethodOutput
from .vit import VIT_SIZES, VisionTransformer, create_vit

__all__ = ["DropPos", "DropPosMasks", "MAE", "MethodOutput", "VIT_SIZES", "VisionTransformer", "create_vit"]
