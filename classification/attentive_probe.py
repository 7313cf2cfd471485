"""Attentive probing of a frozen pretrained ViT: a learnable query pools the patch tokens, then a linear classifier.

Single process:   python -m classification.attentive_probe \
                      --config classification/configs/attentive_probe_vit_tiny_builtin.yaml \
                      checkpoint=outputs/demo/droppos_vit_tiny/backbone.pth train.output_dir=outputs/demo/ap
Multi GPU/node:   torchrun --nproc_per_node 8 -m classification.attentive_probe --config ... data.path=/data/imagenet
In process:       classification.attentive_probe.run(load_attentive_config("attentive_probe_vit_tiny_builtin", [...]))

The encoder is frozen; only :class:`~classification.attentive_head.AttentivePoolingHead`
trains (cross-attention from one learnable query over the tokens after the pretrained
final norm, residual MLP, LayerNorm, Linear), with AdamW (no weight decay on the query,
biases and norms), warmup then cosine, on the engine's run skeleton (resume, NaN stop,
``best.pth``, ``classification_metrics.json`` with ``task: attentive_probe``). Two ways to
feed it, as for the linear probe:

- ``probe.cache_features=true``: every image is encoded once (Resize + CenterCrop, no
  augmentation) and the head trains on the cached token sequences, exactly what the
  encoder would give at every step. Memory: images x tokens x width floats, fine for
  small sets (the built-in data: 1000 x 64 x 192), not for ImageNet;
- ``probe.cache_features=false``: RandomResizedCrop + flip images through the frozen
  encoder at every step.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig

from pretrain.engine.cli import run_cli
from pretrain.engine.config import ConfigError, load_config
from pretrain.engine.optim import build_adamw
from pretrain.engine.run import total_batch_and_lr

from .attentive_head import AttentivePoolingHead
from .probe_run import probe_inputs, start_probe, train_probe
from .runs import arch_name, validate_common

ATTENTIVE_DEFAULT = Path(__file__).resolve().parent / "configs" / "attentive_probe_default.yaml"


def validate(cfg: DictConfig) -> None:
    """Checks before any work: the shared classification ones, then the attentive probe's."""
    validate_common(cfg)
    if cfg.task != "attentive_probe":
        raise ConfigError(f"task must be 'attentive_probe', got {cfg.task!r}")
    if cfg.model.global_pool != "token":
        raise ConfigError("model.global_pool must be 'token' for the attentive probe: it reads the tokens after the "
                          f"pretrained final norm, which global_pool='avg' would drop (got {cfg.model.global_pool!r})")
    if cfg.probe.num_heads is not None and int(cfg.probe.num_heads) < 1:
        raise ConfigError(f"probe.num_heads must be >= 1 or null (the encoder's), got {cfg.probe.num_heads}")
    if int(cfg.probe.feature_batch_size) < 1:
        raise ConfigError(f"probe.feature_batch_size must be >= 1, got {cfg.probe.feature_batch_size}")


def load_attentive_config(recipes: str | Sequence[str] | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Default attentive-probe config <- recipe file(s) (path or name in classification/configs) <- key=value."""
    return load_config(recipes, overrides, default=ATTENTIVE_DEFAULT, validator=validate)


def build_head(cfg: DictConfig, dim: int, encoder_heads: int, num_classes: int) -> AttentivePoolingHead:
    """The pooling head for ``dim``-wide tokens; ``probe.num_heads`` null takes the encoder's head count."""
    heads = int(cfg.probe.num_heads) if cfg.probe.num_heads is not None else encoder_heads
    if dim % heads:
        raise ConfigError(f"probe.num_heads={heads} does not divide the token width {dim} of {arch_name(cfg)}")
    return AttentivePoolingHead(dim, num_classes, num_heads=heads, mlp_ratio=float(cfg.probe.mlp_ratio),
                                init_std=float(cfg.probe.init_std), head_init_std=float(cfg.model.head_init_std))


def build_attentive_optimizer(head: AttentivePoolingHead, cfg: DictConfig, lr: float) -> torch.optim.Optimizer:
    """AdamW; weight decay on the projection matrices only (not the query, biases, norms)."""
    skip = head.no_weight_decay()
    decay = [p for n, p in head.named_parameters() if n not in skip]
    rest = [p for n, p in head.named_parameters() if n in skip]
    groups = [{"params": decay, "weight_decay": float(cfg.optim.weight_decay)}, {"params": rest, "weight_decay": 0.0}]
    return build_adamw(groups, lr, betas=tuple(cfg.optim.betas))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Attentive-probe with a resolved config; returns the metrics (also written to classification_metrics.json)."""
    setup = start_probe(cfg, "attentive_probe")
    encoder, device = setup.encoder, setup.env.device
    head = build_head(cfg, encoder.embed_dim, encoder.blocks[0].attn.num_heads, setup.num_classes).to(device)
    token_kind = "cls+patch" if cfg.probe.include_cls else "patch"
    inputs = probe_inputs(cfg, setup, head, "all_tokens" if cfg.probe.include_cls else "patch_tokens")

    total_batch, lr = total_batch_and_lr(cfg, setup.env.world)
    optimizer = build_attentive_optimizer(head, cfg, lr)
    setup.run_dir.print(
        f"{arch_name(cfg)} tokens={token_kind} heads={head.pool.num_heads} classes={setup.num_classes} "
        f"train={len(setup.train_images)} val={len(setup.val_images)} cached={bool(cfg.probe.cache_features)} "
        f"world={setup.env.world} total_batch={total_batch} lr={lr:.3g} precision={setup.precision} device={device} "
        f"checkpoint={cfg.checkpoint}")
    return train_probe(cfg, setup, head, optimizer, inputs, lr=lr, total_batch=total_batch, metrics={
        "seed": int(cfg.train.seed),
        "cache_features": bool(cfg.probe.cache_features),
        "tokens": token_kind,
        "num_heads": head.pool.num_heads,
        "optimizer": "adamw",
        "weight_decay": float(cfg.optim.weight_decay),
        "train_images": len(setup.train_images),
        "val_images": len(setup.val_images),
    })


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, "Attentive-probe a frozen pretrained ViT (learnable-query cross-attention pooling)",
                   load_attentive_config, run)


if __name__ == "__main__":
    sys.exit(main())
