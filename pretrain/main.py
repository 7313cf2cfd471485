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
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .atomic import atomic_write_json
from .weights import CheckpointError, atomic_torch_save, encoder_state_dict
from .engine import distributed as du
from .engine.run_checkpoints import CheckpointManager, load_resume_file
from .engine.config import ConfigError, load_config, save_config
from .engine.guard import NonFiniteLossError
from .engine.logger import RunLogger
from .engine.mask_noise import MaskNoiseDataset, keep_from_noise
from .engine.optim import build_adamw, pretrain_param_groups
from .engine.sampler import ResumableSampler, SeededDataset
from .engine.trainer import LoopConfig, Trainer, resolve_precision
from .data.imagefolder import BadImageError
from .data.transforms import Uint8Normalize
from .models import DropPos, DropPosMasks, MAE, create_vit


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("DropPos / MAE / AdPE pretraining", add_help=True)
    p.add_argument("--config", action="append", default=[], help="recipe YAML (repeatable; later wins)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("opts", nargs="*", help="overrides as key=value (e.g. train.epochs=10)")
    return p


def build_method(cfg: DictConfig) -> torch.nn.Module:
    """The pretraining model named by ``cfg.method`` around a fresh ViT."""
    if cfg.method == "adpe":
        from .models.adpe import build_adpe  # AdPE lives in its own module

        return build_adpe(None, cfg)  # builds its ViT (relative-position blocks for adpe.pos=rel)
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
    if cfg.method == "adpe":  # MAE+: adpe.num_crops random crops of model.img_size px per image, [n, 3, s, s]
        a = cfg.adpe
        transform = build_multicrop_transform(num_crops=int(a.num_crops), crop_size=cfg.model.img_size,
                                              scale=tuple(a.crop_scale), normalize=False)
    else:  # uint8 crops: a quarter of the bytes through the workers' queues; normalised on the device
        transform = build_pretrain_transform(cfg.model.img_size, scale=tuple(cfg.data.scale), normalize=False)
    ds = ImageFolderDataset(root, split=cfg.data.split, transform=transform, skip_bad=cfg.data.skip_bad)
    if cfg.data.limit and cfg.data.limit < len(ds):
        ds = torch.utils.data.Subset(ds, range(int(cfg.data.limit)))
    return ds


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mask_noise_lengths(model: torch.nn.Module) -> tuple[int, ...] | None:
    """Per-image noise vectors that define the model's masks (``engine.mask_noise``).

    DropPos and MAE get masks that are a function of (seed, epoch, sample index), so
    results do not depend on the world size, worker count or restarts. None: the
    model draws its masks from the per-rank generator.
    """
    if isinstance(model, DropPos):
        return (model.encoder.num_patches, model.num_visible)
    if isinstance(model, MAE):
        return (model.encoder.num_patches,)
    return None


def masks_from_noise(model: torch.nn.Module, noise: list[torch.Tensor]) -> dict[str, Any]:
    """Forward keyword arguments with the masks that per-sample ``noise`` ([B, L] each) selects."""
    if isinstance(model, DropPos):
        ids_keep, _ = keep_from_noise(noise[0], model.num_visible)
        _, pos_dropped = keep_from_noise(noise[1], model.num_pos_kept)
        return {"masks": DropPosMasks(ids_keep=ids_keep, pos_dropped=pos_dropped)}
    if isinstance(model, MAE):
        return {"ids_keep": keep_from_noise(noise[0], model.num_visible)[0]}
    raise TypeError(f"{type(model).__name__} takes no per-sample mask noise")


def make_step_fn(
    device: torch.device,
    generator: torch.Generator,
    noise_to_kwargs: Callable[[list[torch.Tensor]], dict[str, Any]] | None = None,
):
    """One batch -> MethodOutput; images move to the device without blocking (uint8 ones are normalised there).

    A batch ``(imgs, targets, *noise)`` from :class:`MaskNoiseDataset` is masked by
    ``noise_to_kwargs(noise)``; otherwise the model draws masks from ``generator``.
    """

    normalize = Uint8Normalize()

    def step(model, batch):
        imgs = batch[0].to(device, non_blocking=True)
        if imgs.dtype == torch.uint8:  # the workers' uint8 crops: normalise on the device, in one pass
            imgs = normalize(imgs)
        if imgs.dim() == 5:  # multi-crop [B, n, C, H, W] -> [B*n, C, H, W]
            imgs = imgs.flatten(0, 1)
        if noise_to_kwargs is not None and len(batch) > 2:
            noise = [n.to(device, non_blocking=True).flatten(0, 1) for n in batch[2:]]  # [B, copies, L] -> [B*copies, L]
            return model(imgs, **noise_to_kwargs(noise))
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
    seed = int(cfg.train.seed)

    # data and model first: a bad dataset fails before the output folder exists
    dataset = build_dataset(cfg)
    base_dataset = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    model = build_method(cfg).to(device)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    if len(sampler) // int(cfg.train.batch_size) < int(cfg.train.accum_iter):
        raise ConfigError(
            f"{len(dataset)} images give {len(sampler) // int(cfg.train.batch_size)} batches of train.batch_size="
            f"{cfg.train.batch_size} per process (world size {world}), fewer than train.accum_iter={cfg.train.accum_iter}"
        )
    keyed = SeededDataset(dataset, seed=seed)
    noise_lengths = mask_noise_lengths(model)
    if noise_lengths is not None:  # masks from (seed, epoch, index): independent of world size and restarts
        keyed = MaskNoiseDataset(keyed, seed, noise_lengths)
    workers = int(cfg.data.num_workers)
    loader = torch.utils.data.DataLoader(
        keyed,
        batch_size=int(cfg.train.batch_size),
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),  # worker seeds: keep the global RNG for the model
    )
    if du.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")

    total_batch = int(cfg.train.batch_size) * int(cfg.train.accum_iter) * world
    lr = float(cfg.optim.lr) if cfg.optim.lr is not None else float(cfg.optim.blr) * total_batch / 256
    groups = model.param_groups(float(cfg.optim.weight_decay), lr, cfg) if hasattr(model, "param_groups") else pretrain_param_groups(model, float(cfg.optim.weight_decay))
    optimizer = build_adamw(groups, lr=lr, betas=tuple(cfg.optim.betas), fused=bool(cfg.optim.fused))
    precision = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    if du.is_main_process():
        print(f"[pretrain] method={cfg.method} vit-{cfg.model.size}/{cfg.model.patch_size} img={cfg.model.img_size} "
              f"images={len(dataset)} world={world} total_batch={total_batch} lr={lr:.3g} precision={precision} device={device}", flush=True)

    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1000 + rank)
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
        make_step_fn(device, generator, (lambda noise: masks_from_noise(model, noise)) if noise_lengths else None),
        loop,
        device,
        precision,
        manager,
        logger,
        extra_state=lambda: {"config": OmegaConf.to_container(cfg, resolve=True), "method": cfg.method},
        scaler=scaler,
        after_step=getattr(model, "after_optimizer_step", None),
        generators={"mask": generator},
        rank_extra=lambda: {"bad_image_skips": int(getattr(base_dataset, "num_skipped", 0)) + (skips_before if rank == 0 else 0)},
    )

    resumed_from, skips_before, log_records = None, 0, None
    if du.is_main_process():
        manager.remove_stale_temp_files()  # left by a run killed while writing
    if cfg.train.resume not in (None, "none", ""):
        if cfg.train.resume == "auto":
            ckpt, resumed_from = manager.load_latest(quarantine=du.is_main_process())
        else:
            ckpt, resumed_from = load_resume_file(cfg.train.resume), Path(cfg.train.resume)
        if ckpt is not None:
            trainer.load_state_dict(ckpt)
            skips_before = sum(int(r.get("bad_image_skips", 0)) for r in trainer.loaded_rank_extra)
            if Path(resumed_from).resolve().parent == out_dir.resolve():  # its count is about this log
                log_records = ckpt.get("log_records")
            del ckpt
            if du.is_main_process():
                print(f"[pretrain] resumed from {resumed_from} at epoch {trainer.state.epoch} "
                      f"(iteration {trainer.state.iter_in_epoch}, step {trainer.state.global_step})", flush=True)
    if du.is_main_process():
        # steps after the restart point are trained again: forget what a killed run wrote about them
        manager.discard_newer(trainer.state.global_step)
        dropped = logger.truncate(trainer.state.global_step, log_records)
        if dropped:
            print(f"[pretrain] log.jsonl: dropped {dropped} records after step {trainer.state.global_step} "
                  "(written after the last checkpoint; they are trained again)", flush=True)
    du.barrier()

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
    skips = int(getattr(base_dataset, "num_skipped", 0)) + (skips_before if rank == 0 else 0)
    skips = int(round(float(du.all_reduce_mean(torch.tensor(float(skips), device=device))) * world))

    metrics = {}
    if du.is_main_process():
        backbone = encoder_state_dict(model.state_dict())
        atomic_torch_save({"model": backbone, "method": cfg.method, "format": "droppos-backbone",
                           "arch": {"size": cfg.model.size, "img_size": cfg.model.img_size, "patch_size": cfg.model.patch_size}},
                          out_dir / "backbone.pth")
        last = state.history[-1] if state.history else {}
        total = sum(float(h.get("seconds", 0.0)) for h in state.history) or wall
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
            # wall time of the epochs over every run that built this model (resumes included)
            "wall_seconds_total": total,
            "cost": {"gpu_hours": total * world / 3600 if device.type == "cuda" else 0.0,
                     "cpu_minutes": total / 60 if device.type == "cpu" else 0.0},
            "resumed_from": str(resumed_from) if resumed_from else None,
            "backbone": str(out_dir / "backbone.pth"),
            "data": {"images": len(dataset), "skip_bad": bool(cfg.data.skip_bad), "bad_image_skips": skips},
        }
        atomic_write_json(out_dir / "pretrain_metrics.json", metrics)
        if cfg.data.skip_bad or skips:
            seen = sorted(getattr(base_dataset, "bad_files", ()))
            names = f": {', '.join(seen[:5])}{' ...' if len(seen) > 5 else ''}" if seen else ""
            print(f"[pretrain] skipped {skips} reads of unreadable images (data.skip_bad=true){names}", flush=True)
        print(f"[pretrain] done: {json.dumps({k: v for k, v in last.items()})}", flush=True)
    du.barrier()
    return metrics


