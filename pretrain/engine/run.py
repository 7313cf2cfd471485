"""One run skeleton for every training entry point (pretraining, fine-tuning, linear probing).

Each entry point reads as: ``env = start_run(cfg)``; build data and model;
``run = TrainingRun(cfg, env, tag)``; ``run.prepare_output()``; build the optimizer
and the :class:`~pretrain.engine.trainer.Trainer` on ``run.manager`` / ``run.logger``;
``run.resume(trainer)``; ``run.fit(trainer)``; ``run.write_metrics(...)``.
Sharing this code is what gives every stage the same guarantees:

- a run restarted with the same command resumes from the newest readable
  checkpoint of its folder; unreadable ones are moved aside (``.corrupt``) so they
  never count as the newest again; a run of another checkpoint, recipe or data is
  refused there, naming what differs (``pretrain.engine.run_identity``);
- checkpoints of a newer timeline (past the step it resumed from) are moved aside
  (``.discarded``), and ``log.jsonl`` lines written after that step are dropped;
- temporary files a killed writer left behind are deleted;
- a non-finite loss stops the run without writing a checkpoint and names the last
  good one; metrics JSON files are written atomically.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from ..atomic import atomic_write_json
from . import distributed as du
from .config import ConfigError, save_config
from .guard import NonFiniteLossError
from .logger import RunLogger
from .run_checkpoints import CheckpointManager, load_resume_file, peek_resume_file
from .total_batch import implied_lr
from .run_identity import checkpoint_identity, describe, differences, refusal, run_identity
from .trainer import LoopConfig, Trainer, TrainState


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunEnv:
    """Where a process runs: rank, world size, device, and the run's seed."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    seed: int


def start_run(cfg: DictConfig) -> RunEnv:
    """Join the process group (torchrun) or run alone; seed every generator (seed + rank)."""
    rank, world, local_rank = du.init_distributed()
    device = du.default_device(local_rank)
    seed = int(cfg.train.seed)
    seed_everything(seed + rank)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return RunEnv(rank=rank, world=world, local_rank=local_rank, device=device, seed=seed)


def total_batch_and_lr(cfg: DictConfig, world: int) -> tuple[int, float]:
    """total batch = batch_size * accum_iter * world; lr = optim.lr or optim.blr * total / 256."""
    total = int(cfg.train.batch_size) * int(cfg.train.accum_iter) * world
    lr = float(cfg.optim.lr) if cfg.optim.lr is not None else implied_lr(float(cfg.optim.blr), total)
    return total, lr


def loop_config(cfg: DictConfig, lr: float) -> LoopConfig:
    """The Trainer's settings from a run config's ``train`` and ``optim`` sections."""
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


