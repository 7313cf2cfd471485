"""Evaluation as a hook of the engine's Trainer: evaluate every N epochs, keep the best weights.

An evaluation runs at the end of an epoch, before that epoch's checkpoint is
written, and its numbers go into the epoch's ``history`` entry, so a resumed run
keeps every earlier evaluation and the best score. The best weights go to
``best.pth`` (``{'model': ...}``, loadable by ``pretrain.weights``); the numbered
checkpoints hold the last state for resuming.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from pretrain.engine import distributed as du
from pretrain.engine.hooks import Hook
from pretrain.engine.trainer import Trainer
from pretrain.weights import atomic_torch_save

VAL_KEYS = {"loss": "val_loss", "count": "val_count"}  # names in the history next to the epoch's train stats


class EvaluationHook(Hook):
    """Evaluate every ``eval_every`` epochs (and after the last one); save the best weights.

    Args:
        evaluate: () -> {"top1", "top5", "loss", ...} on the validation set.
        eval_every: epochs between evaluations.
        best_path: where to write the best model's weights (main process).
        best_state: (trainer) -> what to save there (default: the model's state dict).
    """

    def __init__(
        self,
        evaluate: Callable[[], dict[str, float]],
        eval_every: int = 1,
        best_path: str | os.PathLike | None = None,
        best_state: Callable[[Trainer], dict[str, Any]] | None = None,
    ) -> None:
        self.evaluate = evaluate
        self.eval_every = max(1, int(eval_every))
        self.best_path = Path(best_path) if best_path else None
        self.best_state = best_state or (lambda trainer: {"model": trainer.unwrapped.state_dict()})

    @staticmethod
    def best_top1(trainer: Trainer) -> float | None:
        scores = [h["top1"] for h in trainer.state.history if "top1" in h]
        return max(scores) if scores else None

    def evaluate_now(self, trainer: Trainer) -> dict[str, float]:
        """Evaluate, log under phase 'val' and print; returns the numbers."""
        stats = self.evaluate()
        trainer.logger.log(trainer.state.global_step, stats, prefix="val")
        if du.is_main_process():
            shown = ", ".join(f"{k}={v:.4g}" for k, v in stats.items() if isinstance(v, float))
            print(f"[eval epoch {trainer.state.epoch}] {shown}", flush=True)
        return stats

    def after_epoch(self, trainer: Trainer) -> None:
        st = trainer.state
        if st.epoch % self.eval_every and st.epoch != trainer.cfg.epochs:
            return
        previous_best = self.best_top1(trainer)
        stats = self.evaluate_now(trainer)
        st.history[-1].update({VAL_KEYS.get(k, k): v for k, v in stats.items()})  # keep the train loss
        if previous_best is None or stats["top1"] > previous_best:
            self._save_best(trainer, stats)

    def _save_best(self, trainer: Trainer, stats: dict[str, float]) -> None:
        if self.best_path is None or not du.is_main_process():
            return
        scores = {"epoch": trainer.state.epoch, "top1": stats["top1"], "top5": stats["top5"]}
        atomic_torch_save({**self.best_state(trainer), **scores}, self.best_path)


def final_scores(history: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, float | None]:
    """The last evaluated history entry and the best top-1 over all of them."""
    evaluated = [h for h in history if "top1" in h]
    if not evaluated:
        return None, None
    return evaluated[-1], max(h["top1"] for h in evaluated)
