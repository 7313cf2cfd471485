"""Pretraining entry point: DropPos, MAE or AdPE on an ImageFolder dataset.

Single process:   python -m pretrain.main --config pretrain/configs/droppos_vit_tiny_builtin.yaml
Multi GPU/node:   torchrun --nproc_per_node 8 [--nnodes N --node_rank R --master_addr A] \
                      -m pretrain.main --config pretrain/configs/droppos_vit_base_200ep.yaml
Overrides:        ... train.batch_size=128 optim.blr=1e-4

A run directory holds config.yaml (resolved), log.jsonl, tb/, numbered
checkpoints (the run resumes from the newest good one), backbone.pth (the
encoder for transfer, timm keys) and pretrain_metrics.json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoints import CheckpointError, atomic_torch_save, encoder_state_dict
from .engine import distributed as du
from .engine.checkpointing import CheckpointManager, load_resume_file
from .engine.config import ConfigError, load_config, save_config
from .engine.guard import NonFiniteLossError
from .engine.logger import RunLogger
from .engine.optim import build_adamw, pretrain_param_groups
from .engine.sampler import ResumableSampler, SeededDataset
from .engine.trainer import LoopConfig, Trainer, resolve_precision
from .models import DropPos, MAE, create_vit


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("DropPos / MAE / AdPE pretraining", add_help=True)
    p.add_argument("--config", action="append", default=[], help="recipe YAML (repeatable; later wins)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("opts", nargs="*", help="overrides as key=value (e.g. train.epochs=10)")
    return p


def build_method(cfg: DictConfig) -> torch.nn.Module:
    """The pretraining model named by ``cfg.method`` around a fresh ViT."""
    encoder = create_vit(
        cfg.model.size,
        img_size=cfg.model.img_size,
        patch_size=cfg.model.patch_size,
        drop_path_rate=cfg.model.drop_path,
    )
    if cfg.method == "droppos":
        d = cfg.droppos
        return DropPos(
            encoder,
            mask_ratio=d.mask_ratio,
            pos_drop_ratio=d.pos_drop_ratio,
            decoder_dim=d.decoder_dim,
            decoder_depth=d.decoder_depth,
            decoder_heads=d.decoder_heads,
            sigma=d.sigma,
            sigma_decay=d.sigma_decay,
            sigma_per_epoch=d.sigma_per_epoch,
            tau=d.tau,
            attentive=d.attentive,
            smoothing=d.smoothing,
        )
    if cfg.method == "mae":
        m = cfg.mae
        return MAE(
            encoder,
            mask_ratio=m.mask_ratio,
            decoder_dim=m.decoder_dim,
            decoder_depth=m.decoder_depth,
            decoder_heads=m.decoder_heads,
            norm_pix_loss=m.norm_pix_loss,
        )
    if cfg.method == "adpe":
        from .models.adpe import build_adpe  # AdPE lives in its own module

        return build_adpe(encoder, cfg)
    raise ConfigError(f"unknown method {cfg.method!r}")


def build_dataset(cfg: DictConfig):
    """The training ImageFolder with the method's transform, generating built-in data if asked."""
    from .data.imagefolder import ImageFolderDataset
    from .data.transforms import build_multicrop_transform, build_pretrain_transform

    root = Path(cfg.data.path)
    if cfg.data.builtin and not (root / cfg.data.split).is_dir():
        from .data.synthetic import make_builtin_dataset

        if du.is_main_process():
            make_builtin_dataset(root.parent, formats=("imagefolder",))
        du.barrier()
    if cfg.method == "adpe" and int(OmegaConf.select(cfg, "adpe.num_crops", default=1) or 1) > 1:
        a = cfg.adpe
        transform = build_multicrop_transform(num_crops=a.num_crops, size=cfg.model.img_size, scale=tuple(a.crop_scale))
    else:
        transform = build_pretrain_transform(cfg.model.img_size, scale=tuple(cfg.data.scale))
    ds = ImageFolderDataset(root, split=cfg.data.split, transform=transform, skip_bad=cfg.data.skip_bad)
    if cfg.data.limit and cfg.data.limit < len(ds):
        ds = torch.utils.data.Subset(ds, range(int(cfg.data.limit)))
    return ds


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_step_fn(device: torch.device, generator: torch.Generator):
    """One batch -> MethodOutput; images move to the device without blocking."""

    def step(model, batch):
        imgs = batch[0].to(device, non_blocking=True)
        if imgs.dim() == 5:  # multi-crop [B, n, C, H, W] -> [B*n, C, H, W]
            imgs = imgs.flatten(0, 1)
        return model(imgs, generator=generator)

    return step


