"""The training loop shared by every pretraining method (and reusable by transfer tasks).

One epoch, as in the MAE reference loop: per-iteration lr (and method schedule)
from the fractional epoch, autocast forward, loss / accum_iter, backward (DDP
gradient sync only on accumulation boundaries), clip, step. The loop never
reads a tensor back to the host inside a step: metrics are accumulated on the
device and read at log points, where a non-finite loss also stops the run
before any checkpoint could be overwritten.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from tqdm import tqdm

from . import distributed as du
from .checkpointing import CheckpointManager, rng_state, set_rng_state
from .guard import NonFiniteGuard
from .logger import MeanMeter, RunLogger
from .optim import clip_gradients
from .schedule import set_learning_rate


@dataclass
class TrainState:
    """Where a run stands; saved in every checkpoint."""

    epoch: int = 0  # current epoch
    iter_in_epoch: int = 0  # micro-batches of this epoch already consumed
    global_step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)  # per-epoch averages


@dataclass
class LoopConfig:
    epochs: int
    lr: float
    min_lr: float
    warmup_epochs: float
    accum_iter: int = 1
    clip_grad: float | None = None
    clip_mode: str = "global"
    log_every: int = 20
    save_every_steps: int = 0
    max_steps: int = 0
    progress: bool = True


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on the given device; a no-op for fp32."""
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' means bf16 on CUDA and fp32 on CPU (whose bf16 matmul is slower)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


class Trainer:
    """Drives ``step_fn(model, batch) -> MethodOutput`` over epochs with checkpoints.

    Args:
        model: the (possibly DDP-wrapped) model.
        optimizer: its optimizer; groups may carry lr_scale / base_lr.
        loader: yields batches; ``sampler`` must be a ResumableSampler.
        step_fn: computes the MethodOutput for one batch.
        cfg: loop settings.
        checkpoints: where to save; ``extra_state`` adds items (config, generators).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: Iterable,
        sampler,
        step_fn: Callable,
        cfg: LoopConfig,
        device: torch.device,
        precision: str,
        checkpoints: CheckpointManager | None,
        logger: RunLogger,
        extra_state: Callable[[], dict[str, Any]] | None = None,
        scaler: torch.amp.GradScaler | None = None,
        after_step: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loader = loader
        self.sampler = sampler
        self.step_fn = step_fn
        self.cfg = cfg
        self.device = device
        self.precision = precision
        self.checkpoints = checkpoints
        self.logger = logger
        self.extra_state = extra_state or (lambda: {})
        self.scaler = scaler
        self.after_step = after_step
        self.state = TrainState()
        self.guard = NonFiniteGuard(device)
        self.iters_per_epoch = len(sampler) // self._batch_size()
        if self.iters_per_epoch < cfg.accum_iter:
            raise ValueError(
                f"an epoch has {self.iters_per_epoch} batches, fewer than accum_iter={cfg.accum_iter}: "
                "use a smaller batch size or more data"
            )
        self.last_checkpoint = None

    def _batch_size(self) -> int:
        return getattr(self.loader, "batch_size", 1) or 1

    @property
    def unwrapped(self) -> nn.Module:
        """The plain model under torch.compile and DDP wrappers."""
        m = getattr(self.model, "_orig_mod", self.model)
        return m.module if hasattr(m, "module") else m

    # ----------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.unwrapped.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "train_state": asdict(self.state),
            "rng": rng_state(),
            **self.extra_state(),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.unwrapped.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["train_state"])
        set_rng_state(ckpt.get("rng", {}))

    def save(self) -> None:
        self.guard.check()  # never write a checkpoint from a poisoned model
        if self.checkpoints is not None and du.is_main_process():
            self.last_checkpoint = self.checkpoints.save(self.state_dict(), self.state.global_step)
        du.barrier()

    # -------------------------------------------------------------- the loop
    def fit(self) -> TrainState:
        cfg = self.cfg
        while self.state.epoch < cfg.epochs:
            if self._done():
                break
            self.train_one_epoch()
            if self.state.iter_in_epoch >= self.iters_per_epoch:  # epoch finished
                self.state.epoch += 1
                self.state.iter_in_epoch = 0
                self.save()
        return self.state

    def _done(self) -> bool:
        return self.cfg.max_steps > 0 and self.state.global_step >= self.cfg.max_steps

    def train_one_epoch(self) -> None:
        cfg, st = self.cfg, self.state
        model = self.model
        model.train(True)
        self.sampler.set_epoch(st.epoch)
        self.sampler.set_start(st.iter_in_epoch * self._batch_size())
        meter, epoch_meter = MeanMeter(), MeanMeter()
        accum = cfg.accum_iter
        bar = tqdm(
            total=self.iters_per_epoch,
            initial=st.iter_in_epoch,
            desc=f"epoch {st.epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and du.is_main_process()),
            dynamic_ncols=True,
            leave=False,
        )
        t0, seen, lr = time.perf_counter(), 0, 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for batch in self.loader:
            i = st.iter_in_epoch
            if i >= self.iters_per_epoch:
                break
            epoch_f = st.epoch + i / self.iters_per_epoch
            if i % accum == 0:
                lr = set_learning_rate(self.optimizer, epoch_f, cfg.lr, cfg.warmup_epochs, cfg.epochs, cfg.min_lr)
                set_progress = getattr(self.unwrapped, "set_progress", None)
                if set_progress is not None:
                    set_progress(epoch_f, cfg.epochs)
            boundary = (i + 1) % accum == 0
            sync = contextlib.nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
            with sync:
                with autocast_context(self.device, self.precision):
                    out = self.step_fn(model, batch)
                loss = out.loss / accum
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                else:
                    loss.backward()
            self.guard.update(out.loss, out.metrics, st.global_step)
            if boundary:
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                grad_norm = clip_gradients(self.unwrapped.parameters(), cfg.clip_grad, cfg.clip_mode)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.after_step is not None:
                    self.after_step()
                st.global_step += 1
                metrics = dict(out.metrics)
                if grad_norm is not None:
                    metrics["grad_norm"] = grad_norm.detach()
                meter.update(metrics)
                epoch_meter.update(out.metrics)
            st.iter_in_epoch += 1
            seen += self._batch_size()
            bar.update(1)
            if boundary and st.global_step % cfg.log_every == 0:
                self._log(meter, lr, seen, t0, bar)
                meter.reset()
            if boundary and cfg.save_every_steps > 0 and st.global_step % cfg.save_every_steps == 0:
                self.save()
            if boundary and self._done():
                break
        bar.close()
        self.guard.check()
        stats = epoch_meter.means(du.all_reduce_mean)
        stats.update({"epoch": st.epoch + 1, "lr": lr, "images_per_s": seen * du.get_world_size() / max(time.perf_counter() - t0, 1e-9)})
        if st.iter_in_epoch >= self.iters_per_epoch:
            st.history.append(stats)
        self.logger.log(st.global_step, stats, prefix="epoch")
        if du.is_main_process():
            shown = ", ".join(f"{k}={v:.4g}" for k, v in stats.items() if isinstance(v, float))
            print(f"[epoch {st.epoch + 1}/{cfg.epochs}] {shown}", flush=True)

    def _log(self, meter: MeanMeter, lr: float, seen: int, t0: float, bar) -> None:
        self.guard.check()
        values = meter.means(du.all_reduce_mean)
        values["lr"] = lr
        values["images_per_s"] = seen * du.get_world_size() / max(time.perf_counter() - t0, 1e-9)
        self.logger.log(self.state.global_step, values)
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "pos_acc", "lr")})
