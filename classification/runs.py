"""What the fine-tuning and linear-probing entry points share: checks, checkpoint loading, training, metrics.

Both protocols run on the engine's run skeleton (``pretrain.engine.run``): read the
pretrained encoder (any format), build the classifier (relative-position attention if
the checkpoint has AdPE tables), load and report, train with the engine's Trainer plus
an evaluation hook, resume from the run directory exactly as pretraining does, and
write ``classification_metrics.json``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from pretrain.data.imagefolder import BadImageTally, skip_message
from pretrain.engine import distributed as du
from pretrain.engine.config import ConfigError
from pretrain.engine.hooks import Hook
from pretrain.engine.run import RunEnv, TrainingRun, loop_config
from pretrain.engine.trainer import Trainer
from pretrain.models.vit import VIT_SIZES

from .load import LoadReport, PretrainedEncoder, load_pretrained, read_pretrained
from .loop import EvaluationHook, final_scores
from .model import needs_rel_pos


TRAINED_POSITIVE = ("train.epochs", "train.batch_size", "train.accum_iter", "train.eval_batch_size",
                    "train.eval_every")


def validate_frozen(cfg: DictConfig, positive_keys: Sequence[str] = ()) -> None:
    """The checks every classification protocol shares (all a frozen-feature one needs of ``model`` and
    ``train``): the image grid, the ViT size, pooling, ``model.rel_pos``, precision, ``positive_keys`` >= 1."""
    img, patch = int(cfg.model.img_size), int(cfg.model.patch_size)
    if img <= 0 or patch <= 0 or img % patch != 0:
        raise ConfigError(f"model.img_size ({img}) must be a positive multiple of model.patch_size ({patch})")
    if cfg.model.size not in VIT_SIZES:
        raise ConfigError(f"model.size must be one of {', '.join(VIT_SIZES)}, got {cfg.model.size!r}")
    if cfg.model.global_pool not in ("avg", "token"):
        raise ConfigError(f"model.global_pool must be 'avg' or 'token', got {cfg.model.global_pool!r}")
    if cfg.model.rel_pos not in (None, True, False):
        raise ConfigError(f"model.rel_pos must be null (auto), true or false, got {cfg.model.rel_pos!r}")
    for key in positive_keys:
        if int(OmegaConf.select(cfg, key)) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {OmegaConf.select(cfg, key)}")
    if cfg.train.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16, fp16 or fp32, got {cfg.train.precision!r}")


def validate_common(cfg: DictConfig) -> None:
    """Checks shared by fine-tuning and the trained probes (linear, attentive)."""
    validate_frozen(cfg, TRAINED_POSITIVE)


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


def train_and_finish(
    cfg: DictConfig,
    env: RunEnv,
    run_dir: TrainingRun,
    *,
    model: nn.Module,
    train_images: Any,
    val_images: Any,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    sampler: Any,
    step_fn: Callable,
    lr: float,
    precision: str,
    evaluation: EvaluationHook,
    hooks: Sequence[Hook] = (),
    scaler: torch.amp.GradScaler | None = None,
    extra_state: Callable[[], dict[str, Any]] | None = None,
    on_load: Callable[[dict[str, Any]], None] | None = None,
    pretrained: PretrainedEncoder | None = None,
    report: LoadReport | None = None,
    num_classes: int,
    total_batch: int,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The part every classification protocol shares: Trainer (+ evaluation hook), resume,
    fit, a last evaluation if the run stopped early, ``classification_metrics.json``.

    ``train_images`` / ``val_images``: the image datasets read (their unreadable files go into the metrics)."""
    base_state = run_dir.extra_state(task=cfg.task)
    # training images are read every epoch unless a probe cached their features (read again at each start)
    per_epoch = not OmegaConf.select(cfg, "probe.cache_features", default=False)
    train_tally = BadImageTally(train_images)
    trainer = Trainer(
        run_dir.wrap(model), optimizer, loader, sampler, step_fn, loop_config(cfg, lr), env.device, precision,
        run_dir.manager, run_dir.logger, scaler=scaler, hooks=[*hooks, evaluation],
        extra_state=(lambda: {**base_state(), **extra_state()}) if extra_state is not None else base_state,
        rank_extra=lambda: {"train_images": train_tally.state()},
    )

    def loaded(ckpt: dict[str, Any]) -> None:
        if per_epoch:
            train_tally.restore([r.get("train_images", {}) for r in trainer.loaded_rank_extra], du.is_main_process())
        if on_load is not None:
            on_load(ckpt)

    resumed_from = run_dir.resume(trainer, on_load=loaded)
    t0 = time.time()
    run_dir.fit(trainer)
    out = finish_metrics(cfg, cfg.task, trainer, evaluation, run_dir, {
        "pretrain_method": pretrained.method if pretrained is not None else None,
        "num_classes": num_classes,
        "global_pool": cfg.model.global_pool,
        **(metrics or {}),
        "total_batch": total_batch,
        "load_report": str(run_dir.out_dir / "load_report.json") if report is not None else None,
        "lr": lr,
        "wall_seconds_this_run": time.time() - t0,
        "device": str(env.device),
        "world_size": env.world,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "best_checkpoint": str(run_dir.out_dir / "best.pth"),
        "data": bad_image_record(cfg, run_dir, train_tally, val_images),
    })
    du.barrier()
    return out


