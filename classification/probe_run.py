"""What the two trained probes (linear, attentive) share: set-up, inputs, training step, training.

Both read any checkpoint into a frozen ViT (:func:`start_probe`), feed a small head
either cached features (``probe.cache_features``: each image encoded once, no
augmentation) or augmented images through the frozen encoder at every step
(:func:`probe_inputs`), and train it on the engine's run skeleton with an evaluation
hook (:func:`train_probe`: resume, NaN stop, ``best.pth``, ``classification_metrics.json``).
What differs is the head, what it reads (pooled feature or tokens) and the optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from pretrain.data.transforms import build_pretrain_transform
from pretrain.engine import distributed as du
from pretrain.engine.config import ConfigError
from pretrain.engine.run import RunEnv, TrainingRun, start_run
from pretrain.engine.sampler import ResumableSampler
from pretrain.engine.trainer import resolve_precision
from pretrain.models.method import MethodOutput
from pretrain.models.vit import VisionTransformer

from .data import ensure_builtin, eval_dataset, eval_loader, image_dataset, num_classes_of, train_loader
from .evaluate import evaluate
from .features import VIEWS, Features, config_features, frozen_encoder, require_classes, require_images
from .load import LoadReport, PretrainedEncoder
from .loop import EvaluationHook
from .model import FrozenProbe, encoder_features
from .runs import read_checkpoint, train_and_finish


@dataclass
class ProbeSetup:
    """A probe run once its data and frozen encoder are known."""

    env: RunEnv
    precision: str
    train_images: Dataset
    val_images: Dataset
    num_classes: int
    run_dir: TrainingRun
    pretrained: PretrainedEncoder | None
    encoder: VisionTransformer
    report: LoadReport | None


def probe_datasets(cfg: DictConfig) -> tuple[Dataset, Dataset]:
    """Train and val images of a probe: with ``probe.cache_features`` both get the eval transform
    (each image is encoded once); otherwise training images are RandomResizedCrop + flip (MAE's probe)."""
    ensure_builtin(cfg)
    if cfg.probe.cache_features:
        train_images = eval_dataset(cfg, cfg.data.train_split)  # no augmentation: each image encoded once
    else:
        train_images = image_dataset(cfg, cfg.data.train_split, build_pretrain_transform(
            int(cfg.model.img_size), scale=tuple(cfg.probe.scale), hflip=float(cfg.probe.hflip)))
    return train_images, eval_dataset(cfg)


def start_probe(cfg: DictConfig, tag: str) -> ProbeSetup:
    """Ranks and seeds, the data, the run folder (config saved, log open), the frozen encoder with its checkpoint."""
    env = start_run(cfg)
    precision = resolve_precision(cfg.train.precision, env.device)
    train_images, val_images = probe_datasets(cfg)
    require_classes(train_images, cfg.data.train_split, cfg.data.path, tag.replace("_", " "))
    num_classes = num_classes_of(train_images, cfg.model.num_classes)
    run_dir = TrainingRun(cfg, env, tag)
    run_dir.prepare_output()
    pretrained = read_checkpoint(cfg)
    encoder, report = frozen_encoder(cfg, pretrained, num_classes, run_dir.out_dir, tag, env.device)
    return ProbeSetup(env, precision, train_images, val_images, num_classes, run_dir, pretrained, encoder, report)


def probe_step_fn(device: torch.device, encoder: nn.Module | None, features: Features = encoder_features):
    """The Trainer's step of a probe: batch -> MethodOutput (cross-entropy, top-1 of the batch).

    With ``encoder`` the batch holds images that go through the frozen encoder first
    (``features(encoder, images)``); without, it holds cached features.
    """

    def step(head: nn.Module, batch) -> MethodOutput:
        x = batch[0].to(device, non_blocking=True)
        target = batch[1].to(device, non_blocking=True)
        if encoder is not None:
            with torch.no_grad():
                x = features(encoder, x)
        logits = head(x).float()
        loss = F.cross_entropy(logits, target)
        acc1 = (logits.detach().argmax(1) == target).float().mean() * 100
        return MethodOutput(loss=loss, metrics={"loss": loss.detach(), "acc1": acc1}, outputs={})

    return step


def require_batch(cfg: DictConfig, images: int, what: str, note: str = "") -> None:
    """Refuse a training split smaller than one batch per process: an epoch would have no step (drop_last).
    ``note`` follows the folder in the message (e.g. that ``images`` is an upper bound)."""
    world, batch, accum = du.get_world_size(), int(cfg.train.batch_size), int(cfg.train.accum_iter)
    if images < batch * world * accum:
        raise ConfigError(f"train.batch_size={batch} x train.accum_iter={accum} x {world} process(es) exceeds the "
                          f"{images} {what} under {cfg.data.path}/{cfg.data.train_split}{note}: an epoch would have "
                          "no step (lower train.batch_size)")


@dataclass
class ProbeInputs:
    """What a probe's Trainer and evaluation read: loaders, the evaluated model and the training step."""

    loader: DataLoader
    sampler: ResumableSampler
    val_loader: DataLoader
    eval_model: nn.Module
    step_fn: Callable
    feature_seconds: float
    feature_cache: dict[str, str] | None = None  # per split: off / hit / stored / not stored (why)


def probe_inputs(cfg: DictConfig, setup: ProbeSetup, head: nn.Module, view: str = "pooled") -> ProbeInputs:
    """Cached (``probe.cache_features``): encode both splits once (the shared feature pass, through the
    ``feature_cache`` folder when set) and feed the head that ``view``; else images go through the frozen
    encoder at every step (and evaluation)."""
    workers, device, encoder = int(cfg.data.num_workers), setup.env.device, setup.encoder
    features = VIEWS[view]
    if not cfg.probe.cache_features:
        require_batch(cfg, len(setup.train_images), "train images")
        loader, sampler = train_loader(setup.train_images, int(cfg.train.batch_size), int(cfg.train.seed), workers,
                                       device)
        val_loader = eval_loader(setup.val_images, int(cfg.train.eval_batch_size), workers, device)
        return ProbeInputs(loader, sampler, val_loader, FrozenProbe(encoder, head, features),
                           probe_step_fn(device, encoder, features), 0.0)
    fbs, tag = int(cfg.probe.feature_batch_size), setup.run_dir.tag
    # before the feature pass, on the split's size (no more can be readable); again after it on the readable ones
    require_batch(cfg, len(setup.train_images), "readable train images", " (at most: every file of the split)")
    train = config_features(cfg, encoder, setup.train_images, view, fbs, device, setup.precision, tag)
    val = config_features(cfg, encoder, setup.val_images, view, fbs, device, setup.precision, tag)
    require_images(train, setup.train_images, cfg.data.train_split, cfg.data.path)
    require_images(val, setup.val_images, cfg.data.val_split, cfg.data.path)
    train_set, val_set = train.dataset, val.dataset
    require_batch(cfg, len(train_set), "readable train images")
    seconds = train.seconds + val.seconds
    if du.is_main_process():
        print(f"[{tag}] cached features: train {tuple(train_set.tensors[0].shape)}, "
              f"val {tuple(val_set.tensors[0].shape)} in {seconds:.1f}s", flush=True)
    loader, sampler = train_loader(train_set, int(cfg.train.batch_size), int(cfg.train.seed), 0, device, keyed_only=True)
    return ProbeInputs(loader, sampler, eval_loader(val_set, int(cfg.train.eval_batch_size), 0, device), head,
                       probe_step_fn(device, None), seconds, {"train": train.cache, "val": val.cache})


def train_probe(
    cfg: DictConfig,
    setup: ProbeSetup,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: ProbeInputs,
    *,
    lr: float,
    total_batch: int,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Train a probe head on the run skeleton, evaluating every ``train.eval_every`` epochs (best head in
    ``best.pth``); returns the metrics written to ``classification_metrics.json``."""
    device, precision = setup.env.device, setup.precision
    evaluation = EvaluationHook(lambda: evaluate(inputs.eval_model, inputs.val_loader, device, precision),
                                int(cfg.train.eval_every), setup.run_dir.out_dir / "best.pth",
                                best_state=lambda trainer: {"head": head.state_dict()})
    return train_and_finish(
        cfg, setup.env, setup.run_dir, model=head, train_images=setup.train_images, val_images=setup.val_images,
        optimizer=optimizer, loader=inputs.loader, sampler=inputs.sampler,
        step_fn=inputs.step_fn, lr=lr, precision=precision, evaluation=evaluation, pretrained=setup.pretrained,
        report=setup.report, num_classes=setup.num_classes, total_batch=total_batch,
        metrics={**metrics, "feature_seconds": inputs.feature_seconds, "feature_cache": inputs.feature_cache},
    )
