"""End-to-end fine-tuning of a pretrained ViT on an ImageFolder (DropPos / MAE ImageNet-1K recipe).

Single process:   python -m classification.finetune --config classification/configs/finetune_vit_tiny_builtin.yaml \
                      checkpoint=outputs/pretrain/backbone.pth
Multi GPU/node:   torchrun --nproc_per_node 8 -m classification.finetune \
                      --config classification/configs/finetune_vit_base_100ep.yaml \
                      checkpoint=... data.path=/data/imagenet
In process:       classification.finetune.run(load_finetune_config("finetune_vit_tiny_builtin", [...]))

Recipe: timm RandAugment + random erasing, Mixup / CutMix with soft-target
cross-entropy, drop path, layer-wise lr decay (timm's groups), AdamW with warmup
and cosine to min_lr, average pooling + fc_norm, head init std 2e-5, optional EMA;
top-1 / top-5 with Resize 256 / CenterCrop 224 bicubic. The run directory holds
config.yaml, load_report.json, log.jsonl, tb/, numbered checkpoints (resume),
best.pth and classification_metrics.json.
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
from pretrain.engine.hooks import Hook
from pretrain.engine.optim import build_adamw
from pretrain.engine.run import TrainingRun, start_run, total_batch_and_lr
from pretrain.engine.trainer import resolve_precision
from pretrain.models.method import MethodOutput

from .data import (
    batch_finish,
    build_train_transform,
    ensure_builtin,
    eval_dataset,
    eval_loader,
    image_dataset,
    num_classes_of,
    train_loader,
)
from .evaluate import evaluate
from .layer_decay import layer_decay_param_groups
from .loop import EvaluationHook
from .model import build_classifier
from .runs import arch_name, read_checkpoint, report_load, train_and_finish, use_rel_pos, validate_common

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
FINETUNE_DEFAULT = CONFIG_DIR / "finetune_default.yaml"


# ------------------------------------------------------------------ config
def validate(cfg: DictConfig) -> None:
    """Range checks that must fail before any work starts."""
    if cfg.task != "finetune":
        raise ConfigError(f"task must be 'finetune', got {cfg.task!r}")
    validate_common(cfg)
    if not 0.0 < float(cfg.optim.layer_decay) <= 1.0:
        raise ConfigError(f"optim.layer_decay must lie in (0, 1], got {cfg.optim.layer_decay}")
    mix = cfg.mixup
    if (mix.mixup > 0 or mix.cutmix > 0 or mix.cutmix_minmax is not None) and int(cfg.train.batch_size) % 2:
        raise ConfigError(f"mixup / cutmix need an even train.batch_size, got {cfg.train.batch_size}")
    if not 0.0 <= float(mix.smoothing) < 1.0:
        raise ConfigError(f"mixup.smoothing must lie in [0, 1), got {mix.smoothing}")
    if not 0.0 <= float(cfg.aug.reprob) <= 1.0:
        raise ConfigError(f"aug.reprob must lie in [0, 1], got {cfg.aug.reprob}")


def load_finetune_config(recipes: str | Sequence[str] | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Default fine-tuning config <- recipe file(s) (path or name in classification/configs) <- key=value."""
    return load_config(recipes, overrides, default=FINETUNE_DEFAULT, validator=validate)


def build_loss(cfg: DictConfig, num_classes: int):
    """(mixup_fn or None, criterion): soft targets with mixup/cutmix, label smoothing otherwise."""
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    m = cfg.mixup
    if m.mixup > 0 or m.cutmix > 0 or m.cutmix_minmax is not None:
        mixup_fn = Mixup(
            mixup_alpha=float(m.mixup),
            cutmix_alpha=float(m.cutmix),
            cutmix_minmax=list(m.cutmix_minmax) if m.cutmix_minmax is not None else None,
            prob=float(m.prob),
            switch_prob=float(m.switch_prob),
            mode=m.mode,
            label_smoothing=float(m.smoothing),
            num_classes=num_classes,
        )
        return mixup_fn, SoftTargetCrossEntropy()
    if m.smoothing > 0:
        return None, LabelSmoothingCrossEntropy(smoothing=float(m.smoothing))
    return None, nn.CrossEntropyLoss()


def build_model(cfg: DictConfig, num_classes: int, rel_pos: bool) -> nn.Module:
    """The classifier of the fine-tuning recipe (``cfg.model``); the benchmark builds it here too."""
    return build_classifier(
        cfg.model.size,
        num_classes=num_classes,
        img_size=int(cfg.model.img_size),
        patch_size=int(cfg.model.patch_size),
        global_pool=cfg.model.global_pool,
        drop_path=float(cfg.model.drop_path),
        freeze_pos_embed=bool(cfg.model.freeze_pos_embed),
        rel_pos=rel_pos,
        head_init_std=float(cfg.model.head_init_std),
    )