class TrainingRun:
    """The output folder of one run: config, checkpoints, log, resume and metrics.

    Args:
        cfg: the resolved run config (``train.output_dir``, ``train.resume``,
            ``train.keep_checkpoints``, ``train.tensorboard``).
        env: from :func:`start_run`.
        tag: prefix of the messages this run prints (``pretrain``, ``finetune`` ...).
    """

    def __init__(self, cfg: DictConfig, env: RunEnv, tag: str) -> None:
        self.cfg = cfg
        self.env = env
        self.tag = tag
        self.out_dir = Path(cfg.train.output_dir)
        self.manager = CheckpointManager(self.out_dir, keep=int(cfg.train.keep_checkpoints))
        self.logger: RunLogger | None = None
        self.resumed_from: Path | None = None
        self.identity: dict[str, Any] = {}  # set by prepare_output (main process); carried by every checkpoint

    @property
    def main(self) -> bool:
        return du.is_main_process()

    def print(self, message: str) -> None:
        if self.main:
            print(f"[{self.tag}] {message}", flush=True)

    def prepare_output(self) -> RunLogger:
        """Refuse to auto-resume a different run's checkpoint; create the folder, save the resolved
        config, open the log (main process writes)."""
        self.identity = run_identity(self.cfg, self.env.world) if self.main else {}
        problem = self._resume_conflict(self.identity) if self.main else None
        if self.env.world > 1:
            problem = du.all_gather_object(problem)[0]  # every rank stops on the main process's verdict
        if problem is not None:
            raise ConfigError(problem)
        if self.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.out_dir / "config.yaml")
        self.logger = RunLogger(self.out_dir, enabled=self.main, tensorboard=bool(self.cfg.train.tensorboard))
        return self.logger

    def _resume_conflict(self, identity: dict[str, Any]) -> str | None:
        """Why this run must not auto-resume its folder (another checkpoint, recipe or data), or None.

        ``train.resume=none`` starts afresh (nothing to compare); ``train.resume=PATH`` resumes
        that file as told, printing how its run differs."""
        resume = self.cfg.train.resume
        if resume in (None, "none", ""):
            return None
        # the checkpoint resume() would pick: the newest readable one here, or the named file
        candidates = self.manager.list() if resume == "auto" else [Path(resume)]
        ckpt = next((c for c in map(peek_resume_file, candidates) if c is not None), None)
        stored = checkpoint_identity(ckpt) if ckpt is not None else None
        diffs = differences(stored, identity) if stored is not None else []
        if not diffs:
            return None
        if resume == "auto":
            return refusal(self.out_dir, diffs)
        self.print(f"note: train.resume={resume} continues a run with other settings ({describe(diffs)})")
        return None

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP across processes (several), then ``torch.compile`` if ``train.compile``."""
        wrapped = model
        if self.env.world > 1:
            ids = [self.env.local_rank] if self.env.device.type == "cuda" else None
            wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return torch.compile(wrapped) if self.cfg.train.compile else wrapped

    def extra_state(self, **items: Any) -> Callable[[], dict[str, Any]]:
        """What every checkpoint carries beside the training state: the resolved config, the run's
        identity (``pretrain.engine.run_identity``) and ``items``."""
        return lambda: {"config": OmegaConf.to_container(self.cfg, resolve=True), "run_identity": self.identity,
                        **items}

    def resume(self, trainer: Trainer, on_load: Callable[[dict[str, Any]], None] | None = None) -> Path | None:
        """Resume per ``train.resume`` (auto: newest good checkpoint here; a path; none), then
        forget what a killed run wrote past the restart point. Returns the file resumed from."""
        cfg = self.cfg
        if self.main:
            self.manager.remove_stale_temp_files()  # left by a run killed while writing
        log_records = None
        if cfg.train.resume not in (None, "none", ""):
            if cfg.train.resume == "auto":
                ckpt, path = self.manager.load_latest(quarantine=self.main)
            else:
                ckpt, path = load_resume_file(cfg.train.resume), Path(cfg.train.resume)
            if ckpt is not None:
                trainer.load_state_dict(ckpt)
                if on_load is not None:
                    on_load(ckpt)
                if Path(path).resolve().parent == self.out_dir.resolve():  # its count is about this log
                    log_records = ckpt.get("log_records")
                del ckpt
                self.resumed_from = path
                st = trainer.state
                self.print(f"resumed from {path} at epoch {st.epoch} (iteration {st.iter_in_epoch}, step {st.global_step})")
        if self.main:
            # steps after the restart point are trained again: forget what a killed run wrote about them
            step = trainer.state.global_step
            self.manager.discard_newer(step)
            dropped = self.logger.truncate(step, log_records) if self.logger is not None else 0
            if dropped:
                self.print(f"log.jsonl: dropped {dropped} records after step {step} "
                           "(written after the last checkpoint; they are trained again)")
        du.barrier()
        return self.resumed_from

    def fit(self, trainer: Trainer) -> TrainState:
        """Train to the end; a non-finite loss stops without saving and names the last good checkpoint."""
        try:
            return trainer.fit()
        except NonFiniteLossError as exc:
            last = self.manager.list()
            raise NonFiniteLossError(
                f"{exc}; stopped without saving: the last good checkpoint is {last[0] if last else '(none yet)'}"
            ) from None
        finally:
            if self.logger is not None:
                self.logger.close()

    def write_metrics(self, name: str, metrics: dict[str, Any]) -> Path:
        """Write ``<out_dir>/<name>`` atomically (main process)."""
        path = self.out_dir / name
        if self.main:
            atomic_write_json(path, metrics)
        return path
