"""Pretraining entry point: DropPos, MAE or AdPE on an ImageFolder dataset.

Single process:   python -m pretrain.main --config pretrain/configs/droppos_vit_tiny_builtin.yaml
Multi GPU/node:   torchrun --nproc_per_node 8 [--nnodes N --node_rank R --master_addr A] \
                      -m pretrain.main --config pretrain/configs/droppos_vit_base_200ep.yaml
Overrides:        ... train.batch_size=128 optim.blr=1e-4
Kept checkpoints: ... --keep-checkpoints-every 10   (= train.keep_checkpoints_every=10: kept/checkpoint-epoch<E>.pth)

A run directory holds config.yaml (resolved), log.jsonl, tb/, numbered
checkpoints (the run resumes from the newest good one), backbone.pth (the
encoder for transfer, timm keys) and pretrain_metrics.json. With
``train.monitor.every_epochs`` the online monitors (``engine.monitors``: k-NN,
position probe, RankMe) are measured during training; with kept checkpoints,
checkpoint_monitors.csv lists their values per kept checkpoint.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .weights import atomic_torch_save, encoder_state_dict
from .engine import distributed as du
from .engine.cli import run_cli
from .engine.config import ConfigError, load_config
from .engine.hooks import MethodHook
from .engine.keep_checkpoints import build_keep_hook, flag_as_override, markdown_table, write_checkpoint_table
from .engine.mask_noise import MaskNoiseDataset
from .engine.monitors import build_monitor_hook
from .engine.optim import build_adamw
from .engine.run import TrainingRun, loop_config, start_run, total_batch_and_lr
from .engine.sampler import ResumableSampler, SeededDataset
from .engine.trainer import Trainer, resolve_precision
from .data.imagefolder import BadImageTally, skip_message
from .data.loader_timeout import worker_timeout
from .data.transforms import Uint8Normalize
from .models import PretrainMethod, build_method


def build_dataset(cfg: DictConfig, method: PretrainMethod):
    """The training ImageFolder with the method's views (``num_crops`` random crops), generating built-in data if asked."""
    from .data.imagefolder import ImageFolderDataset
    from .data.transforms import build_multicrop_transform, build_pretrain_transform

    root = Path(cfg.data.path)
    if cfg.data.builtin and not (root / cfg.data.split).is_dir():
        from .data.synthetic import make_builtin_dataset

        if du.is_main_process():
            make_builtin_dataset(root.parent, formats=("imagefolder",))
        du.barrier()
    if method.num_crops > 1:  # e.g. MAE+: several random crops of model.img_size px per image, [n, 3, s, s]
        transform = build_multicrop_transform(num_crops=method.num_crops, crop_size=cfg.model.img_size,
                                              scale=method.crop_scale, normalize=False)
    else:  # uint8 crops: a quarter of the bytes through the workers' queues; normalised on the device
        transform = build_pretrain_transform(cfg.model.img_size, scale=tuple(cfg.data.scale), normalize=False)
    ds = ImageFolderDataset(root, split=cfg.data.split, transform=transform, skip_bad=cfg.data.skip_bad)
    if cfg.data.limit and cfg.data.limit < len(ds):
        ds = torch.utils.data.Subset(ds, range(int(cfg.data.limit)))
    return ds


def build_optimizer(
    cfg: DictConfig, method: PretrainMethod, world: int, fused: bool | None = None
) -> tuple[torch.optim.Optimizer, int, float]:
    """(AdamW over the method's parameter groups, total batch, absolute lr) for ``world`` processes.

    ``fused`` None follows ``optim.fused``; the benchmark builds its optimizer here too.
    """
    total_batch, lr = total_batch_and_lr(cfg, world)
    groups = method.param_groups(float(cfg.optim.weight_decay), lr, total_batch, skip_list=bool(cfg.optim.wd_skip_list))
    fused = bool(cfg.optim.fused) if fused is None else fused
    return build_adamw(groups, lr=lr, betas=tuple(cfg.optim.betas), fused=fused), total_batch, lr


def make_step_fn(device: torch.device, method: PretrainMethod, generator: torch.Generator | None = None):
    """One batch -> MethodOutput; images move to the device without blocking (uint8 ones are normalised there).

    A batch ``(imgs, targets, *noise)`` from :class:`MaskNoiseDataset` is masked by
    ``method.masks_from_noise(noise)``; a batch without noise by masks drawn from ``generator``.
    """

    normalize = Uint8Normalize()

    def step(model, batch):
        imgs = batch[0].to(device, non_blocking=True)
        if imgs.dtype == torch.uint8:  # the workers' uint8 crops: normalise on the device, in one pass
            imgs = normalize(imgs)
        if imgs.dim() == 5:  # multi-crop [B, n, C, H, W] -> [B*n, C, H, W]
            imgs = imgs.flatten(0, 1)
        if len(batch) > 2:
            noise = [n.to(device, non_blocking=True).flatten(0, 1) for n in batch[2:]]  # [B, crops, L] -> [B*crops, L]
            return model(imgs, masks=method.masks_from_noise(noise))
        return model(imgs, generator=generator)

    return step


