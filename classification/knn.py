"""Weighted k-nearest-neighbour classification on frozen features (the DINO protocol).

Single process:   python -m classification.knn --config classification/configs/knn_vit_tiny_builtin.yaml \
                      checkpoint=outputs/demo/droppos_vit_tiny/backbone.pth train.output_dir=outputs/demo/knn
Multi GPU/node:   torchrun --nproc_per_node 8 -m classification.knn --config ... data.path=/data/imagenet
In process:       classification.knn.run(load_knn_config("knn_vit_tiny_builtin", [...]))

Every train and val image is encoded once by the frozen ViT (Resize + CenterCrop, no
augmentation, so caching is exact): the cls token after the final norm
(``model.global_pool=token``) or the mean of the patch tokens (``avg``). Features are
L2-normalised; each val image takes its ``knn.k`` most cosine-similar train images,
which vote for their class with weight ``exp(similarity / knn.temperature)`` (DINO:
k = 20, T = 0.07). Prediction = the class with the largest summed vote; ties go to the
lower class index, and top-5 reads the five largest votes in that order. Nothing is
trained, so the only randomness is a random initialisation's (``checkpoint=none``, the
scratch baseline, drawn from ``train.seed``). Writes ``knn_metrics.json``. With
``feature_cache=DIR`` the features come from (or go to) the exact cache the probes share
(``classification.features.encode_dataset``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from pretrain.atomic import atomic_write_json
from pretrain.data.imagefolder import BadImageTally
from pretrain.engine import distributed as du
from pretrain.engine.cli import run_cli
from pretrain.engine.config import ConfigError, load_config, save_config
from pretrain.engine.run import start_run
from pretrain.engine.trainer import resolve_precision

from .data import ensure_builtin
from .features import EncodedSplit, config_features, eval_splits, frozen_encoder, require_images
from .runs import arch_name, read_checkpoint, validate_frozen

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
KNN_DEFAULT = CONFIG_DIR / "knn_default.yaml"
METRICS_FILE = "knn_metrics.json"


def validate(cfg: DictConfig) -> None:
    """Checks before any work: the task, the shared frozen-encoder ones (runs.validate_frozen), k >= 1 and T > 0."""
    if cfg.task != "knn":
        raise ConfigError(f"task must be 'knn', got {cfg.task!r}")
    validate_frozen(cfg, ("knn.feature_batch_size", "knn.query_chunk"))
    if int(cfg.knn.k) < 1:
        raise ConfigError(f"knn.k must be a positive number of neighbours (DINO: 20), got {cfg.knn.k}")
    if not float(cfg.knn.temperature) > 0:
        raise ConfigError(f"knn.temperature must be > 0 (DINO: 0.07), got {cfg.knn.temperature}")


def load_knn_config(recipes: str | Sequence[str] | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Default k-NN config <- recipe file(s) (path or name in classification/configs) <- key=value."""
    return load_config(recipes, overrides, default=KNN_DEFAULT, validator=validate)


