"""Hooks: what a run adds to the training loop without touching it (Detectron2-style).

The :class:`~pretrain.engine.trainer.Trainer` calls, for every hook in order,
``before_step`` at the start of each optimizer step (after the lr is set, with the
fractional epoch), ``after_step`` after each optimizer step, ``after_epoch`` when
an epoch has finished, before its checkpoint is written (so what the hook records,
e.g. an evaluation in the epoch's history, is in that checkpoint), and ``after_save``
on every rank once a checkpoint was written (``trainer.last_checkpoint`` on the main
process; ``trainer.state.iter_in_epoch == 0`` at an epoch's end).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer


class Hook:
    """Base class: every callback does nothing."""

    def before_step(self, trainer: "Trainer", epoch: float) -> None:
        pass

    def after_step(self, trainer: "Trainer") -> None:
        pass

    def after_epoch(self, trainer: "Trainer") -> None:
        pass

    def after_save(self, trainer: "Trainer") -> None:
        pass


class MethodHook(Hook):
    """A pretraining method's own schedule (``set_progress``) and post-step work (``after_optimizer_step``)."""

    def __init__(self, method: Any) -> None:
        self.method = method

    def before_step(self, trainer: "Trainer", epoch: float) -> None:
        self.method.set_progress(epoch, trainer.cfg.epochs)

    def after_step(self, trainer: "Trainer") -> None:
        self.method.after_optimizer_step()
