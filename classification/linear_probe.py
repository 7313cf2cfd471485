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
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, TensorDataset

from pretrain.data.transforms import build_pretrain_transform
from pretrain.engine import distributed as du
from pretrain.engine.run_checkpoints import CheckpointManager
from pretrain.engine.config import ConfigError, load_config, save_config
from pretrain.engine.guard import NonFiniteLossError
from pretrain.engine.logger import RunLogger
from pretrain.engine.trainer import autocast_context, resolve_precision
from pretrain.models.method import MethodOutput

from .data import ensure_builtin, eval_dataset, eval_loader, image_dataset, num_classes_of, train_loader
from .evaluate import evaluate
from .loop import EvalTrainer, seed_everything
from .model import FrozenProbe, ProbeHead, build_classifier, encoder_features
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
    rank, world, local_rank = du.init_distributed()
    device = du.default_device(local_rank)
    seed_everything(int(cfg.train.seed) + rank)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    out_dir = Path(cfg.train.output_dir)
    if du.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
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
    report = report_load(encoder, pretrained, out_dir, "linear_probe")  # asserts: only head (+ fc_norm) are new
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

    total_batch = int(cfg.train.batch_size) * int(cfg.train.accum_iter) * world
    lr = float(cfg.optim.lr) if cfg.optim.lr is not None else float(cfg.optim.blr) * total_batch / 256
    optimizer = build_probe_optimizer(head, cfg, lr)
    if du.is_main_process():
        print(f"[linear_probe] {arch_name(cfg)} pool={cfg.model.global_pool} classes={num_classes} "
              f"train={len(train_images)} "
              f"val={len(val_images)} cached={cached} world={world} total_batch={total_batch} lr={lr:.3g} "
              f"optim={cfg.optim.name} precision={precision} device={device} checkpoint={cfg.checkpoint}", flush=True)

    manager = CheckpointManager(out_dir, keep=int(cfg.train.keep_checkpoints))
    run_head = head
    if world > 1:
        ids = [local_rank] if device.type == "cuda" else None
        run_head = torch.nn.parallel.DistributedDataParallel(head, device_ids=ids)
    logger = RunLogger(out_dir, enabled=du.is_main_process(), tensorboard=bool(cfg.train.tensorboard))
    trainer = EvalTrainer(
        run_head, optimizer, loader, sampler, make_step_fn(device, step_encoder), loop_config(cfg, lr), device,
        precision, manager, logger,
        extra_state=lambda: {"config": OmegaConf.to_container(cfg, resolve=True), "task": "linear_probe"},
        evaluate=lambda: evaluate(eval_model, val_loader, device, precision),
        eval_every=int(cfg.train.eval_every),
        best_path=out_dir / "best.pth",
        best_state=lambda: {"head": head.state_dict()},
    )
    resumed_from = resume_trainer(cfg, trainer, manager, "linear_probe")
    t0 = time.time()
    try:
        trainer.fit()
        metrics = finish_metrics(cfg, "linear_probe", trainer, out_dir, {
            "pretrain_method": pretrained.method if pretrained is not None else None,
            "num_classes": num_classes,
            "global_pool": cfg.model.global_pool,
            "cache_features": cached,
            "optimizer": cfg.optim.name,
            "lr": lr,
            "total_batch": total_batch,
            "feature_seconds": t_feat,
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
    return cli(argv, load_probe_config, run, "Linear-probe a frozen pretrained ViT (MAE protocol)")


if __name__ == "__main__":
    sys.exit(main())
