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
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
from tqdm import tqdm

from . import distributed as du
from ..weights import CheckpointError
from .run_checkpoints import CheckpointManager, rng_state, set_rng_state
from .guard import NonFiniteGuard
from .hooks import Hook
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
        checkpoints: where to save; ``extra_state`` adds items (config, method).
        hooks: :class:`~pretrain.engine.hooks.Hook` s called before / after each optimizer
            step, after each epoch and after each checkpoint (method schedules, EMA,
            evaluation, online monitors, kept checkpoints).
        generators: per-process random generators (e.g. a mask generator) saved and
            restored per rank, like the global RNGs.
        rank_extra: per-process values (counters) saved per rank; after a resume the
            saved ranks' values are in ``loaded_rank_extra``.
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
        hooks: Sequence[Hook] = (),
        generators: dict[str, torch.Generator] | None = None,
        rank_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.model, self.optimizer, self.loader, self.sampler = model, optimizer, loader, sampler
        self.step_fn, self.cfg, self.device = step_fn, cfg, device
        self.precision = precision
        self.checkpoints = checkpoints
        self.logger = logger
        self.extra_state = extra_state or (lambda: {})
        self.scaler = scaler
        self.hooks = list(hooks)
        self.state = TrainState()
        self.guard = NonFiniteGuard(device)
        self.iters_per_epoch = len(sampler) // self._batch_size()
        if self.iters_per_epoch < cfg.accum_iter:
            raise ValueError(
                f"an epoch has {self.iters_per_epoch} batches, fewer than accum_iter={cfg.accum_iter}: "
                "use a smaller batch size or more data"
            )
        self.last_checkpoint = None
        self.generators = dict(generators or {})
        self.rank_extra = rank_extra or (lambda: {})
        self.loaded_rank_extra: list[dict[str, Any]] = []
        # running averages of the current log interval and epoch, and the current lr:
        # saved with mid-epoch checkpoints so a resumed epoch reports the same averages
        self._meters = (MeanMeter(), MeanMeter())
        self._lr = 0.0
        self._resume_meters: dict[str, Any] | None = None

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
            "log_records": getattr(self.logger, "records", None),  # log.jsonl lines up to this point
            **self.extra_state(),
        }

    def rank_state(self) -> dict[str, Any]:
        """What differs between processes: RNGs, generators, running averages, counters."""
        log_meter, epoch_meter = self._meters
        return {
            "rng": rng_state(),
            "generators": {k: g.get_state() for k, g in self.generators.items()},
            "meters": {"log": log_meter.state_dict(), "epoch": epoch_meter.state_dict(), "lr": self._lr},
            "extra": self.rank_extra(),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        self.unwrapped.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["train_state"])
        ranks = ckpt.get("rank_states") or []
        if not ranks:  # a checkpoint without per-rank state
            set_rng_state(ckpt.get("rng", {}))
            return
        rank, world = du.get_rank(), du.get_world_size()
        same_world = len(ranks) == world
        mine = ranks[rank] if same_world else ranks[min(rank, len(ranks) - 1)]
        set_rng_state(mine["rng"])
        for name, g in self.generators.items():
            if name in mine.get("generators", {}):
                g.set_state(mine["generators"][name].cpu())
        self.loaded_rank_extra = [r.get("extra", {}) for r in ranks]
        if same_world:
            self._resume_meters = mine["meters"]
        else:  # every rank continues from the saved ranks' mean (the logged averages are means over ranks)
            self._resume_meters = {k: _mean_meter_state([r["meters"][k] for r in ranks]) for k in ("log", "epoch")}
            self._resume_meters["lr"] = mine["meters"]["lr"]

    def save(self) -> None:
        """Write a checkpoint (main process); collective under DDP, and every rank raises if the write failed."""
        self.guard.check()  # never write a checkpoint from a poisoned model
        ranks = du.all_gather_object(self.rank_state())
        error: BaseException | None = None
        if self.checkpoints is not None and du.is_main_process():
            try:
                state = self.state_dict()
                state["rank_states"] = ranks
                self.last_checkpoint = self.checkpoints.save(state, self.state.global_step)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
                error = exc
        if du.get_world_size() > 1:
            failures = [m for m in du.all_gather_object(None if error is None else str(error)) if m]
            if failures and error is None:
                raise CheckpointError(f"checkpoint write failed on the main process: {failures[0]}")
        if error is not None:
            raise error
        for hook in self.hooks:
            hook.after_save(self)

    # -------------------------------------------------------------- the loop
    def fit(self) -> TrainState:
        cfg = self.cfg
        while self.state.epoch < cfg.epochs:
            if self._done():
                break
            self.train_one_epoch()
            if self.state.iter_in_epoch < self.iters_per_epoch:  # stopped mid-epoch (max_steps)
                break
            self.state.epoch += 1
            self.state.iter_in_epoch = 0
            for hook in self.hooks:
                hook.after_epoch(self)
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
        lr = 0.0
        if self._resume_meters is not None and st.iter_in_epoch > 0:  # resumed mid-epoch
            meter.load_state_dict(self._resume_meters["log"], self.device)
            epoch_meter.load_state_dict(self._resume_meters["epoch"], self.device)
            lr = float(self._resume_meters.get("lr", 0.0))
        self._resume_meters = None
        self._meters, self._lr = (meter, epoch_meter), lr
        accum = cfg.accum_iter
        bar = tqdm(
            total=self.iters_per_epoch,
            initial=st.iter_in_epoch,
            desc=f"epoch {st.epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and du.is_main_process()),
            dynamic_ncols=True,
            leave=False,
        )
        t0, seen = time.perf_counter(), 0
        self.optimizer.zero_grad(set_to_none=True)
        for batch in self.loader:
            i = st.iter_in_epoch
            if i >= self.iters_per_epoch:
                break
            epoch_f = st.epoch + i / self.iters_per_epoch
            if i % accum == 0:
                lr = set_learning_rate(self.optimizer, epoch_f, cfg.lr, cfg.warmup_epochs, cfg.epochs, cfg.min_lr)
                self._lr = lr
                for hook in self.hooks:
                    hook.before_step(self, epoch_f)
            boundary = (i + 1) % accum == 0
            out, grad_norm = self.train_step(batch, boundary)
            if boundary:
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
        seconds = time.perf_counter() - t0  # this epoch's wall time (this run's part of it, after a resume)
        stats.update({"epoch": st.epoch + 1, "lr": lr, "images_per_s": seen * du.get_world_size() / max(seconds, 1e-9),
                      "seconds": seconds})
        if st.iter_in_epoch >= self.iters_per_epoch:
            st.history.append(stats)
        self.logger.log(st.global_step, stats, prefix="epoch")
        if du.is_main_process():
            shown = ", ".join(f"{k}={v:.4g}" for k, v in stats.items() if isinstance(v, float))
            print(f"[epoch {st.epoch + 1}/{cfg.epochs}] {shown}", flush=True)

    def train_step(self, batch: Any, boundary: bool = True) -> tuple[Any, torch.Tensor | None]:
        """One micro-batch: autocast forward, backward (DDP gradient sync only at ``boundary``)
        and, at an accumulation boundary, unscale, clip, optimizer step and zero_grad.

        The same code drives training and ``tools.benchmark``; it never reads a tensor back
        to the host. Returns the method's output and the pre-clip gradient norm (None
        between boundaries or without clipping).
        """
        model, cfg = self.model, self.cfg
        sync = contextlib.nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast_context(self.device, self.precision):
                out = self.step_fn(model, batch)
            loss = out.loss / cfg.accum_iter
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
        self.guard.update(out.loss, out.metrics, self.state.global_step + 1)  # the step number log.jsonl uses
        grad_norm = None
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
            for hook in self.hooks:
                hook.after_step(self)
        return out, grad_norm

    def _log(self, meter: MeanMeter, lr: float, seen: int, t0: float, bar) -> None:
        self.guard.check()
        values = meter.means(du.all_reduce_mean)
        values["lr"] = lr
        values["images_per_s"] = seen * du.get_world_size() / max(time.perf_counter() - t0, 1e-9)
        self.logger.log(self.state.global_step, values)
        bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "pos_acc", "lr")})


def _mean_meter_state(states: list[dict[str, Any]]) -> dict[str, Any]:
    """Average of several ranks' meter states (same count, possibly different sums)."""
    keys = set().union(*(st["sums"] for st in states))
    sums = {k: torch.stack([torch.as_tensor(st["sums"][k]) for st in states if k in st["sums"]]).mean(0) for k in keys}
    return {"sums": sums, "count": max(int(st["count"]) for st in states)}