def build_optimizer(
    cfg: DictConfig, model: nn.Module, world: int, fused: bool | None = None
) -> tuple[torch.optim.Optimizer, int, float]:
    """(AdamW over layer-decay groups, total batch, absolute lr) for ``world`` processes (``fused`` None: ``optim.fused``)."""
    total_batch, lr = total_batch_and_lr(cfg, world)
    groups = layer_decay_param_groups(model, float(cfg.optim.weight_decay), float(cfg.optim.layer_decay))
    fused = bool(cfg.optim.fused) if fused is None else fused
    return build_adamw(groups, lr=lr, betas=tuple(cfg.optim.betas), fused=fused), total_batch, lr


def make_step_fn(device: torch.device, mixup_fn, criterion, finish):
    """Batch -> MethodOutput(loss, {loss[, acc1]}); ``finish`` (normalise + erase a uint8
    batch, :func:`classification.data.batch_finish`) and mixup run on the device batch."""

    def step(model: nn.Module, batch) -> MethodOutput:
        images = batch[0].to(device, non_blocking=True)
        target = batch[1].to(device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = finish(images)
        metrics: dict[str, torch.Tensor] = {}
        if mixup_fn is not None:
            images, target = mixup_fn(images, target)  # target: soft [B, C]
        logits = model(images).float()
        loss = criterion(logits, target)
        metrics["loss"] = loss.detach()
        if mixup_fn is None:
            metrics["acc1"] = (logits.detach().argmax(1) == target).float().mean() * 100
        return MethodOutput(loss=loss, metrics=metrics, outputs={})

    return step


# --------------------------------------------------------------------- run
class EMAHook(Hook):
    """Update timm's ModelEmaV3 after every optimizer step."""

    def __init__(self, ema, model: nn.Module) -> None:
        self.ema, self.model = ema, model

    def after_step(self, trainer) -> None:
        self.ema.update(self.model, step=trainer.state.global_step)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune with a resolved config; returns the metrics (also written to classification_metrics.json)."""
    env = start_run(cfg)
    device, world = env.device, env.world
    ensure_builtin(cfg)
    train_transform = build_train_transform(cfg, normalize=False)  # uint8 from the workers when it can
    finish = batch_finish(train_transform, device)
    train_set = image_dataset(cfg, cfg.data.train_split, train_transform)
    val_set = eval_dataset(cfg)
    num_classes = num_classes_of(train_set, cfg.model.num_classes)
    workers = int(cfg.data.num_workers)
    loader, sampler = train_loader(train_set, int(cfg.train.batch_size), int(cfg.train.seed), workers, device)
    val_loader = eval_loader(val_set, int(cfg.train.eval_batch_size), workers, device)

    run_dir = TrainingRun(cfg, env, "finetune")
    run_dir.prepare_output()
    pretrained = read_checkpoint(cfg)
    model = build_model(cfg, num_classes, use_rel_pos(cfg, pretrained))
    report = report_load(model, pretrained, run_dir.out_dir, "finetune")
    model.to(device)

    optimizer, total_batch, lr = build_optimizer(cfg, model, world)
    precision = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    mixup_fn, criterion = build_loss(cfg, num_classes)
    ema = None
    if cfg.ema.enabled:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=float(cfg.ema.decay), use_warmup=bool(cfg.ema.warmup))
    run_dir.print(f"{arch_name(cfg)} classes={num_classes} train={len(train_set)} val={len(val_set)} world={world} "
                  f"total_batch={total_batch} lr={lr:.3g} layer_decay={cfg.optim.layer_decay} precision={precision} "
                  f"device={device} checkpoint={cfg.checkpoint}")

    def evaluate_all() -> dict[str, float]:
        stats = evaluate(model, val_loader, device, precision)
        if ema is not None:
            ema_stats = evaluate(ema.module, val_loader, device, precision)
            stats.update({f"ema_{k}": v for k, v in ema_stats.items() if k != "count"})
        return stats

    def load_ema(ckpt: dict[str, Any]) -> None:
        if ema is not None and "model_ema" in ckpt:
            ema.module.load_state_dict(ckpt["model_ema"])

    return train_and_finish(
        cfg, env, run_dir, model=model, train_images=train_set, val_images=val_set, optimizer=optimizer, loader=loader, sampler=sampler,
        step_fn=make_step_fn(device, mixup_fn, criterion, finish), lr=lr, precision=precision, scaler=scaler,
        evaluation=EvaluationHook(evaluate_all, int(cfg.train.eval_every), run_dir.out_dir / "best.pth"),
        hooks=[EMAHook(ema, model)] if ema is not None else [],
        extra_state=(lambda: {"model_ema": ema.module.state_dict()}) if ema is not None else None,
        on_load=load_ema,
        pretrained=pretrained, report=report, num_classes=num_classes, total_batch=total_batch,
        metrics={
            "layer_decay": float(cfg.optim.layer_decay),
        },
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, "Fine-tune a pretrained ViT (DropPos / MAE recipe)", load_finetune_config, run)


if __name__ == "__main__":
    sys.exit(main())
