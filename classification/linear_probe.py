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
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import Dataset, TensorDataset

from pretrain.data.transforms import build_pretrain_transform
from pretrain.engine import distributed as du
from pretrain.engine.cli import run_cli
from pretrain.engine.config import ConfigError, load_config
from pretrain.engine.run import TrainingRun, start_run, total_batch_and_lr
from pretrain.engine.trainer import autocast_context, resolve_precision
from pretrain.models.method import MethodOutput

from .data import ensure_builtin, eval_dataset, eval_loader, image_dataset, num_classes_of, train_loader
from .evaluate import evaluate
from .loop import EvaluationHook
from .model import FrozenProbe, ProbeHead, build_classifier, encoder_features
from .runs import arch_name, read_checkpoint, report_load, train_and_finish, use_rel_pos, validate_common

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


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: str,
) -> TensorDataset:
    """Encode every image once (each rank its share, then gathered).

    Returns TensorDataset(features [N, D] float32 on the CPU, labels [N]) in dataset order.
    """
    loader = eval_loader(dataset, batch_size, workers, device)
    feats, labels = [], []
    for images, target in loader:
        with autocast_context(device, precision):
            feats.append(encoder_features(encoder, images.to(device, non_blocking=True)).float())
        labels.append(target.to(device))
    dim = int(getattr(encoder, "num_features", encoder.embed_dim))
    f = torch.cat(feats) if feats else torch.zeros(0, dim, device=device)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    world = du.get_world_size()
    if world > 1:  # shard r holds samples r, r + world, ...: gather padded shards and interleave back
        n = len(dataset)
        per = -(-n // world)
        f = torch.cat([f, f.new_zeros(per - len(f), dim)])
        y = torch.cat([y, y.new_zeros(per - len(y))])
        fs, ys = [torch.empty_like(f) for _ in range(world)], [torch.empty_like(y) for _ in range(world)]
        dist.all_gather(fs, f)
        dist.all_gather(ys, y)
        full_f, full_y = f.new_empty(n, dim), y.new_empty(n)
        for r in range(world):
            count = len(range(r, n, world))
            full_f[r::world], full_y[r::world] = fs[r][:count], ys[r][:count]
        f, y = full_f, full_y
    return TensorDataset(f.cpu(), y.cpu())


def make_step_fn(device: torch.device, encoder: nn.Module | None):
    """Batch -> MethodOutput; images go through the frozen ``encoder`` first unless features are cached."""

    def step(head: nn.Module, batch) -> MethodOutput:
        x = batch[0].to(device, non_blocking=True)
        target = batch[1].to(device, non_blocking=True)
        if encoder is not None:
            with torch.no_grad():
                x = encoder_features(encoder, x)
        logits = head(x).float()
        loss = F.cross_entropy(logits, target)
        acc1 = (logits.detach().argmax(1) == target).float().mean() * 100
        return MethodOutput(loss=loss, metrics={"loss": loss.detach(), "acc1": acc1}, outputs={})

    return step


def run(cfg: DictConfig) -> dict[str, Any]:
    """Linear-probe with a resolved config; returns the metrics (also written to classification_metrics.json)."""
    env = start_run(cfg)
    device, world = env.device, env.world
    precision = resolve_precision(cfg.train.precision, device)
    workers = int(cfg.data.num_workers)
    cached = bool(cfg.probe.cache_features)

    ensure_builtin(cfg)
    if cached:
        train_images = eval_dataset(cfg, cfg.data.train_split)  # no augmentation: each image encoded once
    else:
        train_images = image_dataset(cfg, cfg.data.train_split, build_pretrain_transform(
            int(cfg.model.img_size), scale=tuple(cfg.probe.scale), hflip=float(cfg.probe.hflip)))
    val_images = eval_dataset(cfg)
    num_classes = num_classes_of(train_images, cfg.model.num_classes)

    run_dir = TrainingRun(cfg, env, "linear_probe")
    run_dir.prepare_output()
    pretrained = read_checkpoint(cfg)
    encoder = build_classifier(
        cfg.model.size,
        num_classes=num_classes,
        img_size=int(cfg.model.img_size),
        patch_size=int(cfg.model.patch_size),
        global_pool=cfg.model.global_pool,
        drop_path=0.0,
        rel_pos=use_rel_pos(cfg, pretrained),
    )
    report = report_load(encoder, pretrained, run_dir.out_dir, "linear_probe")  # asserts: only head (+ fc_norm) are new
    encoder.head = nn.Identity()  # features only; the probe head lives apart
    encoder.requires_grad_(False).eval().to(device)
    head = ProbeHead(encoder.num_features, num_classes, init_std=float(cfg.model.head_init_std)).to(device)

    t_feat = time.time()
    if cached:
        fbs = int(cfg.probe.feature_batch_size)
        train_set = extract_features(encoder, train_images, fbs, workers, device, precision)
        val_set = extract_features(encoder, val_images, fbs, workers, device, precision)
        t_feat = time.time() - t_feat
        if du.is_main_process():
            print(f"[linear_probe] cached features: train {tuple(train_set.tensors[0].shape)}, "
                  f"val {tuple(val_set.tensors[0].shape)} in {t_feat:.1f}s", flush=True)
        loader, sampler = train_loader(train_set, int(cfg.train.batch_size), int(cfg.train.seed), 0, device,
                                       keyed_only=True)
        val_loader = eval_loader(val_set, int(cfg.train.eval_batch_size), 0, device)
        eval_model: nn.Module = head
        step_encoder = None
    else:
        t_feat = 0.0
        loader, sampler = train_loader(train_images, int(cfg.train.batch_size), int(cfg.train.seed), workers, device)
        val_loader = eval_loader(val_images, int(cfg.train.eval_batch_size), workers, device)
        eval_model = FrozenProbe(encoder, head)
        step_encoder = encoder

    total_batch, lr = total_batch_and_lr(cfg, world)
    optimizer = build_probe_optimizer(head, cfg, lr)
    run_dir.print(f"{arch_name(cfg)} pool={cfg.model.global_pool} classes={num_classes} train={len(train_images)} "
                  f"val={len(val_images)} cached={cached} world={world} total_batch={total_batch} lr={lr:.3g} "
                  f"optim={cfg.optim.name} precision={precision} device={device} checkpoint={cfg.checkpoint}")
    evaluation = EvaluationHook(lambda: evaluate(eval_model, val_loader, device, precision), int(cfg.train.eval_every),
                                run_dir.out_dir / "best.pth", best_state=lambda trainer: {"head": head.state_dict()})
    return train_and_finish(
        cfg, env, run_dir, model=head, optimizer=optimizer, loader=loader, sampler=sampler,
        step_fn=make_step_fn(device, step_encoder), lr=lr, precision=precision, evaluation=evaluation,
        pretrained=pretrained, report=report, num_classes=num_classes, total_batch=total_batch,
        metrics={
            "cache_features": cached,
            "optimizer": cfg.optim.name,
            "feature_seconds": t_feat,
        },
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, "Linear-probe a frozen pretrained ViT (MAE protocol)", load_probe_config, run)


if __name__ == "__main__":
    sys.exit(main())