def bad_image_record(cfg: DictConfig, run_dir: TrainingRun, train_tally: BadImageTally, val_set: Any) -> dict[str, Any]:
    """What ``data.skip_bad`` skipped, for the metrics JSON (counts, the first names) and the log (every name).

    Training: each bad file once per epoch (over restarts); evaluation: the files dropped
    from the split (never replaced), so the scores are over ``val.images - val.bad_files``.
    """
    train, train_files = train_tally.summary(du.all_gather_object(train_tally.state()))
    val_tally = BadImageTally(val_set)
    val, val_files = val_tally.summary(du.all_gather_object(val_tally.state()))
    del val["bad_image_skips"]  # per evaluation: the dropped files
    record = {"skip_bad": bool(cfg.data.skip_bad), "train": train,
              "val": {"images": len(val_set) if val_set is not None else None, **val}}
    if cfg.data.skip_bad or train["bad_image_skips"] or val_files:
        run_dir.print(skip_message(train, train_files, "training"))
        if val_files:
            run_dir.print(f"evaluation dropped {len(val_files)} unreadable files of {cfg.data.val_split} (scores are "
                          f"over the {record['val']['images'] - len(val_files)} others): {', '.join(val_files)}")
    return record


def finish_metrics(
    cfg: DictConfig,
    task: str,
    trainer: Trainer,
    evaluation: EvaluationHook,
    run_dir: TrainingRun,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Evaluate once more if the run stopped before any evaluation; write classification_metrics.json."""
    history = trainer.state.history
    last, best = final_scores(history)
    if last is None or trainer.state.epoch < int(cfg.train.epochs):  # stopped early (max_steps)
        last = evaluation.evaluate_now(trainer)
        best = last["top1"] if best is None else max(best, last["top1"])
    metrics = {
        "task": task,
        "top1": last["top1"],
        "top5": last["top5"],
        "best_top1": best,
        "epochs": int(cfg.train.epochs),
        "epochs_done": trainer.state.epoch,
        "steps": trainer.state.global_step,
        "seed": int(cfg.train.seed),
        "checkpoint": str(cfg.checkpoint) if cfg.checkpoint not in (None, "", "none") else None,
        "arch": arch_name(cfg),
        "history": history,
        **extra,
    }
    path = run_dir.write_metrics("classification_metrics.json", metrics)
    run_dir.print(f"done: top1={metrics['top1']:.2f} top5={metrics['top5']:.2f} best_top1={best:.2f} -> {path}")
    return metrics
