"""Frozen-encoder features of every frozen-feature protocol (linear probe, k-NN, attentive probe).

:func:`frozen_encoder` builds the suite's ViT for a run config, loads any checkpoint
``pretrain.weights`` reads (or keeps a random initialisation, the scratch baseline),
prints and saves the load report, drops the classifier head and freezes the rest.
:func:`extract_features` encodes a data set once, without augmentation, into a
tensor per image: the pooled feature (:func:`~classification.model.encoder_features`)
or the token sequence (:func:`~classification.model.encoder_tokens`). Caching is
exact because the encoder is frozen and in eval mode (no dropout, no drop path).

:func:`encode_dataset` is the public feature pass (the probes and any new frozen-feature
protocol call it): one *view* of a split (``pooled``, ``patch_tokens`` or ``all_tokens``),
read from or written to the exact cache of :mod:`classification.feature_cache` when a
cache folder is given. With a cls-token encoder it stores the whole output sequence
(under :data:`SEQUENCE_LIMIT_BYTES`), of which every view is a slice, so the linear
probe, k-NN and the attentive probe of one backbone share one pass. :func:`config_features`
is the same for a run config (``feature_cache``, ``checkpoint``, ``data.num_workers``).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset, TensorDataset

from pretrain.engine import distributed as du
from pretrain.engine.trainer import autocast_context
from pretrain.models.vit import VisionTransformer
from pretrain.engine.config import ConfigError
from pretrain.weights import CheckpointError
from pretrain.weights.card import file_sha256

from .data import eval_dataset, eval_loader
from .feature_cache import (KEY_VERSION, FeatureCache, code_identity, compute_identity, data_identity, state_digest,
                            transform_identity)
from .load import LoadReport, PretrainedEncoder
from .model import build_classifier, encoder_features, encoder_tokens
from .runs import arch_name, report_load, use_rel_pos

Features = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def frozen_encoder(
    cfg: DictConfig,
    pretrained: PretrainedEncoder | None,
    num_classes: int,
    out_dir: Path,
    tag: str,
    device: torch.device,
) -> tuple[VisionTransformer, LoadReport | None]:
    """The run's ViT with the checkpoint loaded (strictly: only head / fc_norm may stay new), head removed,
    frozen, in eval mode on ``device``; with the load report (None for a random initialisation).

    A checkpoint of another architecture than ``cfg.model`` raises CheckpointError naming the file
    and the keys that do not fit.
    """
    model = cfg.model  # no drop path: the encoder only runs in eval mode
    encoder = build_classifier(model.size, num_classes=num_classes, img_size=int(model.img_size),
                               patch_size=int(model.patch_size), global_pool=model.global_pool,
                               rel_pos=use_rel_pos(cfg, pretrained))
    try:
        report = report_load(encoder, pretrained, out_dir, tag)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}\n(the {tag} config builds {arch_name(cfg)}: model.size={cfg.model.size}, "
                              f"model.patch_size={cfg.model.patch_size})") from None
    encoder.head = nn.Identity()  # features only; a probe's head lives apart
    encoder.requires_grad_(False).eval().to(device)
    return encoder, report


def _gather_shards(x: torch.Tensor, n: int) -> torch.Tensor:
    """Rank r holds samples r, r + world, ... of ``n``: gather the shards onto every rank, in dataset order.

    When unreadable images were dropped (``data.skip_bad``) the shards are shorter than that
    and are concatenated rank after rank instead (the order no longer maps to the data set).
    """
    world = du.get_world_size()
    counts = [torch.zeros((), dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor(len(x), device=x.device))
    counts = [int(c) for c in counts]
    per = max(counts)
    x = torch.cat([x, x.new_zeros(per - len(x), *x.shape[1:])])
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    if counts != [len(range(r, n, world)) for r in range(world)]:
        return torch.cat([part[:c] for part, c in zip(parts, counts)])
    full = x.new_empty(n, *x.shape[1:])
    for r in range(world):
        full[r::world] = parts[r][:counts[r]]
    return full


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    dataset: Dataset,
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: str,
    features: Features = encoder_features,
) -> TensorDataset:
    """Encode every image once (each rank its share, then gathered onto every rank).

    ``features(encoder, images)`` gives one tensor per image (default: the pooled [D] feature).
    Returns TensorDataset(features [N, ...] float32 on the CPU, labels [N]) in dataset order
    (images dropped as unreadable with ``data.skip_bad`` are left out).
    """
    loader = eval_loader(dataset, batch_size, workers, device)
    feats, labels = [], []
    for batch in loader:
        if batch is None:  # every image of the batch was unreadable and dropped (data.skip_bad)
            continue
        images, target = batch[0], batch[1]
        with autocast_context(device, precision):
            feats.append(features(encoder, images.to(device, non_blocking=True)).float())
        labels.append(target.to(device))
    if feats:
        f = torch.cat(feats)
    else:  # an empty shard still needs the feature shape for the gather
        blank = torch.zeros(1, 3, *encoder.patch_embed.img_size, device=device)
        f = torch.zeros(0, *features(encoder, blank).shape[1:], device=device)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    if du.get_world_size() > 1:
        f, y = _gather_shards(f, len(dataset)), _gather_shards(y, len(dataset))
    return TensorDataset(f.cpu(), y.cpu())


# ----------------------------------------------------------------- the shared, cached feature pass
VIEWS: dict[str, Features] = {
    "pooled": encoder_features,  # [N, D]: cls token after the final norm, or the patch mean + fc_norm
    "patch_tokens": functools.partial(encoder_tokens, include_cls=False),  # [N, L, D] after the final norm
    "all_tokens": functools.partial(encoder_tokens, include_cls=True),  # [N, 1 + L, D]
}
# With a cls-token encoder the whole output sequence is stored when it stays under this size,
# so that every view of the split comes from one pass (ViT-B on ImageNet-1K stores its view only).
SEQUENCE_LIMIT_BYTES = 4 << 30


@dataclass
class EncodedSplit:
    """What :func:`encode_dataset` gives: the features, and how they were obtained.

    ``cache``: ``off`` (no cache folder), ``hit`` (read from ``file``), ``stored`` (computed,
    written to ``file``) or ``not stored: <why>`` (computed, e.g. unreadable images were left out).
    """

    dataset: TensorDataset
    cache: str
    file: Path | None
    seconds: float

    @property
    def features(self) -> torch.Tensor:
        return self.dataset.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.dataset.tensors[1]


def _token_pooled(encoder: nn.Module) -> bool:
    """Whether the encoder's pooled feature is its output sequence's cls row (global_pool='token')."""
    return (getattr(encoder, "global_pool", None) == "token" and isinstance(getattr(encoder, "fc_norm", None),
                                                                           nn.Identity)
            and int(getattr(encoder, "num_prefix_tokens", 0)) == 1 and getattr(encoder, "attn_pool", None) is None)


def _slice_view(sequence: torch.Tensor, view: str) -> torch.Tensor:
    """A view of the cls-token encoder's output sequence [N, 1 + L, D] (the same bits its own pass gives)."""
    if view == "pooled":
        return sequence[:, 0].contiguous()
    return sequence[:, 1:].contiguous() if view == "patch_tokens" else sequence


