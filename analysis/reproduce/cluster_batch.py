"""The paper profiles' total batch on the cluster they are given: per-GPU batch and accumulation per stage.

Every paper recipe states its total batch as per-GPU batch x accumulation x the reference
scripts' ``RECIPE_GPUS`` (8) GPUs: pretraining 4096 (128 x 4 x 8), fine-tuning 1024, linear
probing 16384, the attentive probe 1024, segmentation 16 (MMSeg's ``8xb2``); Detectron2's
ViTDet recipe states the total itself (``dataloader.train.total_batch_size``: 64) and divides
it over the GPUs, without accumulation. On ``--gpus G --nnodes N`` each data-parallel stage
gets the per-GPU batch and accumulation of :func:`pretrain.engine.total_batch.plan_total_batch`
as overrides, so the total, and the lr that follows it (``blr * total / 256``), hold. When
the total cannot be met exactly the profile is refused (:class:`TotalBatchError`), unless
``--allow-batch-change``: then the nearest total is used and the line says it and its lr.
k-NN trains nothing and the position probes run on one GPU: they keep their recipes.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

from pretrain.engine.config import load_config
from pretrain.engine.total_batch import BatchPlan, TotalBatchError, implied_lr, plan_total_batch

from .stages import ROOT, Profile

RECIPE_GPUS = 8  # the reference scripts' GPUs: each recipe's per-GPU batch x accumulation x 8 = its total
CLASSIFY = ("finetune", "linear_probe", "attentive_probe")  # data-parallel classification stages that train


@dataclasses.dataclass(frozen=True)
class RecipeBatch:
    """A recipe's batch: ``per_gpu x accum x RECIPE_GPUS = total`` (Detectron2: the total alone).

    ``blr``: the lr per 256 samples when the lr follows the total (None: an absolute ``lr``).
    """

    what: str
    per_gpu: int
    accum: int
    total: int
    accumulation: bool = True
    blr: float | None = None
    lr: float | None = None


@functools.cache
def _yaml_batch(recipe: str, default: str, overrides: tuple[str, ...]) -> RecipeBatch:
    cfg = load_config(ROOT / recipe, list(overrides), default=ROOT / default, validator=lambda c: None)
    per_gpu, accum = int(cfg.train.batch_size), int(cfg.train.accum_iter)
    blr = None if cfg.optim.get("lr") is not None else float(cfg.optim.blr)
    lr = float(cfg.optim.lr) if cfg.optim.get("lr") is not None else None
    return RecipeBatch(Path(recipe).name, per_gpu, accum, per_gpu * accum * RECIPE_GPUS, blr=blr, lr=lr)


@functools.cache
def _detection_batch(recipe: str) -> RecipeBatch:
    import detection  # noqa: F401  (Detectron2's compatibility shims first)
    from detectron2.config import LazyConfig

    cfg = LazyConfig.load(str(ROOT / recipe))
    total = int(cfg.dataloader.train.total_batch_size)
    return RecipeBatch(Path(recipe).name, total // RECIPE_GPUS, 1, total, accumulation=False, lr=float(cfg.optimizer.lr))


@functools.cache
def _segmentation_batch(recipe: str) -> RecipeBatch:
    from mmengine.config import Config

    cfg = Config.fromfile(str(ROOT / recipe))
    per_gpu, accum = int(cfg.train_dataloader.batch_size), int(cfg.optim_wrapper.get("accumulative_counts", 1))
    lr = float(cfg.optim_wrapper.optimizer.lr)
    return RecipeBatch(Path(recipe).name, per_gpu, accum, per_gpu * accum * RECIPE_GPUS, lr=lr)


def recipe_batch(stage: str, recipe: str, overrides: tuple[str, ...] = ()) -> RecipeBatch:
    """The batch of one stage's recipe (a path below the repository root) with its overrides."""
    if stage == "pretrain":
        return _yaml_batch(recipe, "pretrain/configs/default.yaml", overrides)
    if stage in CLASSIFY:
        return _yaml_batch(recipe, f"classification/configs/{stage}_default.yaml", overrides)
    if stage == "detection":
        return _detection_batch(recipe)
    if stage == "segmentation":
        return _segmentation_batch(recipe)
    raise ValueError(f"stage {stage!r} has no batch to plan")


def batch_overrides(stage: str, recipe: RecipeBatch, plan: BatchPlan) -> list[str]:
    """The overrides that give ``plan`` (nothing where the recipe already does)."""
    if stage == "detection":
        return [] if plan.total == recipe.total else [f"dataloader.train.total_batch_size={plan.total}"]
    if (plan.per_gpu, plan.accum) == (recipe.per_gpu, recipe.accum):
        return []
    if stage == "segmentation":
        return [f"train_dataloader.batch_size={plan.per_gpu}", f"optim_wrapper.accumulative_counts={plan.accum}"]
    return [f"train.batch_size={plan.per_gpu}", f"train.accum_iter={plan.accum}"]


