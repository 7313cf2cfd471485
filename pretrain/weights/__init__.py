"""Weights in and out of the suite: read any known checkpoint, load encoders into targets, export with a card.

- ``read``: any checkpoint file -> dict; its layout detected; the timm-named encoder state.
- ``foreign``: Detectron2 / MMEngine / MMSeg layouts -> timm names.
- ``loading``: an encoder state -> a target model, with rules and a ``LoadReport``.
- ``shape``: the architecture read off an encoder's tensors (width, depth, patch, grid, heads), one rule.
- ``card``: the card that travels beside an export (sha256, architecture, method, metrics).
- ``export``: an encoder -> a timm, safetensors, Detectron2 or MMSeg file and its card.

Imports go one way: ``foreign`` and ``shape`` import nothing here, ``card`` imports ``shape``, ``read`` imports them,
``loading`` imports ``read``, ``export`` imports all of them. The names of ``read`` are
re-exported so ``from pretrain.weights import load_checkpoint_file`` reads as before.
"""
from .read import (  # noqa: F401
    ENCODER_PREFIX,
    EXTRAS_KEY,
    FOREIGN_LAYOUTS,
    NON_ENCODER_PATTERNS,
    CheckpointError,
    atomic_torch_save,
    check_compatible,
    detect_format,
    encoder_state_dict,
    is_encoder_key,
    load_checkpoint_file,
    load_encoder,
    load_method_weights,
    model_state,
    read_card,
    read_safetensors,
    source_layout,
    to_method_layout,
    to_reference_layout,
)