# encoder -> (its state tensors when digested, the digest). Weak keys: an entry goes with its encoder, so a
# recycled id() never finds another encoder's digest. The tensors are held, so their memory cannot be reused
# by new ones: equal data pointers and version counters (bumped by every in-place write, load_state_dict's
# copy_ included) mean the very same, unchanged tensors.
_STATE_DIGESTS: "weakref.WeakKeyDictionary[nn.Module, tuple[list[tuple[str, torch.Tensor, int]], str]]" = \
    weakref.WeakKeyDictionary()


def _state_snapshot(encoder: nn.Module) -> list[tuple[str, torch.Tensor, int]] | None:
    try:
        return [(name, t, t._version) for name, t in encoder.state_dict().items()]
    except RuntimeError:  # e.g. an inference-mode tensor has no version counter: never memoised
        return None


def _same_tensors(now: list[tuple[str, torch.Tensor, int]], then: list[tuple[str, torch.Tensor, int]]) -> bool:
    return len(now) == len(then) and all(
        n1 == n2 and v1 == v2 and t1.data_ptr() == t2.data_ptr() and t1.dtype == t2.dtype and t1.shape == t2.shape
        and t1.stride() == t2.stride() and t1.device == t2.device
        for (n1, t1, v1), (n2, t2, v2) in zip(now, then))


