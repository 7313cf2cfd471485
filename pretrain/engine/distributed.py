"""torch.distributed set-up for runs launched by ``torchrun`` or by SLURM's ``srun`` (single or multi node).

Under ``srun`` without torchrun (a user's own sbatch script: ``srun python -m pretrain.main ...``
with one task per GPU) the rank, world size, local rank and master address / port come from
SLURM's variables (:mod:`pretrain.engine.slurm_env`); torchrun's variables win when present.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from .slurm_env import adopt_slurm_env


TIMEOUT_ENV = "PRETRAIN_DIST_TIMEOUT"  # seconds a collective (or the start-up rendezvous) may wait


def dist_timeout(default_minutes: float = 30.0) -> datetime.timedelta:
    """How long a rank waits for the others: ``$PRETRAIN_DIST_TIMEOUT`` seconds, else the default.

    The default (30 min) leaves room for rank 0 writing a large checkpoint while the
    others wait at a barrier; set the variable lower to fail fast when a peer hangs.
    """
    value = os.environ.get(TIMEOUT_ENV)
    if value:
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {value!r}") from None
        if seconds <= 0:
            raise ValueError(f"{TIMEOUT_ENV} must be positive, got {value!r}")
        return datetime.timedelta(seconds=seconds)
    return datetime.timedelta(minutes=default_minutes)


def init_distributed(backend: str = "auto", timeout_minutes: float = 30.0) -> tuple[int, int, int]:
    """Join the process group when torchrun (or srun) set WORLD_SIZE > 1; return (rank, world, local_rank).

    Inside an ``srun`` step of several tasks and without torchrun's variables, those are
    first filled in from SLURM's (:func:`~pretrain.engine.slurm_env.adopt_slurm_env`).
    The backend is nccl on GPU and gloo on CPU unless given. Collectives and the
    start-up rendezvous time out after :func:`dist_timeout`; a rendezvous that fails
    raises a RuntimeError naming the rank, the world size and the master address.
    """
    adopt_slurm_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(default_device(local_rank))
        timeout = dist_timeout(timeout_minutes)
        try:
            dist.init_process_group(backend=backend, timeout=timeout)
        except Exception as exc:
            where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
            raise RuntimeError(
                f"rank {rank} of {world} could not join the process group at {where} within "
                f"{timeout.total_seconds():.0f} s ({type(exc).__name__}: {exc})"
            ) from exc
    return rank, world, local_rank


def is_main_process() -> bool:
    return get_rank() == 0


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over all processes (identity when not distributed)."""
    if get_world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / get_world_size()


def all_gather_object(obj: object) -> list:
    """``obj`` from every rank, in rank order (``[obj]`` when not distributed)."""
    if get_world_size() == 1:
        return [obj]
    out: list = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def default_device(local_rank: int = 0) -> torch.device:
    """This process's GPU (CPU without one); ``local_rank`` modulo the visible GPUs, since srun's
    ``--gpus-per-task`` shows each task only its own GPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
