"""torchrun's variables from SLURM's, for entry points started by ``srun`` without torchrun.

``srun`` starts one process per task and tells each its place in ``SLURM_PROCID``
(rank), ``SLURM_STEP_NUM_TASKS`` / ``SLURM_NTASKS`` (world size), ``SLURM_LOCALID`` (local
rank) and ``SLURM_STEP_NODELIST`` / ``SLURM_NODELIST`` (the hosts, compressed: ``gpu[01-04]``).
``torch.distributed``'s ``env://`` rendezvous wants ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``: the master is the first host of the step and the port
is derived from ``SLURM_JOB_ID``, so two jobs sharing a node do not collide and no address
is set by hand. Only inside an ``srun`` step (``SLURM_STEP_ID`` set): the batch script
itself also sees ``SLURM_NTASKS`` but is one process. torchrun's variables win: when
``WORLD_SIZE`` or ``RANK`` is set nothing is changed, and a ``MASTER_ADDR`` / ``MASTER_PORT``
set by the user is kept.
"""
from __future__ import annotations

import itertools
import os
import re
from typing import Mapping, MutableMapping

PORT_BASE = 20000  # master ports lie in [PORT_BASE, PORT_BASE + PORT_SPAN)
PORT_SPAN = 20000


class SlurmEnvError(ValueError):
    """A SLURM variable an ``srun`` step cannot be joined from; the message names it
    (``pretrain.engine.cli.explain_failure`` prints it as one line)."""


class HostlistError(SlurmEnvError):
    """A SLURM host list this parser cannot read."""


def _expand_brackets(item: str) -> list[str]:
    """One host-list item (``rack[1-2]-n[01,03]``) -> its hosts, zero padding kept, in SLURM's order."""
    parts = re.split(r"(\[[^\]]*\])", item)
    choices: list[list[str]] = []
    for part in parts:
        if not (part.startswith("[") and part.endswith("]")):
            if "[" in part or "]" in part:
                raise HostlistError(f"unbalanced bracket in host list item {item!r}")
            choices.append([part])
            continue
        values: list[str] = []
        for rng in part[1:-1].split(","):
            lo, sep, hi = rng.partition("-")
            if not lo.isdigit() or (sep and not hi.isdigit()):
                raise HostlistError(f"bad range {rng!r} in host list item {item!r}")
            if not sep:
                values.append(lo)
                continue
            if int(hi) < int(lo):
                raise HostlistError(f"descending range {rng!r} in host list item {item!r}")
            width = len(lo)
            values.extend(str(n).zfill(width) for n in range(int(lo), int(hi) + 1))
        choices.append(values)
    return ["".join(combo) for combo in itertools.product(*choices)]


def expand_hostlist(spec: str) -> list[str]:
    """SLURM's compressed host list (``node[01-03],gpu7``) -> host names, as ``scontrol show hostnames``."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(spec):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items.append(spec[start:i])
            start = i + 1
    items.append(spec[start:])
    hosts = [h for item in items if item.strip() for h in _expand_brackets(item.strip())]
    if not hosts:
        raise HostlistError(f"empty host list {spec!r}")
    return hosts


def slurm_port(job_id: str | int) -> int:
    """The rendezvous port of a job: ``PORT_BASE + job id mod PORT_SPAN`` (an array task has its own id)."""
    try:
        return PORT_BASE + int(job_id) % PORT_SPAN
    except ValueError:
        raise SlurmEnvError(f"SLURM_JOB_ID must be a number, got {job_id!r}") from None


def _first(environ: Mapping[str, str], *keys: str) -> tuple[str, str] | tuple[None, None]:
    """(the first of ``keys`` set non-empty in ``environ``, its value), or (None, None)."""
    return next(((k, environ[k]) for k in keys if environ.get(k)), (None, None))


def _count(name: str, value: str) -> int:
    """A SLURM task count or index as an int; SlurmEnvError naming the variable otherwise."""
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise SlurmEnvError(f"{name} must be a number >= 0, got {value!r}")
    return number


def torchrun_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The torchrun variables an ``srun`` task lacks, derived from SLURM's ({} outside a step of >1 task).

    Nothing when torchrun's ``WORLD_SIZE`` or ``RANK`` is set or the process is not in an
    ``srun`` step; a ``MASTER_ADDR`` / ``MASTER_PORT`` already set is not replaced. A variable
    the step cannot be joined from (no number, missing, an unreadable host list) is a
    :class:`SlurmEnvError` naming it.
    """
    if "WORLD_SIZE" in environ or "RANK" in environ:
        return {}
    if _first(environ, "SLURM_STEP_ID", "SLURM_STEPID")[0] is None or "SLURM_PROCID" not in environ:
        return {}
    world_key, world = _first(environ, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    if world_key is None or _count(world_key, world) <= 1:
        return {}
    nodes_key, nodes = _first(environ, "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
    if nodes_key is None:
        raise SlurmEnvError("srun step without SLURM_STEP_NODELIST / SLURM_JOB_NODELIST / SLURM_NODELIST: "
                            "no master address")
    job_key, job = _first(environ, "SLURM_JOB_ID", "SLURM_JOBID")
    if job_key is None:
        raise SlurmEnvError("srun step without SLURM_JOB_ID / SLURM_JOBID: no master port")
    try:
        master = expand_hostlist(nodes)[0]
    except HostlistError as exc:
        raise SlurmEnvError(f"{nodes_key}={nodes!r}: {exc}") from None
    try:
        port = slurm_port(job)
    except SlurmEnvError:
        raise SlurmEnvError(f"{job_key} must be a number, got {job!r}") from None
    derived = {
        "RANK": str(_count("SLURM_PROCID", environ["SLURM_PROCID"])),
        "WORLD_SIZE": str(_count(world_key, world)),
        "LOCAL_RANK": str(_count("SLURM_LOCALID", environ.get("SLURM_LOCALID", "0"))),
        "MASTER_ADDR": master,
        "MASTER_PORT": str(port),
    }
    return {k: v for k, v in derived.items() if k not in environ}


def adopt_slurm_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the variables of :func:`torchrun_variables` in ``environ`` (``os.environ``); returns them."""
    env = os.environ if environ is None else environ
    derived = torchrun_variables(env)
    env.update(derived)
    return derived