def encoder_state_digest(encoder: nn.Module) -> str:
    """:func:`~classification.feature_cache.state_digest` of ``encoder``, computed once while its state tensors
    stay the same objects, unwritten (a frozen encoder's every split and view share one digest)."""
    now = _state_snapshot(encoder)
    memo = _STATE_DIGESTS.get(encoder)
    if now is not None and memo is not None and _same_tensors(now, memo[0]):
        return memo[1]
    digest = state_digest(encoder)
    if now is not None:
        _STATE_DIGESTS[encoder] = (now, digest)
    return digest


def _weights_identity(encoder: nn.Module, checkpoint: str | os.PathLike | None) -> dict[str, Any]:
    """The checkpoint file's sha256 (none: random initialisation) and the loaded weights' and modules' digests."""
    blocks = getattr(encoder, "blocks", [])
    arch = {"class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
            "img_size": list(encoder.patch_embed.img_size), "patch_size": list(encoder.patch_embed.patch_size),
            "num_heads": int(blocks[0].attn.num_heads) if len(blocks) else None,
            "global_pool": getattr(encoder, "global_pool", None),
            "modules": hashlib.sha256(repr(encoder).encode()).hexdigest()}
    no_file = checkpoint in (None, "", "none")
    return {"checkpoint_sha256": None if no_file else file_sha256(checkpoint), "state": encoder_state_digest(encoder),
            "arch": arch}


def entry_key(encoder: nn.Module, dataset: Dataset, view: str, batch_size: int, precision: str,
              device: torch.device, checkpoint: str | os.PathLike | None) -> dict[str, Any]:
    """The cache key of one view of one split (see :mod:`classification.feature_cache`)."""
    return {"version": KEY_VERSION, "view": view, "weights": _weights_identity(encoder, checkpoint),
            "data": data_identity(dataset), "transform": transform_identity(dataset),
            "compute": compute_identity(batch_size, precision, device, du.get_world_size()),
            "code": code_identity(encoder, dataset)}


def _lookup(cache: FeatureCache, keys: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, Any, str]:
    """The first of ``keys`` with a usable entry: (key, tensors, ''), else (None, None, why of the last miss)."""
    why = "not cached"
    for key in keys:
        found, why_not = cache.read(key)
        if found is not None:
            return key, found, ""
        if why_not != "not cached":
            why = why_not
    return None, None, why


