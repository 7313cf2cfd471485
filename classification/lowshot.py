"""Low-shot classification: logistic regression on frozen features of a few labelled images (MSN / DINO protocol).

Single process:   python -m classification.lowshot --config classification/configs/lowshot_vit_tiny_builtin.yaml \
                      checkpoint=outputs/demo/droppos/pretrain/backbone.pth train.output_dir=outputs/demo/lowshot
ImageNet:         torchrun --nproc_per_node 8 -m classification.lowshot checkpoint=... data.path=/data/imagenet
                      (lowshot.subsets: the 1 % and 10 % lists in IMAGENET/lowshot/; the ranks share the
                      feature pass, the main process fits the regressions on the CPU)
In process:       classification.lowshot.run(load_lowshot_config("lowshot_vit_tiny_builtin", [...]))

The frozen encoder (``classification.features``: any checkpoint, or a random initialisation for
the scratch baseline) encodes the labelled train images and the val images once, without
augmentation (Resize + CenterCrop), as the cls token after the final norm (``model.global_pool``),
through the shared feature pass (``feature_cache``: the exact cache the probes share).
For each subset (``classification.lowshot_subsets``): scikit-learn's multinomial
``LogisticRegression`` (lbfgs, L2) on standardised features (``StandardScaler`` fitted on the
training images only) is fitted for every ``lowshot.C``; the C with the best top-1 on the held-out
part of the subset wins (ties: the smaller C, the stronger regularisation), then the model is
refitted on the whole subset and scored once on val. Val never takes part in the choice. With one
image per class nothing can be held out: ``lowshot.fallback_C`` is used and the metrics say so.
Writes ``lowshot_metrics.json`` and, per subset, the list of images it used.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import Subset as TorchSubset

from pretrain.atomic import atomic_write_json, atomic_write_text
from pretrain.engine import distributed as du
from pretrain.engine.cli import run_cli
from pretrain.engine.config import ConfigError, load_config, save_config
from pretrain.engine.run import start_run
from pretrain.engine.trainer import resolve_precision

from .data import ensure_builtin
from .feature_cache import image_folder_of
from .features import config_features, eval_splits, frozen_encoder, require_images
from .lowshot_subsets import LowShotError, holdout_mask, resolve
from .runs import arch_name, read_checkpoint, validate_frozen

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
LOWSHOT_DEFAULT = CONFIG_DIR / "lowshot_default.yaml"
METRICS_FILE = "lowshot_metrics.json"
PROTOCOL = ("frozen features (no augmentation), StandardScaler fitted on the subset, scikit-learn "
            "LogisticRegression (lbfgs, multinomial, L2); C picked by top-1 on a held-out part of the subset "
            "(never val), then refitted on the whole subset and scored once on val")


def validate(cfg: DictConfig) -> None:
    """Checks before any work: task, the shared frozen-encoder ones (runs.validate_frozen), subsets, the C
    grid, holdout share, positive sizes."""
    if cfg.task != "lowshot":
        raise ConfigError(f"task must be 'lowshot', got {cfg.task!r}")
    validate_frozen(cfg, ("lowshot.max_iter", "lowshot.feature_batch_size"))
    ls = cfg.lowshot
    if not ls.subsets:
        raise ConfigError("lowshot.subsets is empty: name per_class:N or a list file")
    if not ls.C or any(float(c) <= 0 for c in ls.C):
        raise ConfigError(f"lowshot.C must be a non-empty list of positive inverse regularisation strengths, got {list(ls.C)}")
    if float(ls.fallback_C) <= 0:
        raise ConfigError(f"lowshot.fallback_C must be > 0, got {ls.fallback_C}")
    if not 0.0 < float(ls.holdout) < 1.0:
        raise ConfigError(f"lowshot.holdout must lie in (0, 1), got {ls.holdout}")


def load_lowshot_config(recipes: str | Sequence[str] | None = None, overrides: Sequence[str] = ()) -> DictConfig:
    """Default low-shot config <- recipe file(s) (path or name in classification/configs) <- key=value."""
    return load_config(recipes, overrides, default=LOWSHOT_DEFAULT, validator=validate)


def _classifier(C: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=float(C), max_iter=int(max_iter)))


def select_and_fit(
    features: np.ndarray,
    labels: np.ndarray,
    held_out: np.ndarray,
    Cs: Sequence[float],
    fallback_C: float,
    max_iter: int = 1000,
) -> tuple[Any, dict[str, Any]]:
    """Pick C on the held-out part of the training images, refit on all of them.

    ``features`` [N, D] and ``labels`` [N] are the subset's only; ``held_out`` [N] bool marks the
    part that scores each C. Returns the fitted pipeline and the record of the choice.
    """
    scores: dict[str, float] = {}
    if held_out.any():
        fit = ~held_out
        for C in sorted(float(c) for c in Cs):
            clf = _classifier(C, max_iter).fit(features[fit], labels[fit])
            scores[f"{C:g}"] = 100.0 * float((clf.predict(features[held_out]) == labels[held_out]).mean())
        best = max(scores.values())
        chosen = min(float(c) for c, s in scores.items() if s == best)
        how = "held-out"
    else:
        chosen, how = float(fallback_C), "fixed: every class has one image, none can be held out"
    final = _classifier(chosen, max_iter).fit(features, labels)
    return final, {"C": chosen, "C_selection": how, "holdout_top1": scores,
                   "holdout_images": int(held_out.sum()), "fit_images": int((~held_out).sum())}


def topk(model: Any, features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 / top-5 (percent) of a fitted pipeline; classes absent from its training count as wrong."""
    proba = model.predict_proba(features)
    classes = np.asarray(model.classes_)
    order = classes[np.argsort(-proba, axis=1, kind="stable")]
    k = min(5, order.shape[1])
    hits = order[:, :k] == labels[:, None]
    return {"top1": 100.0 * float(hits[:, 0].mean()), "top5": 100.0 * float(hits.any(1).mean())}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Every low-shot subset -> its val top-1 / top-5; returns the metrics (also in lowshot_metrics.json)."""
    env = start_run(cfg)
    ensure_builtin(cfg)
    # the train split (where the labelled images come from) and the val split, both with the eval transform
    train_images, val_images = eval_splits(cfg, "low-shot evaluation")
    device = env.device
    precision = resolve_precision(cfg.train.precision, device)
    base, positions = image_folder_of(train_images)
    samples = [base.samples[i] for i in positions]
    classes = list(train_images.classes)
    root = Path(cfg.data.path)
    ls = cfg.lowshot
    subsets = [resolve(str(s), samples, classes, root, int(ls.subset_seed), cfg.data.train_split) for s in ls.subsets]
    keys = [s.key for s in subsets]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"lowshot.subsets names two subsets alike: {keys}")

    out_dir = Path(cfg.train.output_dir)
    if du.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    pretrained = read_checkpoint(cfg)
    encoder, report = frozen_encoder(cfg, pretrained, len(classes), out_dir, "lowshot", device)

    t0 = time.time()
    union = sorted({i for s in subsets for i in s.indices})
    fbs = int(ls.feature_batch_size)
    labelled = TorchSubset(train_images, union)
    train_pass = config_features(cfg, encoder, labelled, "pooled", fbs, device, precision, "lowshot")
    val_pass = config_features(cfg, encoder, val_images, "pooled", fbs, device, precision, "lowshot")
    require_images(val_pass, val_images, cfg.data.val_split, cfg.data.path)
    train, val = train_pass.dataset, val_pass.dataset
    feature_seconds = time.time() - t0
    if len(train.tensors[0]) != len(union):
        raise ConfigError("unreadable low-shot training images were dropped (data.skip_bad): the subset changed; "
                          "mend or remove them from the list")
    metrics: dict[str, Any] = {}
    if du.is_main_process():  # the features are on every rank (gathered); one process fits the regressions
        results = fit_subsets(cfg, subsets, union, samples, train, val, len(classes), out_dir)
        metrics = {
            "task": "lowshot", "subsets": results, "protocol": PROTOCOL,
            "C_grid": [float(c) for c in ls.C], "fallback_C": float(ls.fallback_C), "holdout": float(ls.holdout),
            "subset_seed": int(ls.subset_seed), "global_pool": cfg.model.global_pool,
            "checkpoint": str(cfg.checkpoint) if pretrained is not None else None,
            "pretrain_method": pretrained.method if pretrained is not None else None,
            "arch": arch_name(cfg), "seed": int(cfg.train.seed), "num_classes": len(classes),
            "val_images": len(val_images), "feature_dim": int(train.tensors[0].shape[1]),
            "load_report": str(out_dir / "load_report.json") if report is not None else None,
            "feature_seconds": feature_seconds, "feature_cache": {"train": train_pass.cache, "val": val_pass.cache},
            "solver": _solver_name(), "precision": precision, "device": str(device), "world_size": env.world,
        }
        atomic_write_json(out_dir / METRICS_FILE, metrics)
        shown = ", ".join(f"{k}: top1 {v['top1']:.2f} (C {v['C']:g})" for k, v in results.items())
        print(f"[lowshot] {arch_name(cfg)} {shown} -> {out_dir / METRICS_FILE}", flush=True)
    du.barrier()
    return metrics


def fit_subsets(cfg: DictConfig, subsets: list, union: list[int], samples: list, train, val, num_classes: int,
                out_dir: Path) -> dict[str, Any]:
    """Each subset's regression (C on its held-out part), its val scores, and the list of its images."""
    ls, root = cfg.lowshot, Path(cfg.data.path)
    row = {i: r for r, i in enumerate(union)}
    tx, ty = train.tensors[0].numpy().astype(np.float64), train.tensors[1].numpy()
    vx, vy = val.tensors[0].numpy().astype(np.float64), val.tensors[1].numpy()
    results = {}
    for s in subsets:
        t1 = time.time()
        rows = np.asarray([row[i] for i in s.indices])
        held = holdout_mask(ty[rows].tolist(), float(ls.holdout), int(ls.subset_seed)).numpy()
        model, choice = select_and_fit(tx[rows], ty[rows], held, list(ls.C), float(ls.fallback_C), int(ls.max_iter))
        counts = np.bincount(ty[rows], minlength=num_classes)
        listing = out_dir / f"subset_{s.key}.txt"
        split_dir = root / cfg.data.train_split  # the list in the form tools.prepare_data writes (<class>/<file>)
        atomic_write_text(listing, "".join(f"{Path(samples[i][0]).relative_to(split_dir).as_posix()}\n"
                                           for i in s.indices))
        results[s.key] = {**topk(model, vx, vy), **choice, "subset": s.name, "source": s.source,
                          "images": len(s.indices), "images_per_class": {"min": int(counts.min()), "max": int(counts.max())},
                          "list": str(listing), "fit_seconds": time.time() - t1}
    return results


def _solver_name() -> str:
    import sklearn

    return f"scikit-learn {sklearn.__version__} LogisticRegression(lbfgs)"


def main(argv: list[str] | None = None) -> int:
    def guarded(cfg: DictConfig) -> dict[str, Any]:
        try:
            return run(cfg)
        except LowShotError as exc:  # a subset that cannot be used: a configuration error, one line
            raise ConfigError(str(exc)) from None

    return run_cli(argv, "Low-shot logistic regression on a frozen ViT's features (MSN / DINO protocol)",
                   load_lowshot_config, guarded)


if __name__ == "__main__":
    sys.exit(main())
