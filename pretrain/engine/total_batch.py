"""Per-GPU batch and gradient accumulation that keep a recipe's total batch on any cluster shape.

A recipe fixes the total batch (DropPos / MAE pretraining 4096, fine-tuning 1024, ...) and
with it the learning rate (``lr = blr * total / 256``). On ``gpus x nodes`` GPUs the total is
``per_gpu * accum * gpus * nodes``; :func:`plan_total_batch` picks the largest per-GPU batch
not above the recipe's (its memory bound) that divides the total exactly, and the
accumulation that makes up the rest. When no such split exists it refuses, or, asked to,
takes the nearest total it can reach and says so: the caller states that total and the lr
it implies (:func:`implied_lr`).
"""
from __future__ import annotations

from dataclasses import dataclass


class TotalBatchError(ValueError):
    """The recipe's total batch cannot be met exactly on the GPUs given."""


@dataclass(frozen=True)
class BatchPlan:
    """How a total batch is split: ``per_gpu * accum * world = total``.

    Attributes:
        per_gpu: samples per GPU per step.
        accum: gradient accumulation steps per optimizer step.
        world: GPUs in all (GPUs per node x nodes).
        total: the total batch this split gives.
        wanted: the recipe's total batch (``total != wanted`` only when a change was allowed).
    """

    per_gpu: int
    accum: int
    world: int
    total: int
    wanted: int

    @property
    def exact(self) -> bool:
        return self.total == self.wanted


def implied_lr(blr: float, total: int) -> float:
    """The learning rate of the linear scaling rule: ``blr * total / 256``."""
    return blr * total / 256


def plan_total_batch(
    total: int,
    gpus_per_node: int,
    nodes: int = 1,
    max_per_gpu: int | None = None,
    accumulation: bool = True,
    allow_change: bool = False,
) -> BatchPlan:
    """Split ``total`` over ``gpus_per_node x nodes`` GPUs: the largest per-GPU batch <= ``max_per_gpu``.

    Args:
        total: the recipe's total batch.
        gpus_per_node, nodes: the cluster shape.
        max_per_gpu: the recipe's per-GPU batch (what fits its GPU memory); None: no bound.
        accumulation: whether the trainer can accumulate gradients (Detectron2 cannot:
            then ``total / world`` images per GPU, whatever ``max_per_gpu`` says).
        allow_change: when no exact split exists, return the nearest total reachable with
            at least half the recipe's per-GPU batch (ties: the larger per-GPU batch)
            instead of raising.

    Raises:
        TotalBatchError: no exact split (and ``allow_change`` is false), or a shape below one GPU.
    """
    if total < 1:
        raise TotalBatchError(f"total batch must be at least 1, got {total}")
    if gpus_per_node < 1 or nodes < 1:
        raise TotalBatchError(f"need at least one GPU on at least one node, got {gpus_per_node} x {nodes}")
    world = gpus_per_node * nodes
    bound = total if max_per_gpu is None else max(1, min(max_per_gpu, total))
    if not accumulation:
        if total % world == 0:
            return BatchPlan(total // world, 1, world, total, total)
        if not allow_change:
            raise TotalBatchError(
                f"total batch {total} is not a multiple of {world} GPUs ({gpus_per_node} x {nodes}) "
                "and this trainer cannot accumulate gradients"
            )
        per_gpu = max(1, round(total / world))
        return BatchPlan(per_gpu, 1, world, per_gpu * world, total)
    for per_gpu in range(bound, 0, -1):
        if total % (world * per_gpu) == 0:
            return BatchPlan(per_gpu, total // (world * per_gpu), world, total, total)
    if not allow_change:
        raise TotalBatchError(
            f"total batch {total} cannot be split over {world} GPUs ({gpus_per_node} x {nodes}) "
            f"with at most {bound} per GPU: {total} is not a multiple of {world}"
        )
    best: BatchPlan | None = None
    for per_gpu in range(bound, (bound + 1) // 2 - 1, -1):  # at least half the recipe's per-GPU batch
        accum = max(1, round(total / (world * per_gpu)))
        plan = BatchPlan(per_gpu, accum, world, per_gpu * accum * world, total)
        if best is None or abs(plan.total - total) < abs(best.total - total):
            best = plan
    assert best is not None
    return best