def encode_dataset(
    encoder: nn.Module,
    dataset: Dataset,
    *,
    view: str = "pooled",
    batch_size: int = 256,
    workers: int = 0,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    cache_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    tag: str = "features",
) -> EncodedSplit:
    """The frozen ``encoder``'s features of every image of ``dataset`` (an image folder, eval transform).

    Args:
        encoder: a frozen ViT in eval mode (:func:`frozen_encoder`).
        dataset: an :class:`~pretrain.data.imagefolder.ImageFolderDataset` (or a Subset of one)
            with a deterministic transform (``classification.data.eval_dataset``).
        view: ``pooled`` ([N, D], per the encoder's global_pool), ``patch_tokens`` ([N, L, D])
            or ``all_tokens`` ([N, 1 + L, D]), the tokens after the final norm.
        batch_size, workers, device, precision: of the pass (batch, precision, device and CPU
            threads are part of the cache key: the numbers may depend on them).
        cache_dir: folder of the exact feature cache; None computes without caching.
        checkpoint: the file the encoder's weights were read from (its sha256 joins the key);
            None for a random initialisation.
        tag: prefix of the log lines.

    Returns:
        :class:`EncodedSplit`: TensorDataset(features float32 on the CPU, labels) in dataset
        order (unreadable images dropped with ``data.skip_bad`` are left out; such a pass is
        not stored), and whether it came from the cache. A cached result equals an uncached
        one bit for bit.
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    device = torch.device(device)
    t0 = time.time()

    def compute(what: str) -> TensorDataset:  # the sequence is all_tokens: the encoder's whole output
        fn = VIEWS["all_tokens" if what == "sequence" else what]
        return extract_features(encoder, dataset, batch_size, workers, device, precision, fn)

    if cache_dir is None:
        return EncodedSplit(compute(view), "off", None, time.time() - t0)
    cache = FeatureCache(cache_dir)
    sequence = _token_pooled(encoder)
    main = du.is_main_process()
    keys: list[dict[str, Any]] | None = None
    if main:  # the keys (weights digest, every file's stat) are made on rank 0 only and sent with its decision
        own = entry_key(encoder, dataset, view, batch_size, precision, device, checkpoint)
        keys = ([{**own, "view": "sequence"}] if sequence else []) + [own]
    with cache.lock(keys[0]) if main else contextlib.nullcontext():  # one lock for every view of the split
        found_key, found, why = _lookup(cache, keys) if main else (None, None, "")
        hit, keys = du.all_gather_object((found_key, keys))[0]  # rank 0 decides; the entry is complete once seen
        if hit is not None:
            if not main:
                found, _ = cache.read(hit)
            feats = _slice_view(found["features"], view) if hit["view"] == "sequence" else found["features"]
            result = EncodedSplit(TensorDataset(feats, found["labels"]), "hit", cache.path(hit), time.time() - t0)
        else:
            n = len(dataset)
            tokens = 1 + encoder.patch_embed.num_patches
            store = keys[0] if sequence and n * tokens * encoder.embed_dim * 4 <= SEQUENCE_LIMIT_BYTES else keys[-1]
            computed = compute(store["view"])
            feats = _slice_view(computed.tensors[0], view) if store["view"] == "sequence" else computed.tensors[0]
            data = TensorDataset(feats, computed.tensors[1])
            if len(computed) != n:
                status, file = f"not stored: {n - len(computed)} of {n} images unreadable and left out", None
            else:
                file = cache.write(store, *computed.tensors) if main else cache.path(store)
                status = "stored"
            result = EncodedSplit(data, status, file, time.time() - t0)
            if why != "not cached" and main:
                print(f"[{tag}] feature cache: {why}", flush=True)
    du.barrier()
    if main:
        where = f" ({result.file})" if result.file is not None else ""
        print(f"[{tag}] {view} features of {len(dataset)} images: cache {result.cache}{where} "
              f"in {result.seconds:.1f}s", flush=True)
    return result


def config_features(cfg: DictConfig, encoder: nn.Module, dataset: Dataset, view: str, batch_size: int,
                    device: torch.device, precision: str, tag: str) -> EncodedSplit:
    """:func:`encode_dataset` with a run config's ``feature_cache`` (null: none), ``checkpoint`` and workers."""
    ckpt = cfg.checkpoint if cfg.checkpoint not in (None, "", "none") else None
    return encode_dataset(encoder, dataset, view=view, batch_size=batch_size, workers=int(cfg.data.num_workers),
                          device=device, precision=precision, checkpoint=ckpt, tag=tag,
                          cache_dir=OmegaConf.select(cfg, "feature_cache", default=None) or None)


def require_images(encoded: EncodedSplit, dataset: Dataset, split: str, root: str) -> None:
    """Refuse a split of which no image could be read: a score over nothing would read as 0 %."""
    if len(encoded.dataset) == 0:
        raise ConfigError(f"every one of the {len(dataset)} {split} images under {root} was unreadable and left out "
                          "(data.skip_bad=true): nothing to evaluate")


def eval_splits(cfg: DictConfig, what: str) -> tuple[Dataset, Dataset]:
    """The train and val splits of a frozen-feature evaluation, both with the eval transform (no augmentation),
    refused unless they have the same class folders, at least two (``what`` names the evaluation)."""
    train, val = eval_dataset(cfg, cfg.data.train_split), eval_dataset(cfg, cfg.data.val_split)
    require_classes(train, cfg.data.train_split, cfg.data.path, what)
    if list(train.classes) != list(val.classes):
        raise ConfigError(f"the class folders of {cfg.data.val_split!r} differ from those of "
                          f"{cfg.data.train_split!r} under {cfg.data.path}")
    return train, val


def require_classes(dataset: Dataset, split: str, root: str, tag: str) -> None:
    """Refuse data with fewer than two class folders: every prediction would be right (a 100 % that means nothing)."""
    classes = list(getattr(dataset, "classes", []))
    if len(classes) < 2:
        raise ConfigError(f"the {tag} needs at least 2 classes, but {root}/{split} has {len(classes)} class folder"
                          f"{'s' if len(classes) != 1 else ''} ({', '.join(classes) or 'none'}): every prediction "
                          "would be right")
