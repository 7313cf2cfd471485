"""Online monitors of pretraining: is the representation improving, or collapsing, epoch by epoch?

After every ``train.monitor.every_epochs``-th epoch (and the last), before the epoch's
checkpoint is written, the training encoder is put in eval mode and, without gradients,
encodes two fixed image sets with the evaluation transform (no augmentation):

- the *bank*: ``bank_images`` images of the training split (evenly spread over the classes);
- the *held-out slice*: ``images`` images of ``train.monitor.split`` (val by default).

From these, three signals (``train.monitor.monitors``):

- ``knn``: weighted k-NN top-1 / top-5 (%) of the slice by the bank, the DINO vote of
  :mod:`classification.knn` (cls token after the final norm, cosine similarity, k = 20,
  T = 0.07) on the same images ``classification.knn`` takes with ``data.limit``;
- ``position``: the position probe of :mod:`classification.position_probe` at the recipe's
  drop ratio: a linear head trained for a fixed number of steps (seeded) on the bank's
  dropped-position tokens, top-1 / within-one-cell (%) on the slice's; every image keeps
  the same dropped set and probed cells at every epoch, so the curve is comparable;
- ``rankme``: RankMe (:mod:`pretrain.engine.rankme`) of the slice's cls features, the
  collapse signal (1 = collapsed, up to min(images, width)).

Distributed: *sharded*. Every rank encodes its share of both sets
(``classification.features.extract_features``), the features are gathered, and rank 0
computes the k-NN, the probe and RankMe and logs them. The training's random stream is
untouched (every global generator is saved and restored; the monitor draws from its own
seeded generators), so losses are bit-identical with monitors on and off.

Records go to ``log.jsonl`` (``phase: monitor``, one per measured epoch, with the cost in
seconds and as a share of the epoch) and TensorBoard (``monitor/*``), and into the epoch's
entry of the run history (``history[i]["monitor"]``), which every checkpoint carries: a
resumed run neither repeats nor misses an epoch. Unreadable images in the sets are left out
of the pass (never stopping it); with ``data.skip_bad=false`` that epoch's record is then an
``error`` naming the files (the bad-input policy), with ``data.skip_bad=true`` the values
are measured without them and the record counts them. No failure of a monitor stops training.
"""
from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from classification.data import eval_dataset
from classification.features import extract_features
from classification.knn import dropped_images, knn_votes, vote_accuracy
from classification.model import encoder_features
from classification.position_probe import (
    dropped_positions,
    encode_dropped,
    evaluate_position_head,
    train_position_head,
)

from . import distributed as du
from .config import ConfigError
from .hooks import Hook
from .monitor_config import SECTION, MonitorSettings
from .rankme import rankme
from .trainer import resolve_precision

if TYPE_CHECKING:  # pragma: no cover
    from ..models.method import PretrainMethod
    from .trainer import Trainer


@dataclass
class ProbeTables:
    """Per image of a set: the cells whose position is dropped (bool [n, N]) and the probed cells [n, T]."""

    dropped: torch.Tensor
    cells: torch.Tensor


def probe_tables(images: int, num_patches: int, drop_ratio: float, tokens_per_image: int, seed: int) -> ProbeTables:
    """Fixed dropped sets (round(drop_ratio * N) cells per image) and ``tokens_per_image`` probed
    cells among them, drawn once from ``seed`` (the same at every epoch and for any world size)."""
    gen = torch.Generator().manual_seed(seed)
    dropped = dropped_positions(images, num_patches, drop_ratio, gen)
    per_image = int(round(drop_ratio * num_patches))
    score = torch.rand(images, num_patches, generator=gen) + (~dropped).float() * 2  # dropped cells first
    cells = torch.argsort(score, dim=1)[:, :min(tokens_per_image, per_image)]
    return ProbeTables(dropped, cells)