def run(cfg: DictConfig) -> dict:
    """Train with a resolved config; returns the final metrics (also written to JSON)."""
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

    dataset = build_dataset(cfg)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=int(cfg.train.seed), drop_last=True)
    workers = int(cfg.data.num_workers)
    loader = torch.utils.data.DataLoader(
        SeededDataset(dataset, seed=int(cfg.train.seed)),
        batch_size=int(cfg.train.batch_size),
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )

    model = build_method(cfg).to(device)
    total_batch = int(cfg.train.batch_size) * int(cfg.train.accum_iter) * world
    lr = float(cfg.optim.lr) if cfg.optim.lr is not None else float(cfg.optim.blr) * total_batch / 256
    groups = model.param_groups(float(cfg.optim.weight_decay), lr, cfg) if hasattr(model, "param_groups") else pretrain_param_groups(model, float(cfg.optim.weight_decay))
    optimizer = build_adamw(groups, lr=lr, betas=tuple(cfg.optim.betas), fused=bool(cfg.optim.fused) and device.type == "cuda")
    precision = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if du.is_main_process():
        print(f"[pretrain] method={cfg.method} vit-{cfg.model.size}/{cfg.model.patch_size} img={cfg.model.img_size} "
              f"images={len(dataset)} world={world} total_batch={total_batch} lr={lr:.3g} precision={precision} device={device}", flush=True)

    generator = torch.Generator(device=device)
    generator.manual_seed(int(cfg.train.seed) * 1000 + rank)
    manager = CheckpointManager(out_dir, keep=int(cfg.train.keep_checkpoints))
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    run_model = torch.compile(ddp_model) if cfg.train.compile else ddp_model
    logger = RunLogger(out_dir, enabled=du.is_main_process(), tensorboard=bool(cfg.train.tensorboard))
    loop = LoopConfig(
        epochs=int(cfg.train.epochs),
        lr=lr,
        min_lr=float(cfg.optim.min_lr),
        warmup_epochs=float(cfg.optim.warmup_epochs),
        accum_iter=int(cfg.train.accum_iter),
        clip_grad=cfg.optim.clip_grad,
        clip_mode=cfg.optim.clip_mode,
        log_every=int(cfg.train.log_every),
        save_every_steps=int(cfg.train.save_every_steps),
        max_steps=int(cfg.train.max_steps),
        progress=bool(cfg.train.progress),
    )
    trainer = Trainer(
        run_model,
        optimizer,
        loader,
        sampler,
        make_step_fn(device, generator),
        loop,
        device,
        precision,
        manager,
        logger,
        extra_state=lambda: {"config": OmegaConf.to_container(cfg, resolve=True), "method": cfg.method, "generator": generator.get_state()},
        scaler=scaler,
        after_step=getattr(model, "after_optimizer_step", None),
    )

    resumed_from = None
    if cfg.train.resume not in (None, "none", ""):
        if cfg.train.resume == "auto":
            ckpt, resumed_from = manager.load_latest()
        else:
            ckpt, resumed_from = load_resume_file(cfg.train.resume), Path(cfg.train.resume)
        if ckpt is not None:
            trainer.load_state_dict(ckpt)
            if "generator" in ckpt:
                generator.set_state(ckpt["generator"].cpu() if hasattr(ckpt["generator"], "cpu") else ckpt["generator"])
            if du.is_main_process():
                print(f"[pretrain] resumed from {resumed_from} at epoch {trainer.state.epoch} "
                      f"(iteration {trainer.state.iter_in_epoch}, step {trainer.state.global_step})", flush=True)

    t0 = time.time()
    try:
        state = trainer.fit()
    except NonFiniteLossError as exc:
        last = manager.list()
        msg = f"{exc}; stopped without saving: the last good checkpoint is {last[0] if last else '(none yet)'}"
        raise NonFiniteLossError(msg) from None
    finally:
        logger.close()
    wall = time.time() - t0

    metrics = {}
    if du.is_main_process():
        backbone = encoder_state_dict(model.state_dict())
        atomic_torch_save({"model": backbone, "method": cfg.method, "format": "droppos-backbone",
                           "arch": {"size": cfg.model.size, "img_size": cfg.model.img_size, "patch_size": cfg.model.patch_size}},
                          out_dir / "backbone.pth")
        last = state.history[-1] if state.history else {}
        metrics = {
            "task": "pretrain",
            "method": cfg.method,
            "arch": f"vit_{cfg.model.size}_patch{cfg.model.patch_size}_{cfg.model.img_size}",
            "epochs": int(cfg.train.epochs),
            "epochs_done": state.epoch,
            "steps": state.global_step,
            "final": last,
            "history": state.history,
            "wall_seconds_this_run": wall,
            "device": str(device),
            "world_size": world,
            "cost": {"gpu_hours": wall * world / 3600 if device.type == "cuda" else 0.0,
                     "cpu_minutes": wall / 60 if device.type == "cpu" else 0.0},
            "resumed_from": str(resumed_from) if resumed_from else None,
            "backbone": str(out_dir / "backbone.pth"),
        }
        tmp = out_dir / "pretrain_metrics.json.tmp"
        tmp.write_text(json.dumps(metrics, indent=2))
        os.replace(tmp, out_dir / "pretrain_metrics.json")
        print(f"[pretrain] done: {json.dumps({k: v for k, v in last.items()})}", flush=True)
    du.barrier()
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = load_config(args.config or None, args.opts)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        run(cfg)
    except (CheckpointError, NonFiniteLossError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        du.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
