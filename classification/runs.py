"""What the fine-tuning and linear-probing entry points share: checks, checkpoint loading, resume, metrics, CLI.

Both protocols run the same way: read the pretrained encoder (any format), build the
classifier (relative-position attention if the checkpoint has AdPE tables), load and
report, train with the engine's Trainer plus per-epoch evaluation, resume from the
run directory, and write ``classification_metrics.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from pretrain.weights import CheckpointError
from pretrain.engine import distributed as du
from pretrain.engine.run_checkpoints import CheckpointManager, load_resume_file
from pretrain.engine.config import ConfigError
from pretrain.engine.guard import NonFiniteLossError
from pretrain.engine.trainer import LoopConfig

from .load import LoadReport, PretrainedEncoder, load_pretrained, read_pretrained
from .loop import EvalTrainer, final_scores, write_metrics
from .model import needs_rel_pos


def validate_common(cfg: DictConfig) -> None:
    """Checks shared by fine-tuning and linear probing."""
    img, patch = int(cfg.model.img_size), int(cfg.model.patch_size)
    if img <= 0 or patch <= 0 or img % patch != 0:
        raise ConfigError(f"model.img_size ({img}) must be a positive multiple of model.patch_size ({patch})")
    if cfg.model.global_pool not in ("avg", "token"):
        raise ConfigError(f"model.global_pool must be 'avg' or 'token', got {cfg.model.global_pool!r}")
    if cfg.model.rel_pos not in (None, True, False):
        raise ConfigError(f"model.rel_pos must be null (auto), true or false, got {cfg.model.rel_pos!r}")
    for key in ("train.epochs", "train.batch_size", "train.accum_iter", "train.eval_batch_size", "train.eval_every"):
        if int(OmegaConf.select(cfg, key)) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {OmegaConf.select(cfg, key)}")
    if cfg.train.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16, fp16 or fp32, got {cfg.train.precision!r}")


# -------------------------------------------------------------- shared setup
def read_checkpoint(cfg: DictConfig) -> PretrainedEncoder | None:
    return read_pretrained(cfg.checkpoint) if cfg.checkpoint not in (None, "", "none") else None


def use_rel_pos(cfg: DictConfig, pretrained: PretrainedEncoder | None) -> bool:
    """Relative-position attention: forced by model.rel_pos, else detected from the checkpoint keys."""
    if cfg.model.rel_pos is not None:
        return bool(cfg.model.rel_pos)
    return pretrained is not None and needs_rel_pos(pretrained.state)


def report_load(model: nn.Module, pretrained: PretrainedEncoder | None, out_dir: Path, tag: str) -> LoadReport | None:
    """Load the pretrained encoder (if any), print the report and save it in the run dir."""
    if pretrained is None:
        if du.is_main_process():
            print(f"[{tag}] no checkpoint: training from a random initialisation", flush=True)
        return None
    report = load_pretrained(model, pretrained)
    if du.is_main_process():
        print(report.summary(), flush=True)
        report.save(out_dir)
    return report


def arch_name(cfg: DictConfig) -> str:
    return f"vit_{cfg.model.size}_patch{cfg.model.patch_size}_{cfg.model.img_size}"


def resume_trainer(
    cfg: DictConfig,
    trainer: EvalTrainer,
    manager: CheckpointManager,
    tag: str,
    on_load=None,
) -> Path | None:
    """Resume from train.resume (auto = newest good checkpoint of the run dir)."""
    if cfg.train.resume in (None, "none", ""):
        return None
    if cfg.train.resume == "auto":
        ckpt, path = manager.load_latest()
    else:
        ckpt, path = load_resume_file(cfg.train.resume), Path(cfg.train.resume)
    if ckpt is None:
        return None
    trainer.load_state_dict(ckpt)
    if on_load is not None:
        on_load(ckpt)
    if du.is_main_process():
        print(f"[{tag}] resumed from {path} at epoch {trainer.state.epoch} (iteration {trainer.state.iter_in_epoch}, "
              f"step {trainer.state.global_step})", flush=True)
    return path


def loop_config(cfg: DictConfig, lr: float) -> LoopConfig:
    return LoopConfig(
        epochs=int(cfg.train.epochs),
        lr=lr,
        min_lr=float(cfg.optim.min_lr),
        warmup_epochs=float(cfg.optim.warmup_epochs),
        accum_iter=int(cfg.train.accum_iter),
        clip_grad=OmegaConf.select(cfg, "optim.clip_grad"),
        clip_mode=OmegaConf.select(cfg, "optim.clip_mode", default="global"),
        log_every=int(cfg.train.log_every),
        save_every_steps=int(cfg.train.save_every_steps),
        max_steps=int(cfg.train.max_steps),
        progress=bool(cfg.train.progress),
    )


def stopped_message(exc: Exception, manager: CheckpointManager) -> str:
    """A non-finite loss stopped the run: say which checkpoint is the last good one."""
    last = manager.list()
    return f"{exc}; stopped without saving: the last good checkpoint is {last[0] if last else '(none yet)'}"


def finish_metrics(
    cfg: DictConfig,
    task: str,
    trainer: EvalTrainer,
    out_dir: Path,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate once more if the run stopped before any evaluation; write classification_metrics.json."""
    history = trainer.state.history
    last, best = final_scores(history)
    if last is None or trainer.state.epoch < int(cfg.train.epochs):  # stopped early (max_steps)
        last = trainer.evaluate_now()
        best = last["top1"] if best is None else max(best, last["top1"])
    metrics = {
        "task": task,
        "top1": last["top1"],
        "top5": last["top5"],
        "best_top1": best,
        "epochs": int(cfg.train.epochs),
        "epochs_done": trainer.state.epoch,
        "steps": trainer.state.global_step,
        "checkpoint": str(cfg.checkpoint) if cfg.checkpoint not in (None, "", "none") else None,
        "arch": arch_name(cfg),
        "history": history,
        **extra,
    }
    write_metrics(out_dir, metrics)
    if du.is_main_process():
        print(f"[{task}] done: top1={metrics['top1']:.2f} top5={metrics['top5']:.2f} best_top1={best:.2f} "
              f"-> {out_dir / 'classification_metrics.json'}", flush=True)
    return metrics


# --------------------------------------------------------------------- CLI
def get_args_parser(description: str = "Fine-tune a pretrained ViT (DropPos / MAE recipe)") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description, add_help=True)
    p.add_argument("--config", action="append", default=[], help="recipe YAML (repeatable; later wins)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("opts", nargs="*", help="overrides as key=value (e.g. checkpoint=path train.epochs=10)")
    return p


def cli(argv: list[str] | None, load, run_fn, description: str) -> int:
    """Shared command-line driver of finetune and linear_probe."""
    args = get_args_parser(description).parse_args(argv)
    try:
        cfg = load(args.config or None, args.opts)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    try:
        run_fn(cfg)
    except (CheckpointError, NonFiniteLossError, FileNotFoundError, NotImplementedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        du.cleanup()
    return 0


