"""What one SLURM job of the end-to-end run does on its nodes: one stage (or the report).

Submitted by :mod:`analysis.reproduce.slurm` through submitit, one task per node. The
stage's command is the local one with its launcher rebuilt from the SLURM environment of
the node it landed on (:func:`node_command`): ``torchrun`` with ``--nnodes``, ``--node_rank``,
the job's first host as master and a port derived from the job id (one node:
``--standalone``), Detectron2's ``--num-machines / --machine-rank / --dist-url`` alike. The
first task runs it through :func:`analysis.reproduce.runner.run_stage` (log in the run
folder, ``stage_status.json``, skipped once its metrics exist); the others run the same
command with their own log.

Preemption and time limits: submitit calls :meth:`StageJob.checkpoint` on the signal SLURM
sends before the time limit (``--signal``) or on preemption; it stops the stage's processes
and has the job requeued with the same arguments. The stage then resumes from its own
newest checkpoint, through the run skeleton (pretraining, fine-tuning, probes) or
Detectron2's / MMEngine's resume, exactly as after ``kill -9``. A job that SLURM itself
requeues or kills (``scontrol requeue``, preemption with requeue) gets SIGTERM: the stage
stops, this task waits for the kill instead of reporting a failure.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import submitit

from pretrain.engine.slurm_env import expand_hostlist, slurm_port

from .runner import run_stage
from .stages import ROOT, Stage

KILL_GRACE_S = 20.0  # a stopped stage gets this long between SIGTERM and SIGKILL


class StageFailed(RuntimeError):
    """The stage ran and did not finish: the SLURM job fails, so its ``afterok`` dependents never start."""


@dataclass(frozen=True)
class Launch:
    """Where a stage's command holds its local launcher, to be rebuilt on the node.

    ``kind``: ``torchrun`` (``command[at:at + size]`` is a ``torchrun ...`` prefix),
    ``detectron2`` (``command[at:at + size]`` are the ``--num-gpus ...`` flags) or
    ``process`` (one process: nothing to rebuild). ``gpus``: GPUs per node.
    """

    kind: str = "process"
    at: int = 0
    size: int = 0
    gpus: int = 0


def _node_layout(environ: dict[str, str]) -> tuple[int, int, str, int]:
    """(nodes, this node's rank, master host, master port) of the job from SLURM's variables."""
    nodes = int(environ.get("SLURM_JOB_NUM_NODES") or environ.get("SLURM_NNODES") or 1)
    rank = int(environ.get("SLURM_NODEID", "0"))
    hosts = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or "127.0.0.1"
    return nodes, rank, expand_hostlist(hosts)[0], slurm_port(environ.get("SLURM_JOB_ID", "0"))


def _torchrun() -> list[str]:
    """This interpreter's torchrun (its script beside it, so that no ``-m`` precedes the stage's module)."""
    script = Path(sys.executable).parent / "torchrun"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def node_command(command: list[str], launch: Launch, environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """``command`` with its launcher rebuilt for the node and job of ``environ``, and the variables it needs.

    ``python`` becomes this interpreter. What the command records as its inputs
    (``analysis.reproduce.stage_inputs``: the arguments from the stage's module on) stays the
    same on every attempt: torchrun's options precede the module, and Detectron2 meets its
    peers through ``env://`` (``MASTER_ADDR`` / ``MASTER_PORT`` in the returned variables).
    """
    argv, env = list(command), {}
    nodes, rank, master, port = _node_layout(environ)
    if launch.kind == "torchrun":
        run = [*_torchrun(), f"--nproc_per_node={launch.gpus}"]
        if nodes > 1:
            run += [f"--nnodes={nodes}", f"--node_rank={rank}", f"--master_addr={master}", f"--master_port={port}"]
        else:
            run.append("--standalone")  # a free port of its own: jobs sharing a node never collide
        argv[launch.at : launch.at + launch.size] = run
    elif launch.kind == "detectron2":
        flags = ["--num-gpus", str(launch.gpus)]
        if nodes > 1:
            flags += ["--num-machines", str(nodes), "--machine-rank", str(rank), "--dist-url", "env://"]
            env = {"MASTER_ADDR": master, "MASTER_PORT": str(port)}
        argv[launch.at : launch.at + launch.size] = flags
    if argv and argv[0] == "python":
        argv[0] = sys.executable
    return argv, env


def _children() -> list[int]:
    """The process ids whose parent is this process (Linux /proc)."""
    me, kids = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (an exited child not yet reaped, a zombie, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def stop_children(grace: float = KILL_GRACE_S) -> None:
    """SIGTERM the stage processes this task started, SIGKILL what is left after ``grace`` seconds."""
    kids = _children()
    for pid in kids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(_alive(pid) for pid in kids):
        time.sleep(0.2)
    for pid in kids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class StageJob(submitit.helpers.Checkpointable):
    """One stage as a SLURM job (requeued with the same arguments after preemption or a time limit)."""

    stage: Stage
    out: Path
    launch: Launch = field(default_factory=Launch)
    env_extra: dict[str, str] = field(default_factory=dict)
    no_rerun: bool = False

    def __call__(self) -> dict:
        environ = dict(os.environ)
        command, launcher_env = node_command(self.stage.command, self.launch, environ)
        stage = dataclasses.replace(self.stage, command=command)
        env_extra = {**self.env_extra, **launcher_env}
        stopping: list[int] = []

        def stopped(signum: int, frame: object) -> None:  # SLURM requeues or kills the job
            stopping.append(signum)

        signal.signal(signal.SIGTERM, stopped)
        os.chdir(ROOT)
        if int(environ.get("SLURM_NODEID", "0")) > 0:  # another node of a multi-node stage
            return {"status": "done" if self._run_other_node(stage, environ, env_extra) == 0 else "failed"}
        record = run_stage(stage, self.out, env_extra=env_extra, no_rerun=self.no_rerun)
        if stopping:  # the stage ended because the job is being requeued or cancelled: wait for that
            time.sleep(KILL_GRACE_S * 6)
        if record.get("status") != "done":
            raise StageFailed(f"{stage.method}/{stage.name}: {record.get('reason', record.get('status'))}")
        return record

    def _run_other_node(self, stage: Stage, environ: dict[str, str], env_extra: dict[str, str]) -> int:
        log = self.out / stage.method / "logs" / f"{stage.name}.node{environ.get('SLURM_NODEID')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **stage.env, **env_extra, PYTHONUNBUFFERED="1")
        with open(log, "w") as f:
            return subprocess.call(stage.command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """Time limit or preemption: stop the stage (it resumes from its checkpoints) and requeue this job."""
        print(f"[reproduce] {self.stage.method}/{self.stage.name}: stopping for a requeue", flush=True)
        stop_children()
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass
class ReportJob:
    """The last job: the pictures and ``<out>/report.md`` from every run folder's ``stage_status.json``."""

    out: Path
    profile: str
    folders: list[str]
    methods: list[str]  # the report's rows: the methods and the --init names (the pictures of each)
    data: Path | None
    submitted: float
    detection_iters: int | None = None
    threads: int | None = None
    reference: str = "mae"

    def __call__(self) -> str:
        from .report import make_pictures, write_report

        os.chdir(ROOT)
        made = []
        if self.data is not None:
            if self.threads:
                import torch

                torch.set_num_threads(self.threads)
            made = make_pictures(self.out, self.data, self.methods)
        wall = time.time() - self.submitted
        report = write_report(self.out, self.profile, {}, self.folders, made, wall, self.detection_iters,
                              reference=self.reference)
        print(f"[reproduce] report: {report}", flush=True)
        return str(report)
