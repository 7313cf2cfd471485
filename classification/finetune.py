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
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from pretrain.engine import distributed as du
from pretrain.engine.run_checkpoints import CheckpointManager
from pretrain.engine.config import ConfigError, load_config, save_config
from pretrain.engine.guard import NonFiniteLossError
from pretrain.engine.logger import RunLogger
from pretrain.engine.optim import build_adamw
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
from .loop import EvalTrainer, seed_everything
from .model import build_classifier
from .runs import (
    arch_name,
    cli,
    finish_metrics,
    loop_config,
    read_checkpoint,
    report_load,
    resume_trainer,
    stopped_message,
    use_rel_pos,
    validate_common,
)

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
def run(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune with a resolved config; returns the metrics (also written to classification_metrics.json)."""
    rank, world, local_rank = du.init_distributed()
    device = du.default_device(local_rank)
    seed_everything(int(cfg.train.seed) + rank)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    out_dir = Path(cfg.train.output_dir)
    if du.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")

    ensure_builtin(cfg)
    train_transform = build_train_transform(cfg, normalize=False)  # uint8 from the workers when it can
    finish = batch_finish(train_transform, device)
    train_set = image_dataset(cfg, cfg.data.train_split, train_transform)
    val_set = eval_dataset(cfg)
    num_classes = num_classes_of(train_set, cfg.model.num_classes)
    workers = int(cfg.data.num_workers)
    loader, sampler = train_loader(train_set, int(cfg.train.batch_size), int(cfg.train.seed), workers, device)
    val_loader = eval_loader(val_set, int(cfg.train.eval_batch_size), workers, device)

    pretrained = read_checkpoint(cfg)
    model = build_classifier(
        cfg.model.size,
        num_classes=num_classes,
        img_size=int(cfg.model.img_size),
        patch_size=int(cfg.model.patch_size),
        global_pool=cfg.model.global_pool,
        drop_path=float(cfg.model.drop_path),
        freeze_pos_embed=bool(cfg.model.freeze_pos_embed),
        rel_pos=use_rel_pos(cfg, pretrained),
        head_init_std=float(cfg.model.head_init_std),
    )
    report = report_load(model, pretrained, out_dir, "finetune")
    model.to(device)

    total_batch = int(cfg.train.batch_size) * int(cfg.train.accum_iter) * world
    lr = float(cfg.optim.lr) if cfg.optim.lr is not None else float(cfg.optim.blr) * total_batch / 256
    groups = layer_decay_param_groups(model, float(cfg.optim.weight_decay), float(cfg.optim.layer_decay))
    fused = bool(cfg.optim.fused)  # fused kernel on CUDA and CPU (torch >= 2.4)
    optimizer = build_adamw(groups, lr=lr, betas=tuple(cfg.optim.betas), fused=fused)
    precision = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    mixup_fn, criterion = build_loss(cfg, num_classes)
    ema = None
    if cfg.ema.enabled:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=float(cfg.ema.decay), use_warmup=bool(cfg.ema.warmup))
    if du.is_main_process():
        print(f"[finetune] {arch_name(cfg)} classes={num_classes} train={len(train_set)} val={len(val_set)} "
              f"world={world} "
              f"total_batch={total_batch} lr={lr:.3g} layer_decay={cfg.optim.layer_decay} precision={precision} "
              f"device={device} checkpoint={cfg.checkpoint}", flush=True)

    manager = CheckpointManager(out_dir, keep=int(cfg.train.keep_checkpoints))
    ddp_model = model
    if world > 1:
        ids = [local_rank] if device.type == "cuda" else None
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    run_model = torch.compile(ddp_model) if cfg.train.compile else ddp_model
    logger = RunLogger(out_dir, enabled=du.is_main_process(), tensorboard=bool(cfg.train.tensorboard))

    def evaluate_all() -> dict[str, float]:
        stats = evaluate(model, val_loader, device, precision)
        if ema is not None:
            ema_stats = evaluate(ema.module, val_loader, device, precision)
            stats.update({f"ema_{k}": v for k, v in ema_stats.items() if k != "count"})
        return stats

    def extra_state() -> dict[str, Any]:
        extra = {"config": OmegaConf.to_container(cfg, resolve=True), "task": "finetune"}
        if ema is not None:
            extra["model_ema"] = ema.module.state_dict()
        return extra

    def after_step() -> None:
        if ema is not None:
            ema.update(model, step=trainer.state.global_step)

    trainer = EvalTrainer(
        run_model, optimizer, loader, sampler, make_step_fn(device, mixup_fn, criterion, finish), loop_config(cfg, lr), device,
        precision, manager, logger, extra_state=extra_state, scaler=scaler, after_step=after_step,
        evaluate=evaluate_all, eval_every=int(cfg.train.eval_every), best_path=out_dir / "best.pth",
    )

    def load_ema(ckpt: dict[str, Any]) -> None:
        if ema is not None and "model_ema" in ckpt:
            ema.module.load_state_dict(ckpt["model_ema"])

    resumed_from = resume_trainer(cfg, trainer, manager, "finetune", on_load=load_ema)
    t0 = time.time()
    try:
        trainer.fit()
        metrics = finish_metrics(cfg, "finetune", trainer, out_dir, {
            "pretrain_method": pretrained.method if pretrained is not None else None,
            "num_classes": num_classes,
            "global_pool": cfg.model.global_pool,
            "layer_decay": float(cfg.optim.layer_decay),
            "lr": lr,
            "total_batch": total_batch,
            "wall_seconds_this_run": time.time() - t0,
            "device": str(device),
            "world_size": world,
            "resumed_from": str(resumed_from) if resumed_from else None,
            "load_report": str(out_dir / "load_report.json") if report is not None else None,
            "best_checkpoint": str(out_dir / "best.pth"),
        })
    except NonFiniteLossError as exc:
        raise NonFiniteLossError(stopped_message(exc, manager)) from None
    finally:
        logger.close()
    du.barrier()
    return metrics


def main(argv: list[str] | None = None) -> int:
    return cli(argv, load_finetune_config, run, "Fine-tune a pretrained ViT (DropPos / MAE recipe)")


if __name__ == "__main__":
    sys.exit(main())