def plan_stage(
    label: str, stage: str, recipe: RecipeBatch, gpus: int, nodes: int, allow_change: bool
) -> tuple[BatchPlan, list[str], str]:
    """(plan, overrides, note) of one stage on ``gpus x nodes``; the note is '' when the recipe's split holds.

    Raises:
        TotalBatchError: the total cannot be met exactly and ``allow_change`` is false
            (the message names the stage, the recipe and the option that accepts a change).
    """
    try:
        plan = plan_total_batch(recipe.total, gpus, nodes, recipe.per_gpu, recipe.accumulation, allow_change)
    except TotalBatchError as exc:
        raise TotalBatchError(
            f"{label} ({recipe.what}): {exc}; choose --gpus / --nnodes that divide it, "
            "or --allow-batch-change to run at the nearest total batch (and its lr)"
        ) from None
    split = f"{plan.world} GPUs x {plan.per_gpu}" + (f" x accum {plan.accum}" if plan.accum > 1 else "")
    note = ""
    if not plan.exact:
        if recipe.blr is not None:
            lr = f"lr = blr {recipe.blr:g} x {plan.total} / 256 = {implied_lr(recipe.blr, plan.total):.3g}"
        else:
            lr = (f"the recipe's absolute lr {recipe.lr:g} is kept (the linear rule would give "
                  f"{recipe.lr * plan.total / recipe.total:.3g})")
        note = f"{label}: total batch {plan.total} instead of the recipe's {recipe.total} ({split}); {lr}"
    elif (plan.per_gpu, plan.accum) != (recipe.per_gpu, recipe.accum):
        note = f"{label}: total batch {plan.total} = {split} (recipe: {RECIPE_GPUS} GPUs x {recipe.per_gpu} x accum {recipe.accum})"
    return plan, batch_overrides(stage, recipe, plan), note


CONFIG_FOLDERS = {"detection": "detection/configs", "segmentation": "segmentation/configs"}


def _stage_batches(profile: Profile, stage: str, extra: tuple[str, ...]) -> dict[str, RecipeBatch]:
    """The batch of ``stage``'s recipe and of its variants (``finetune_rel``, ``finetune_<method>``)."""
    folder = CONFIG_FOLDERS.get(stage, "classification/configs")
    variants = {k: v for k, v in profile.configs.items() if k == stage or k.startswith(f"{stage}_")}
    return {k: recipe_batch(stage, f"{folder}/{v}", extra) for k, v in variants.items()}


def cluster_batch(profile: Profile, gpus: int, nodes: int, allow_change: bool = False) -> tuple[Profile, list[str]]:
    """``profile`` with the per-GPU batch and accumulation of every stage for ``gpus x nodes``, and the notes.

    Raises:
        TotalBatchError: some stage's total batch cannot be met exactly (and ``allow_change`` is false).
    """
    notes: list[str] = []
    pretrain = {}
    for method, (recipe, extra) in profile.pretrain.items():
        batch = recipe_batch("pretrain", f"pretrain/configs/{recipe}", tuple(extra))
        _, flags, note = plan_stage(f"{method} pretraining", "pretrain", batch, gpus, nodes, allow_change)
        pretrain[method] = (recipe, [*extra, *flags])
        notes += [note] if note else []
    overrides = {k: list(v) for k, v in profile.overrides.items()}
    for stage in (*CLASSIFY, "detection", "segmentation"):
        if stage not in profile.configs:
            continue
        try:
            totals = _stage_batches(profile, stage, tuple(overrides.get(stage, ())) if stage in CLASSIFY else ())
        except ImportError:  # Detectron2 / MMEngine not installed here: that stage cannot run here either
            continue
        batch = totals[stage]
        differ = [k for k, b in totals.items() if (b.per_gpu, b.accum) != (batch.per_gpu, batch.accum)]
        if differ:  # one override list serves every variant: they must share the recipe's split
            raise TotalBatchError(f"{stage}: the recipes {', '.join(totals[k].what for k in differ)} "
                                  f"split their batch unlike {batch.what}")
        _, flags, note = plan_stage(stage, stage, batch, gpus, nodes, allow_change)
        overrides[stage] = [*overrides.get(stage, []), *flags]
        notes += [note] if note else []
    return dataclasses.replace(profile, pretrain=pretrain, overrides=overrides), notes


def with_cluster_batch(profile: Profile, gpus: int, nodes: int, allow_change: bool = False) -> Profile:
    """:func:`cluster_batch`, its notes printed to stderr (a run builds its profile once: each note once)."""
    planned, notes = cluster_batch(profile, gpus, nodes, allow_change)
    for note in notes:
        print(f"[reproduce] {note}", file=sys.stderr, flush=True)
    return planned
