"""Linear probing of a frozen pretrained ViT (MAE protocol) on an ImageFolder.

Single process:   python -m classification.linear_probe \
                      --config classification/configs/linear_probe_vit_tiny_builtin.yaml \
                      checkpoint=outputs/pretrain/backbone.pth
Multi GPU/node:   torchrun --nproc_per_node 8 -m classification.linear_probe \
                      --config classification/configs/linear_probe_vit_base.yaml checkpoint=... data.path=/data/imagenet
In process:       classification.linear_probe.run(load_probe_config("linear_probe_vit_tiny_builtin", [...]))

The encoder is frozen; only ``BatchNorm1d(affine=False, eps=1e-6) + Linear`` on the
cls-token (or pooled) feature trains, with LARS (timm's ``Lars``; weights adapted,
biases neither adapted nor decayed, as in MAE's LARS), warmup then cosine. Two ways
to feed it:

- the MAE protocol (``probe.cache_features=false``): RandomResizedCrop + flip images
  through the frozen encoder at every step;
- the fast path (``probe.cache_features=true``): every image is encoded once
  (Resize + CenterCrop, no augmentation), then the head trains on the cached
  features, epochs costing next to nothing.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig

from pretrain.engine.cli import run_cli
from pretrain.engine.config import ConfigError, load_config
from pretrain.engine.run import total_batch_and_lr

from .model import ProbeHead
from .probe_run import probe_inputs, start_probe, train_probe
from .runs import arch_name, validate_common

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROBE_DEFAULT = CONFIG_DIR / "linear_probe_default.yaml"


def validate(cfg: DictConfig) -> None:
    if cfg.task != "linear_probe":
        raise ConfigError(f"task must be 'linear_probe', got {cfg.task!r}")
    validate_common(cfg)
    if cfg.optim.name not in ("lars", "sgd"):
        raise ConfigError(f"optim.name must be 'lars' or 'sgd', got {cfg.optim.name!r}")


def load_probe_config(recipes: str | Sequence[str] | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Default linear-probe config <- recipe file(s) (path or name in classification/configs) <- key=value."""
    return load_config(recipes, overrides, default=PROBE_DEFAULT, validator=validate)


def build_probe_optimizer(head: nn.Module, cfg: DictConfig, lr: float) -> torch.optim.Optimizer:
    """LARS as in MAE: matrices get weight decay and the trust-ratio adaptation, biases / 1-D params neither."""
    weights = [p for p in head.parameters() if p.requires_grad and p.ndim > 1]
    others = [p for p in head.parameters() if p.requires_grad and p.ndim <= 1]
    wd = float(cfg.optim.weight_decay)
    if cfg.optim.name == "sgd":
        groups = [{"params": weights, "weight_decay": wd}, {"params": others, "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=lr, momentum=float(cfg.optim.momentum))
    from timm.optim import Lars

    groups = [
        {"params": weights, "weight_decay": wd, "always_adapt": True},
        {"params": others, "weight_decay": 0.0, "always_adapt": False},
    ]
    return Lars(groups, lr=lr, momentum=float(cfg.optim.momentum), trust_coeff=float(cfg.optim.trust_coeff))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Linear-probe with a resolved config; returns the metrics (also written to classification_metrics.json)."""
    setup = start_probe(cfg, "linear_probe")  # the load asserts: only head (+ fc_norm) are new
    encoder, num_classes, device = setup.encoder, setup.num_classes, setup.env.device
    head = ProbeHead(encoder.num_features, num_classes, init_std=float(cfg.model.head_init_std)).to(device)
    inputs = probe_inputs(cfg, setup, head)

    total_batch, lr = total_batch_and_lr(cfg, setup.env.world)
    optimizer = build_probe_optimizer(head, cfg, lr)
    cached = bool(cfg.probe.cache_features)
    setup.run_dir.print(
        f"{arch_name(cfg)} pool={cfg.model.global_pool} classes={num_classes} train={len(setup.train_images)} "
        f"val={len(setup.val_images)} cached={cached} world={setup.env.world} total_batch={total_batch} lr={lr:.3g} "
        f"optim={cfg.optim.name} precision={setup.precision} device={device} checkpoint={cfg.checkpoint}")
    return train_probe(cfg, setup, head, optimizer, inputs, lr=lr, total_batch=total_batch,
                       metrics={"cache_features": cached, "optimizer": cfg.optim.name})


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, "Linear-probe a frozen pretrained ViT (MAE protocol)", load_probe_config, run)


if __name__ == "__main__":
    sys.exit(main())
