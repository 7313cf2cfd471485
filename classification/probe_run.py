"""What the two trained probes (linear, attentive) share: set-up, inputs, training step, training.

Both read any checkpoint into a frozen ViT (:func:`start_probe`), feed a small head
either cached features (``probe.cache_features``: each image encoded once, no
augmentation) or augmented images through the frozen encoder at every step
(:func:`probe_inputs`), and train it on the engine's run skeleton with an evaluation
hook (:func:`train_probe`: resume, NaN stop, ``best.pth``, ``classification_metrics.json``).
What differs is the head, what it reads (pooled feature or tokens) and the optimizer.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from pretrain.data.transforms import build_pretrain_transform
from pretrain.engine import distributed as du
from pretrain.engine.run import RunEnv, TrainingRun, start_run
from pretrain.engine.sampler import ResumableSampler
from pretrain.engine.trainer import resolve_precision
from pretrain.models.method import MethodOutput
from pretrain.models.vit import VisionTransformer

from .data import ensure_builtin, eval_dataset, eval_loader, image_dataset, num_classes_of, train_loader
from .evaluate import evaluate
from .features import Features, extract_features, frozen_encoder
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


@dataclass
class ProbeInputs:
    """What a probe's Trainer and evaluation read: loaders, the evaluated model and the training step."""

    loader: DataLoader
    sampler: ResumableSampler
    val_loader: DataLoader
    eval_model: nn.Module
    step_fn: Callable
    feature_seconds: float


def probe_inputs(cfg: DictConfig, setup: ProbeSetup, head: nn.Module, features: Features = encoder_features) -> ProbeInputs:
    """Cached (``probe.cache_features``): encode both splits once and feed the head ``features``;
    else images go through the frozen encoder at every step (and evaluation)."""
    workers, device, encoder = int(cfg.data.num_workers), setup.env.device, setup.encoder
    if not cfg.probe.cache_features:
        loader, sampler = train_loader(setup.train_images, int(cfg.train.batch_size), int(cfg.train.seed), workers,
                                       device)
        val_loader = eval_loader(setup.val_images, int(cfg.train.eval_batch_size), workers, device)
        return ProbeInputs(loader, sampler, val_loader, FrozenProbe(encoder, head, features),
                           probe_step_fn(device, encoder, features), 0.0)
    t0 = time.time()
    fbs = int(cfg.probe.feature_batch_size)
    train_set = extract_features(encoder, setup.train_images, fbs, workers, device, setup.precision, features)
    val_set = extract_features(encoder, setup.val_images, fbs, workers, device, setup.precision, features)
    seconds = time.time() - t0
    if du.is_main_process():
        print(f"[{setup.run_dir.tag}] cached features: train {tuple(train_set.tensors[0].shape)}, "
              f"val {tuple(val_set.tensors[0].shape)} in {seconds:.1f}s", flush=True)
    loader, sampler = train_loader(train_set, int(cfg.train.batch_size), int(cfg.train.seed), 0, device, keyed_only=True)
    return ProbeInputs(loader, sampler, eval_loader(val_set, int(cfg.train.eval_batch_size), 0, device), head,
                       probe_step_fn(device, None), seconds)


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
        metrics={**metrics, "feature_seconds": inputs.feature_seconds},
    )
