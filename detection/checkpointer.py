"""Pretrained encoders into the ViTDet detector: key mapping and a Detectron2 checkpointer.

``train.init_checkpoint`` may name any checkpoint ``pretrain.weights`` understands (this
suite's pretraining runs, reference DropPos / MAE / AdPE files, timm ViT weights, exported
backbones of any target, MMEngine segmentors) or a Detectron2 checkpoint of this detector
(resuming, evaluating). A Detectron2 file that holds only a backbone (``backbone.net.*``,
``tools.convert_checkpoint --to detectron2``) takes the encoder path too. The former
are read safely (weights only; a pickled ``argparse.Namespace`` is ignored), reduced to the
timm-named encoder weights and renamed to ``backbone.net.<timm name>``; ViTDet uses neither
the cls token nor the final norm, so those are dropped, and a position table pretrained at
another resolution is resized. Detectron2's loader then receives plain tensors with no
shape mismatch. The ``pretrain.weights.loading`` report (loaded / new / unused keys)
is logged and kept, as its JSON record, in ``ViTDetCheckpointer.load_report``.
"""
from __future__ import annotations

import pickle
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer

from pretrain.weights.loading import LoadReport, LoadRules, match_encoder
from pretrain.weights import CheckpointError, encoder_state_dict, load_checkpoint_file, model_state

BACKBONE_PREFIX = "backbone.net."
DETECTRON2_PREFIXES = ("backbone.", "proposal_generator.", "roi_heads.", "pixel_mean", "pixel_std")
# Encoder keys a ViTDet backbone has no place for.
UNUSED_ENCODER_KEYS = ("cls_token", "norm.weight", "norm.bias")
# The detector takes what fits; the feature pyramid, RPN and ROI heads (and the
# relative position tables) stay new, and no mismatch refuses the load.
VITDET_RULES = LoadRules(
    prefix=BACKBONE_PREFIX,
    skip={k: "ViTDet uses neither the cls token nor the final norm" for k in UNUSED_ENCODER_KEYS},
    require_blocks=False,
)


def is_detectron2_state(state: dict[str, Any]) -> bool:
    """True for a state dict of a whole Detectron2 model (keys ``backbone.``, ``roi_heads.``...).

    A backbone alone (every key ``backbone.net.*``, an exported encoder) is not a whole model.
    """
    keys = [k for k in state if isinstance(state[k], torch.Tensor)]
    whole = any(not k.startswith(BACKBONE_PREFIX) for k in keys)
    return bool(keys) and whole and all(k.startswith(DETECTRON2_PREFIXES) for k in keys)


def encoder_to_vitdet(
    encoder: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    source: str = "<state dict>",
) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """timm-named encoder weights -> detector keys (``backbone.net.blocks.0.attn.qkv.weight``).

    Args:
        encoder: plain encoder state dict (``pretrain.weights.encoder_state_dict``).
        target: the detector's state dict; keys it lacks are skipped and a ``pos_embed``
            of another grid is resized bicubically to the target's.
        source: the file, for the report.
    Returns:
        (converted state dict, the report: ``loaded`` / ``new`` detector keys, ``unused`` encoder keys).
    """
    converted, report = match_encoder(target, encoder, VITDET_RULES, source)
    return {k: v.clone().contiguous() for k, v in converted.items()}, report


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle only what model-zoo ``.pkl`` files hold: containers, numbers, strings and numpy arrays.

    Detectron2's own reader calls ``pickle.load``, which runs whatever a file names; this one
    refuses every other global, so a file carrying a pickled callable stops with a message.
    """

    ALLOWED = {
        ("collections", "OrderedDict"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def __init__(self, file, filename: str) -> None:
        super().__init__(file, encoding="latin1")
        self.filename = filename

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise CheckpointError(f"refusing to read {self.filename}: it pickles {module}.{name}, which is not "
                                  "weights; loading it could run code")
        return super().find_class(module, name)


def read_model_zoo_pickle(filename: str) -> dict[str, Any]:
    """A Detectron2 / Detectron (Caffe2) model-zoo ``.pkl`` in the form Detectron2's checkpointer returns."""
    with open(filename, "rb") as f:
        data = _ArrayUnpickler(f, filename).load()
    if not isinstance(data, dict):
        raise CheckpointError(f"{filename} holds a {type(data).__name__}, expected a dict of arrays")
    if "model" in data and "__author__" in data:  # Detectron2 model-zoo format
        return data
    blobs = data.get("blobs", data)  # Caffe2 / Detectron1: detection models keep their weights under "blobs"
    weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


class ViTDetCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that also reads pretraining checkpoints of any known format."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.load_report: dict[str, Any] | None = None  # LoadReport.to_dict() of the last file read

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):  # Detectron2 / Detectron model-zoo pickles, read without running code
            return read_model_zoo_pickle(filename)
        ckpt = load_checkpoint_file(filename)
        inner = ckpt.get("model") if isinstance(ckpt.get("model"), dict) else ckpt
        if is_detectron2_state(inner):
            self.load_report = LoadReport(filename, loaded=sorted(inner), format="detectron2").to_dict()
            return ckpt if "model" in ckpt else {"model": ckpt}
        encoder = encoder_state_dict(model_state(ckpt, filename), filename)
        converted, report = encoder_to_vitdet(encoder, self.model.state_dict(), filename)
        report.format = "pretrain-encoder"
        self.load_report = report.to_dict()
        self.logger.info("ViTDet: " + report.summary())
        return {"model": converted, "__author__": "droppos", "matching_heuristics": False}