def explain_failure(exc: BaseException) -> str | None:
    """A one-paragraph message for a known kind of failure, or None (then the traceback is shown)."""
    if isinstance(exc, BadImageError):
        return f"{exc} (set data.skip_bad=true to skip unreadable images)"
    if isinstance(exc, (CheckpointError, NonFiniteLossError, OSError)):
        return str(exc)
    text = str(exc)
    if isinstance(exc, RuntimeError) and "BadImageError" in text:  # re-raised from a DataLoader worker
        lines = [ln for ln in text.splitlines() if "BadImageError: " in ln]
        if lines:
            return f"{lines[-1].split('BadImageError: ', 1)[1]} (in a DataLoader worker; set data.skip_bad=true to skip unreadable images)"
    if isinstance(exc, RuntimeError) and du.get_world_size() > 1:
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return (f"distributed training failed on rank {du.get_rank()} of {du.get_world_size()}: {first} "
                "(another process probably stopped or timed out; see its output)")
    return None


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 on success, 2 on a configuration error, 1 on a reported failure."""
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
    except ConfigError as exc:  # found once the data is known (e.g. too few batches)
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - known failures get a clear message, others the traceback
        message = explain_failure(exc)
        if message is None:
            raise
        if du.get_world_size() > 1 and not isinstance(exc, (NonFiniteLossError, BadImageError)):
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return 1
    finally:
        du.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
