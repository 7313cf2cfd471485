"""The state of a SLURM run: its ``jobs.json``, what the controller says of each job, ``--status``.

``<out>/jobs.json`` records the options of the submission (to rebuild its stage table), and
for each stage (``<run folder>/<stage>``) and the report its job id, dependency, resources and
submitit folder, with the ids of earlier submissions. A stage's state comes first from its
run folder (a finished metrics file: done), then from the controller (``squeue``, which also
lists jobs that ended within ``MinJobAge``): running, queued, blocked (``afterok`` on a job
that failed: it never starts) or, once its job has left the queue without the metrics,
failed, shown with the last lines of its log.
"""

from __future__ import annotations

import getpass
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pretrain.atomic import atomic_write_json

from ..layout import JOBS_FILE, REPORT_FILE, SLURM_FOLDER
from .runner import is_done, read_status
from .stages import Stage

LIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
        "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
BLOCKED = "DependencyNeverSatisfied"
TAIL_LINES = 8


class SlurmError(RuntimeError):
    """A SLURM command failed (the message is its last line of output)."""


def stage_key(stage: Stage) -> str:
    return f"{stage.method}/{stage.name}"


def read_jobs(out: Path) -> dict:
    """``<out>/jobs.json`` ({} when absent)."""
    path = out / JOBS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SlurmError(f"{path} is not readable JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def write_jobs(out: Path, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / JOBS_FILE, data)


def run_slurm(argv: list[str], timeout: float = 30) -> str:
    """Run a SLURM client command; its stdout, or SlurmError with its last line of output."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found on PATH") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(argv[:2])} gave no answer within {timeout:.0f} s") from None
    if r.returncode != 0:
        last = ((r.stderr or r.stdout).strip().splitlines() or [f"exit code {r.returncode}"])[-1]
        raise SlurmError(f"{argv[0]}: {last}")
    return r.stdout


@dataclass(frozen=True)
class JobState:
    """What the controller says of one job (array elements one by one): its state and pending reason."""

    state: str
    reason: str = ""

    @property
    def live(self) -> bool:
        return self.state in LIVE and not self.blocked

    @property
    def blocked(self) -> bool:
        return self.state == "PENDING" and BLOCKED in self.reason


def queue_states() -> dict[str, JobState]:
    """job id (``123``, array element ``123_4``) -> state, for this user's jobs the controller knows."""
    text = run_slurm(["squeue", "-h", "-r", "--states=all", "-u", getpass.getuser(), "-o", "%i|%T|%r"])
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = JobState(parts[1], parts[2])
    return states


def log_tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return []


def submitit_log(out: Path, job_id: str) -> Path:
    """The submitit wrapper's log of a job (stdout and stderr together)."""
    return out / SLURM_FOLDER / job_id / f"{job_id}_0_log.out"


def stage_state(
    stage: Stage, out: Path, entry: dict | None, states: dict[str, JobState], run_status: dict | None = None
) -> tuple[str, str, list[str]]:
    """(state, detail, log tail) of one stage: done / running / queued / blocked / failed / skipped / not submitted.

    ``run_status``: its run folder's ``stage_status.json`` (``runner.read_status``), read here when not given.
    """
    if is_done(stage):
        return "done", str(stage.metrics), []
    status = (read_status(out / stage.method) if run_status is None else run_status).get(stage.name, {})
    status = status if isinstance(status, dict) else {}
    if not entry:
        if status.get("status") == "skipped":
            return "skipped", status.get("reason", ""), []
        return "not submitted", "", []
    job = entry["job_id"]
    js = states.get(job)
    if js is not None and js.blocked:
        return "blocked", f"job {job} waits on a stage that failed ({js.reason})", []
    if js is not None and js.live:
        what = "running" if js.state in ("RUNNING", "COMPLETING") else "queued"
        return what, f"job {job} {js.state}" + (f" ({js.reason})" if js.reason and js.reason != "None" else ""), []
    ended = f"job {job} {js.state}" if js is not None else f"job {job} ended"
    reason = status.get("reason") if status.get("status") == "failed" else None
    stage_log = out / stage.method / "logs" / f"{stage.name}.log"
    tail = log_tail(stage_log) if stage_log.is_file() else []
    tail = tail or log_tail(submitit_log(out, job))
    return "failed", ended + (f": {reason}" if reason else ""), tail


def print_status(out: Path, stages: list[Stage], jobs: dict) -> int:
    """Print every stage's state (and the report job's); 1 when some stage failed or is blocked, else 0."""
    states = queue_states()
    counts: dict[str, int] = {}
    statuses: dict[str, dict] = {}  # run folder -> its stage_status.json, read once
    for stage in stages:
        if stage.method not in statuses:
            statuses[stage.method] = read_status(out / stage.method)
        entry = jobs.get("stages", {}).get(stage_key(stage))
        state, detail, tail = stage_state(stage, out, entry, states, statuses[stage.method])
        counts[state] = counts.get(state, 0) + 1
        print(f"{stage_key(stage):40s} {state:14s} {detail}")
        for line in tail:
            print(f"    {line}")
    report = jobs.get("report", {}).get("job_id")
    if report:
        js = states.get(report)
        where = out / REPORT_FILE
        state = js.state if js is not None else ("done" if where.is_file() else "ended")
        print(f"{'report':40s} {state.lower():14s} job {report} -> {where}")
    print("# " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return 1 if counts.get("failed") or counts.get("blocked") else 0