def run(cfg: DictConfig) -> dict:
    """Train with a resolved config; returns the final metrics (also written to JSON)."""
    env = start_run(cfg)
    device, seed, world, rank = env.device, env.seed, env.world, env.rank

    # data and model first: a bad dataset fails before the output folder exists
    model = build_method(cfg).to(device)
    dataset = build_dataset(cfg, model)
    sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    if len(sampler) // int(cfg.train.batch_size) < int(cfg.train.accum_iter):
        raise ConfigError(
            f"{len(dataset)} images give {len(sampler) // int(cfg.train.batch_size)} batches of train.batch_size="
            f"{cfg.train.batch_size} per process (world size {world}), fewer than train.accum_iter={cfg.train.accum_iter}"
        )
    monitor = build_monitor_hook(cfg, model, device)  # its images opened and checked before any output
    # masks from (seed, epoch, index), one row per crop: independent of world size, workers and restarts
    keyed = MaskNoiseDataset(SeededDataset(dataset, seed=seed), seed, model.mask_noise_lengths(), copies=model.num_crops)
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
        timeout=worker_timeout(workers),  # a hung worker fails with a message instead of blocking forever
    )
    run_dir = TrainingRun(cfg, env, "pretrain")
    logger = run_dir.prepare_output()

    optimizer, total_batch, lr = build_optimizer(cfg, model, world)
    precision = resolve_precision(cfg.train.precision, device)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    run_dir.print(f"method={cfg.method} vit-{cfg.model.size}/{cfg.model.patch_size} img={cfg.model.img_size} "
                  f"images={len(dataset)} world={world} total_batch={total_batch} lr={lr:.3g} precision={precision} "
                  f"device={device}")

    tally = BadImageTally(dataset)
    keep = build_keep_hook(cfg, run_dir.out_dir)

    trainer = Trainer(
        run_dir.wrap(model),
        optimizer,
        loader,
        sampler,
        make_step_fn(device, model),
        loop_config(cfg, lr),
        device,
        precision,
        run_dir.manager,
        logger,
        extra_state=run_dir.extra_state(method=cfg.method),
        scaler=scaler,
        hooks=[h for h in (MethodHook(model), monitor, keep) if h is not None],
        rank_extra=tally.state,
    )
    resumed_from = run_dir.resume(trainer, on_load=lambda ckpt: tally.restore(trainer.loaded_rank_extra, rank == 0))

    t0 = time.time()
    state = run_dir.fit(trainer)
    wall = time.time() - t0
    skipped, bad_files = tally.summary(du.all_gather_object(tally.state()))

    metrics = {}
    if du.is_main_process():
        out_dir = run_dir.out_dir
        backbone = encoder_state_dict(model.state_dict())
        arch = {"size": cfg.model.size, "img_size": cfg.model.img_size, "patch_size": cfg.model.patch_size}
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
            "data": {"images": len(dataset), "skip_bad": bool(cfg.data.skip_bad), **skipped},
        }
        run_dir.write_metrics("pretrain_metrics.json", metrics)
        latest = run_dir.manager.list()
        if monitor is not None or keep is not None:
            final = (state.epoch, latest[0]) if latest and state.iter_in_epoch == 0 else None
            rows = write_checkpoint_table(out_dir, state.history, final)
            print(f"[pretrain] checkpoints and their signals (checkpoint_monitors.csv):\n"
                  f"{markdown_table(rows)}", flush=True)
        write_backbone(out_dir / "backbone.pth", backbone, cfg, arch, latest)
        if cfg.data.skip_bad or skipped["bad_image_skips"]:
            print(f"[pretrain] {skip_message(skipped, bad_files)}", flush=True)
        print(f"[pretrain] done: {json.dumps({k: v for k, v in last.items()})}", flush=True)
    du.barrier()
    return metrics


def write_backbone(path: Path, backbone: dict, cfg: DictConfig, arch: dict, checkpoints: list[Path]) -> None:
    """``backbone.pth`` (timm names) with its card (method, recipe, epochs, sizes, the source checkpoint's
    sha256, the metrics), also written beside it as ``backbone.pth.card.json``."""
    from .weights.card import build_card, write_card

    ckpt = {"config": OmegaConf.to_container(cfg, resolve=True), "method": cfg.method, "arch": arch}
    card = build_card(checkpoints[0], ckpt, backbone, "ours", "timm") if checkpoints else None
    atomic_torch_save({"model": backbone, "method": cfg.method, "format": "droppos-backbone", "arch": arch,
                       **({"card": card} if card else {})}, path)
    if card:
        write_card(path, card)


def main(argv: list[str] | None = None) -> int:
    """CLI: exit 0 on success, 2 on a configuration error, 1 on a reported failure."""
    try:
        argv = flag_as_override(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:  # the flag without its number
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    return run_cli(argv, "DropPos / MAE / AdPE pretraining", load_config, run)


if __name__ == "__main__":
    sys.exit(main())