class MonitorPass:
    """``extract_features``'s per-batch function: [B, P, D + 1] per image, P = (cls feature) + (probed tokens).

    Row 0 (with ``cls``) is the pooled feature of the plain pass (k-NN, RankMe); the next T rows
    (with ``tables``) are the final features of the probed cells with the dropped positions
    replaced by ``position_token``, their cell index in the last column. The rank's images come
    in ShardSampler order (rank, rank + world, ...), which gives each image's table row.
    """

    def __init__(self, cls: bool, tables: ProbeTables | None, position_token: torch.Tensor | None,
                 device: torch.device) -> None:
        self.cls, self.position_token = cls, position_token
        self.dropped = tables.dropped.to(device) if tables is not None else None
        self.cells = tables.cells.to(device) if tables is not None else None
        self.rank, self.world = du.get_rank(), du.get_world_size()
        self.seen = 0

    def __call__(self, encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        parts = []
        if self.cls:
            f = encoder_features(encoder, images).float()
            parts.append(torch.cat([f, f.new_zeros(b, 1)], dim=1)[:, None])
        if self.dropped is not None:
            rows = (self.rank + self.world * (self.seen + torch.arange(b, device=images.device))) % len(self.dropped)
            cells = self.cells[rows]
            tokens = encode_dropped(encoder, self.position_token, images, self.dropped[rows]).float()
            picked = tokens.gather(1, cells[..., None].expand(-1, -1, tokens.shape[-1]))
            parts.append(torch.cat([picked, cells[..., None].float()], dim=2))
        self.seen += b
        return torch.cat(parts, dim=1)


def position_token(method: "PretrainMethod") -> torch.Tensor:
    """What the method feeds for a token without position: DropPos's learned ``mask_pos_token``
    (``mask_token_type: param``), else zero (MAE, AdPE, DropPos's zeros / wrong_pos variants)."""
    token = getattr(method, "mask_pos_token", None)
    if token is not None and getattr(method, "mask_token_type", "param") == "param":
        return token.detach()
    return torch.zeros(1, 1, method.encoder.embed_dim, device=method.encoder.cls_token.device)


@contextlib.contextmanager
def untouched_random_state(device: torch.device) -> Iterator[None]:
    """Run a block without moving Python's, NumPy's, torch's CPU or this device's CUDA generator."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block; every submodule's own mode restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.training = mode


class OnlineMonitor:
    """The monitors' fixed image sets and probe tables (opened before training), and one measurement."""

    def __init__(self, cfg: DictConfig, settings: MonitorSettings, num_patches: int, grid: tuple[int, int]) -> None:
        self.settings, self.grid, self.num_patches = settings, grid, num_patches
        self.skip_bad = bool(cfg.data.skip_bad)
        self.workers = int(cfg.data.num_workers)
        self.bank = self._open(cfg, str(cfg.data.split), settings.bank_images, "bank_images", settings.crop_pct)
        self.held = self._open(cfg, settings.split, settings.images, "images", settings.crop_pct)
        if list(self.bank.classes) != list(self.held.classes):
            raise ConfigError(f"{SECTION}.split={settings.split!r}: its class folders under {cfg.data.path} differ "
                              f"from those of the training split {cfg.data.split!r}")
        if "knn" in settings.monitors and settings.knn_k > len(self.bank):
            raise ConfigError(f"{SECTION}.knn_k={settings.knn_k} exceeds the {len(self.bank)} bank images "
                              f"({SECTION}.bank_images)")
        self.tables = None
        if "position" in settings.monitors:
            args = (num_patches, settings.drop_ratio, settings.probe_tokens_per_image)
            self.tables = (probe_tables(len(self.bank), *args, seed=settings.seed),
                           probe_tables(len(self.held), *args, seed=settings.seed + 1))

    @staticmethod
    def _open(cfg: DictConfig, split: str, images: int, key: str, crop_pct: float):
        """``images`` eval-transformed images of ``split``, spread as ``classification.data.image_dataset``
        spreads ``data.limit``; unreadable ones come back as None (left out of the pass, counted)."""
        view = OmegaConf.create({"data": {"path": str(cfg.data.path), "skip_bad": True, "limit": int(images),
                                          "crop_pct": float(crop_pct)},
                                 "model": {"img_size": int(cfg.model.img_size)}})
        try:
            ds = eval_dataset(view, split)
        except FileNotFoundError as exc:
            raise ConfigError(f"{SECTION}: {exc}") from None
        if images and len(ds) < images:
            raise ConfigError(f"{SECTION}.{key}={images} exceeds the {len(ds)} images of split {split!r} "
                              f"under {cfg.data.path} (0 takes them all)")
        return ds

    def measure(self, method: "PretrainMethod", device: torch.device, precision: str) -> dict[str, Any]:
        """One measurement of the current encoder (every rank calls it; rank 0 gets the values)."""
        s = self.settings
        encoder = method.encoder
        token = position_token(method) if self.tables is not None else None
        # the cls feature of each set only where a monitor reads it: k-NN both sets, RankMe the held-out slice
        cls = ("knn" in s.monitors, "knn" in s.monitors or "rankme" in s.monitors)
        t0 = time.perf_counter()
        passes = []
        for i, ds in enumerate((self.bank, self.held)):
            if not cls[i] and self.tables is None:  # nothing of this set is read (RankMe alone: the bank)
                passes.append(None)
                continue
            fn = MonitorPass(cls[i], self.tables[i] if self.tables else None, token, device)
            passes.append(extract_features(encoder, ds, s.batch_size, self.workers, device, precision, features=fn))
        (bank, held), skipped = passes, {name: dropped_images(ds) for name, ds in (("bank", self.bank), ("held", self.held))}
        record: dict[str, Any] = {"images": len(self.held), "bank_images": len(self.bank),
                                  "feature_seconds": time.perf_counter() - t0}
        if not du.is_main_process():
            return record
        files = sorted({f for _, names in skipped.values() for f in names})
        if files:
            record["bad_files"] = len(files)
            if not self.skip_bad:
                more = f" and {len(files) - 3} more" if len(files) > 3 else ""
                record["error"] = (f"unreadable images in the monitor's images: {', '.join(files[:3])}{more} "
                                   "(set data.skip_bad=true to measure without them)")
                return record
        held_feats, held_labels = held.tensors[0], held.tensors[1]
        feats, labels = (bank.tensors[0], bank.tensors[1]) if bank is not None else (None, None)
        dim = held_feats.shape[-1] - 1
        if cls[1]:
            record.update(self._cls_monitors(feats[:, 0, :dim] if cls[0] else None, labels, held_feats[:, 0, :dim],
                                             held_labels, device))
        if self.tables is not None:
            record.update(self._position(feats[:, int(cls[0]):].to(device), held_feats[:, int(cls[1]):].to(device), dim))
        return record

    def _cls_monitors(self, bank: torch.Tensor | None, bank_labels: torch.Tensor | None, held: torch.Tensor,
                      held_labels: torch.Tensor, device: torch.device) -> dict[str, float]:
        """k-NN (``bank``: the bank's cls features, None when k-NN is off) and RankMe of the held-out slice."""
        s, out = self.settings, {}
        if "knn" in s.monitors:
            t = time.perf_counter()
            votes = knn_votes(bank.to(device), bank_labels.to(device), held.to(device), len(self.bank.classes),
                              s.knn_k, s.knn_temperature)
            scores = vote_accuracy(votes.cpu(), held_labels)
            out.update(knn_top1=scores["top1"], knn_top5=scores["top5"], knn_seconds=time.perf_counter() - t)
        if "rankme" in s.monitors:
            t = time.perf_counter()
            out.update(rankme=rankme(held.to(device)), rankme_seconds=time.perf_counter() - t)
        return out

    def _position(self, bank: torch.Tensor, held: torch.Tensor, dim: int) -> dict[str, float]:
        s, t = self.settings, time.perf_counter()
        x, y = bank[..., :dim].reshape(-1, dim), bank[..., dim].reshape(-1).long()
        head = train_position_head(x, y, self.num_patches, steps=s.probe_steps, lr=s.probe_lr,
                                   weight_decay=s.probe_weight_decay, batch_size=s.probe_batch_size, seed=s.seed)
        scores = evaluate_position_head(head, held[..., :dim].reshape(-1, dim), held[..., dim].reshape(-1).long(),
                                        self.grid)
        return {"position_top1": 100.0 * scores["top1"], "position_within1": 100.0 * scores["within1"],
                "position_drop_ratio": s.drop_ratio, "position_seconds": time.perf_counter() - t}


def _explain(exc: BaseException) -> str:
    from .cli import explain_failure

    return explain_failure(exc) or f"{type(exc).__name__}: {exc}"


class MonitorHook(Hook):
    """Measure the monitors after the due epochs; log them and put them into the epoch's history entry."""

    def __init__(self, monitor: OnlineMonitor, method: "PretrainMethod", device: torch.device, precision: str) -> None:
        self.monitor, self.method, self.device = monitor, method, device
        self.precision = resolve_precision(precision, device)

    def after_epoch(self, trainer: "Trainer") -> None:
        st, epochs = trainer.state, trainer.cfg.epochs
        if not self.monitor.settings.due(st.epoch, epochs):
            return
        t0 = time.perf_counter()
        try:
            with untouched_random_state(self.device), eval_mode(self.method.encoder):
                record = self.monitor.measure(self.method, self.device, self.precision)
        except Exception as exc:  # noqa: BLE001 - a monitor never stops training
            record = {"error": _explain(exc)}
        if not du.is_main_process():
            return
        record = {"epoch": st.epoch, **record, "seconds": time.perf_counter() - t0}
        entry = next((h for h in reversed(st.history) if h.get("epoch") == st.epoch), None)
        if entry is not None:
            record["share_of_epoch"] = record["seconds"] / max(float(entry.get("seconds", 0.0)), 1e-9)
            entry["monitor"] = dict(record)
        trainer.logger.log(st.global_step, record, prefix="monitor")
        print(f"[monitor] epoch {st.epoch}/{epochs}: {describe(record)}", flush=True)


def describe(record: dict[str, Any]) -> str:
    """One line for a monitor record: the values and their cost, or why there are none."""
    cost = f"{record.get('seconds', 0.0):.1f} s"
    if "share_of_epoch" in record:
        cost += f", {100 * record['share_of_epoch']:.1f} % of the epoch"
    if "error" in record:
        return f"not measured: {record['error']} ({cost}; training goes on)"
    shown = [f"{k}={record[k]:.2f}" for k in ("knn_top1", "position_top1", "rankme") if k in record]
    if record.get("bad_files"):
        shown.append(f"{record['bad_files']} unreadable images left out")
    return f"{' '.join(shown)} ({cost})"


def build_monitor_hook(cfg: DictConfig, method: "PretrainMethod", device: torch.device) -> MonitorHook | None:
    """The monitors ``train.monitor`` asks for (None when off), their images opened and checked now."""
    from .monitor_config import monitor_settings

    settings = monitor_settings(cfg)
    if settings is None:
        return None
    monitor = OnlineMonitor(cfg, settings, method.encoder.num_patches, method.encoder.grid_size)
    return MonitorHook(monitor, method, device, str(cfg.train.precision))