@torch.no_grad()
def knn_votes(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Summed class votes [Q, C] of each query's ``k`` nearest train features (cosine similarity).

    Both feature sets are L2-normalised; a neighbour with similarity s votes exp(s / temperature)
    for its class, scaled per query by exp(-s_max / temperature) (s_max: its nearest neighbour's
    similarity), which leaves the ranking as it is and keeps every weight in (0, 1]: unscaled,
    exp(1 / 0.001) is inf in float32. Queries are compared with the whole train set ``chunk`` at a time.
    """
    if not 1 <= k <= len(train_features):
        raise ValueError(f"k={k} must lie between 1 and the {len(train_features)} train features")
    bank = F.normalize(train_features.float(), dim=1)
    votes = []
    for queries in F.normalize(query_features.float(), dim=1).split(chunk):
        sim, idx = (queries @ bank.T).topk(k, dim=1)  # sorted: column 0 holds the row's largest similarity
        weights = ((sim - sim[:, :1]) / temperature).exp()  # in (0, 1]: no overflow at any temperature
        votes.append(weights.new_zeros(len(queries), num_classes).scatter_add_(1, train_labels[idx], weights))
    return torch.cat(votes) if votes else bank.new_zeros(0, num_classes)


def vote_accuracy(votes: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 / top-5 (percent) of the vote ranking; ties rank the lower class index first.

    With fewer than 5 classes top-5 reads all of them (100 %), as ``classification.evaluate`` does.
    """
    order = torch.sort(votes, dim=1, descending=True, stable=True).indices
    hits = order[:, :min(5, votes.shape[1])].eq(labels[:, None])
    n = max(len(labels), 1)
    return {"top1": 100.0 * hits[:, 0].sum().item() / n, "top5": 100.0 * hits.any(1).sum().item() / n}


def dropped_images(dataset) -> tuple[dict[str, Any], list[str]]:
    """The unreadable files an evaluation pass left out of ``dataset`` (all ranks): record and names."""
    tally = BadImageTally(dataset)
    record, files = tally.summary(du.all_gather_object(tally.state()))
    record.pop("bad_image_skips")
    return {"images": len(dataset), **record}, files


def check_readable(cfg: DictConfig, k: int, train: EncodedSplit, train_images, val: EncodedSplit, val_images) -> None:
    """After the pass: queries to classify, and at least ``k`` readable train images (unreadable ones left out)."""
    require_images(val, val_images, cfg.data.val_split, cfg.data.path)
    require_images(train, train_images, cfg.data.train_split, cfg.data.path)
    if k > len(train.dataset):
        raise ConfigError(f"knn.k={k} exceeds the {len(train.dataset)} readable train images under {cfg.data.path} "
                          f"({len(train_images) - len(train.dataset)} of {len(train_images)} were unreadable and "
                          "left out by data.skip_bad=true)")


def run(cfg: DictConfig) -> dict[str, Any]:
    """k-NN-classify the val split by the train split; returns the metrics (also in knn_metrics.json)."""
    env = start_run(cfg)
    device = env.device
    precision = resolve_precision(cfg.train.precision, device)
    ensure_builtin(cfg)
    train_images, val_images = eval_splits(cfg, "k-NN evaluation")
    k, temperature = int(cfg.knn.k), float(cfg.knn.temperature)
    if k > len(train_images):  # surely too many; check_readable compares k with the readable images
        raise ConfigError(f"knn.k={k} exceeds the {len(train_images)} train images under {cfg.data.path}")
    num_classes = len(train_images.classes)

    out_dir = Path(cfg.train.output_dir)
    if du.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    pretrained = read_checkpoint(cfg)
    encoder, report = frozen_encoder(cfg, pretrained, num_classes, out_dir, "knn", device)

    t0 = time.time()
    fbs = int(cfg.knn.feature_batch_size)
    train_pass = config_features(cfg, encoder, train_images, "pooled", fbs, device, precision, "knn")
    val_pass = config_features(cfg, encoder, val_images, "pooled", fbs, device, precision, "knn")
    train, val = train_pass.dataset, val_pass.dataset
    check_readable(cfg, k, train_pass, train_images, val_pass, val_images)
    t1 = time.time()
    votes = knn_votes(train.tensors[0].to(device), train.tensors[1].to(device), val.tensors[0].to(device),
                      num_classes, k, temperature, int(cfg.knn.query_chunk))
    scores = vote_accuracy(votes.cpu(), val.tensors[1])
    dropped = {split: dropped_images(ds) for split, ds in (("train", train_images), ("val", val_images))}
    metrics = {
        "task": "knn",
        **scores,
        "k": k,
        "temperature": temperature,
        "global_pool": cfg.model.global_pool,
        "checkpoint": str(cfg.checkpoint) if pretrained is not None else None,
        "pretrain_method": pretrained.method if pretrained is not None else None,
        "arch": arch_name(cfg),
        "seed": int(cfg.train.seed),
        "num_classes": num_classes,
        "train_images": len(train_images),
        "val_images": len(val_images),
        # unreadable images (data.skip_bad) are left out of both the bank and the queries, never replaced
        "data": {"skip_bad": bool(cfg.data.skip_bad), **{k: v for k, (v, _) in dropped.items()}},
        "feature_dim": int(train.tensors[0].shape[1]),
        "feature_cache": {"train": train_pass.cache, "val": val_pass.cache},
        "load_report": str(out_dir / "load_report.json") if report is not None else None,
        "feature_seconds": t1 - t0,
        "knn_seconds": time.time() - t1,
        "precision": precision,
        "device": str(device),
        "world_size": env.world,
    }
    if du.is_main_process():
        for split, (record, files) in dropped.items():
            if files:
                print(f"[knn] left out {len(files)} unreadable {split} images (data.skip_bad=true): "
                      f"{', '.join(files)}", flush=True)
        atomic_write_json(out_dir / METRICS_FILE, metrics)
        print(f"[knn] {arch_name(cfg)} pool={cfg.model.global_pool} k={k} T={temperature:g} "
              f"train={len(train_images)} val={len(val_images)}: top1={scores['top1']:.2f} "
              f"top5={scores['top5']:.2f} -> {out_dir / METRICS_FILE}", flush=True)
    du.barrier()
    return metrics


def main(argv: list[str] | None = None) -> int:
    return run_cli(argv, "Weighted k-NN classification on a frozen ViT's features (DINO protocol)",
                   load_knn_config, run)


if __name__ == "__main__":
    sys.exit(main())
