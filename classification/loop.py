"""The engine's Trainer plus evaluation: eval every N epochs, keep the best weights, write the metrics JSON.

An evaluation runs at the end of an epoch, before that epoch's checkpoint is
written, and its numbers go into the epoch's ``history`` entry, so a resumed run
keeps every earlier evaluation and the best score. The best weights go to
``best.pth`` (``{'model': ...}``, loadable by ``pretrain.weights``); the numbered
checkpoints hold the last state for resuming.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pretrain.weights import atomic_torch_save
from pretrain.atomic import atomic_write_json
from pretrain.engine import distributed as du
from pretrain.engine.trainer import Trainer, TrainState


VAL_KEYS = {"loss": "val_loss", "count": "val_count"}  # names in the history next to the epoch's train stats


class EvalTrainer(Trainer):
    """Trainer that evaluates every ``eval_every`` epochs (and after the last one).

    Args (beyond Trainer's):
        evaluate: () -> {"top1", "top5", "loss", ...} on the validation set.
        eval_every: epochs between evaluations.
        best_path: where to write the best model's weights (main process).
        best_state: () -> what to save there (default: the model's state dict).
    """

    def __init__(
        self,
        *args: Any,
        evaluate: Callable[[], dict[str, float]],
        eval_every: int = 1,
        best_path: str | os.PathLike | None = None,
        best_state: Callable[[], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.evaluate = evaluate
        self.eval_every = max(1, int(eval_every))
        self.best_path = Path(best_path) if best_path else None
        self.best_state = best_state or (lambda: {"model": self.unwrapped.state_dict()})

    @property
    def best_top1(self) -> float | None:
        scores = [h["top1"] for h in self.state.history if "top1" in h]
        return max(scores) if scores else None

    def evaluate_now(self) -> dict[str, float]:
        """Evaluate, log under phase 'val' and print; returns the numbers."""
        stats = self.evaluate()
        self.logger.log(self.state.global_step, stats, prefix="val")
        if du.is_main_process():
            shown = ", ".join(f"{k}={v:.4g}" for k, v in stats.items() if isinstance(v, float))
            print(f"[eval epoch {self.state.epoch}] {shown}", flush=True)
        return stats

    def fit(self) -> TrainState:
        cfg, st = self.cfg, self.state
        while st.epoch < cfg.epochs:
            if self._done():
                break
            self.train_one_epoch()
            if st.iter_in_epoch < self.iters_per_epoch:  # stopped mid-epoch (max_steps)
                break
            st.epoch += 1
            st.iter_in_epoch = 0
            if st.epoch % self.eval_every == 0 or st.epoch == cfg.epochs:
                previous_best = self.best_top1
                stats = self.evaluate_now()
                st.history[-1].update({VAL_KEYS.get(k, k): v for k, v in stats.items()})  # keep the train loss
                if previous_best is None or stats["top1"] > previous_best:
                    self._save_best(stats)
            self.save()
        return st

    def _save_best(self, stats: dict[str, float]) -> None:
        if self.best_path is None or not du.is_main_process():
            return
        scores = {"epoch": self.state.epoch, "top1": stats["top1"], "top5": stats["top5"]}
        atomic_torch_save({**self.best_state(), **scores}, self.best_path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def final_scores(history: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, float | None]:
    """The last evaluated history entry and the best top-1 over all of them."""
    evaluated = [h for h in history if "top1" in h]
    if not evaluated:
        return None, None
    return evaluated[-1], max(h["top1"] for h in evaluated)


def write_metrics(out_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write ``classification_metrics.json`` atomically (main process only)."""
    path = Path(out_dir) / "classification_metrics.json"
    if du.is_main_process():
        atomic_write_json(path, metrics)
    return path
