"""Running the stages of the end-to-end run: one process each, skipped once done, status recorded.

A stage whose metrics file holds a finished record is not run again (so an interrupted
run continues where it stopped; :func:`unfinished_reason` says what counts: a JSON object
naming its task, all epochs or iterations done, so a file cut short or written by a
validation part-way through is run again, and the stage resumes from its own checkpoints);
one whose packages are missing, or whose input an earlier stage did not
write, is skipped with the reason. Each process's output goes to
``<out>/<method>/logs/<stage>.log``; status, wall and CPU time to
``<out>/<method>/stage_status.json``. Up to ``jobs`` stages run side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from pretrain.atomic import atomic_write_text

from ..layout import STATUS_FILE
from . import interrupt
from .stage_inputs import input_changes, record_inputs, set_aside
from .stages import ROOT, Stage

_STATUS_LOCK = threading.Lock()
_PRINT_LOCK = threading.Lock()


# --------------------------------------------------------------------------- status
def read_status(run_dir: Path) -> dict:
    """The stage -> status record map of one method's run ({} when absent or unreadable)."""
    path = run_dir / STATUS_FILE
    try:
        status = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return status if isinstance(status, dict) else {}


def write_status(run_dir: Path, stage: str, record: dict) -> None:
    """Set one stage's record in the run's status file."""
    with _STATUS_LOCK:  # stages of one run may finish at the same time (--jobs)
        run_dir.mkdir(parents=True, exist_ok=True)
        status = read_status(run_dir)
        status[stage] = record
        atomic_write_text(run_dir / STATUS_FILE, json.dumps(status, indent=2) + "\n")


def _say(message: str) -> None:
    """One whole line to stdout (stages running side by side print from threads)."""
    with _PRINT_LOCK:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()


def _settle(stage: Stage, out: Path, record: dict, message: str) -> dict:
    """Report a stage's outcome and record it in its run's status file."""
    _say(f"[reproduce] {stage.method}/{stage.name}: {message}")
    write_status(out / stage.method, stage.name, record)
    return record


def _requested_iterations(command: list[str]) -> int | None:
    """The iteration count a Detectron2 / MMEngine stage command asks for (``...max_iter[s]=N``)."""
    for arg in command:
        key, sep, value = arg.partition("=")
        if sep and key.rsplit(".", 1)[-1] in ("max_iter", "max_iters") and value.isdigit():
            return int(value)
    return None


def _asks(stage: Stage, prefix: str) -> bool:
    return any(arg.startswith(prefix) for arg in stage.command)


def unfinished_reason(stage: Stage) -> str | None:
    """Why the stage's metrics file is not a finished stage's (None: it is).

    Not finished: missing, unreadable, not a JSON object with a ``task`` (a file cut short
    or overwritten by something else), fewer epochs done than asked, or fewer iterations
    than the stage's command asks for (segmentation rewrites its file at each validation).
    """
    path = stage.metrics
    if not path.is_file():
        return f"no {path.name}"
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{path} is not valid JSON ({type(exc).__name__}: {exc})"
    if not isinstance(record, dict) or not isinstance(record.get("task"), str):
        return f"{path} is not a metrics record (no 'task')"
    done, wanted = record.get("epochs_done"), record.get("epochs")
    if isinstance(done, int) and isinstance(wanted, int) and done < wanted and not _asks(stage, "train.max_steps="):
        return f"{path} records {done} of {wanted} epochs"
    wanted_iters, iters = _requested_iterations(stage.command), record.get("iterations")
    if wanted_iters is not None and isinstance(iters, int) and iters < wanted_iters:
        return f"{path} records {iters} of {wanted_iters} iterations"
    return None


def is_done(stage: Stage) -> bool:
    """Whether the stage's output is finished and made from the inputs it has now (what is skipped)."""
    return unfinished_reason(stage) is None and not input_changes(stage)[0]


def headline(stage: Stage) -> str:
    """One line of the stage's headline numbers from its metrics file."""
    try:
        m = json.loads(stage.metrics.read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    if not isinstance(m, dict):
        return ""
    if stage.name == "pretrain":
        final = m.get("final", {})
        return ", ".join(
            f"{k} {v:.4f}" for k, v in final.items() if isinstance(v, (int, float)) and k in ("loss", "pos_acc")
        )
    if stage.name in ("finetune", "linear_probe", "knn", "attentive_probe"):
        return f"top-1 {m.get('top1', float('nan')):.2f}%"
    if stage.name == "detection":
        return f"AP box {m.get('bbox_AP')}, AP mask {m.get('segm_AP')}"
    if stage.name == "segmentation":
        return f"mIoU {m.get('mIoU')}"
    if stage.name == "position_probe":
        return "; ".join(f"drop {r['drop_ratio']:g}: {100 * r['top1']:.1f}%" for r in m.get("results", []))
    if stage.name == "lowshot":
        return "; ".join(f"{k}: top-1 {v.get('top1', float('nan')):.2f}%" for k, v in (m.get("subsets") or {}).items())
    if stage.name == "robustness":
        sets = m.get("sets") or {}
        parts = [f"clean {m['clean']['top1']:.1f}%"] if isinstance(m.get("clean"), dict) else []
        if isinstance(sets.get("c"), dict) and sets["c"].get("mean_top1") is not None:
            parts.append(f"C mean {sets['c']['mean_top1']:.1f}%")
        rows = (sets.get("position") or {}).get("rows") or {}
        parts += [f"{k} {rows[k]['top1']:.1f}%" for k in ("shuffle_grid", "drop_0.75") if k in rows]
        return ", ".join(parts)
    return ""


# --------------------------------------------------------------------------- one stage
def _wait_with_cpu(proc: subprocess.Popen) -> tuple[int, float]:
    """Reap ``proc``: (exit code, user + system CPU seconds of it and its reaped children).

    The CPU time says what a stage costs whatever else the machine runs; ``wait4`` reads it
    for this child alone, so stages running side by side are told apart.
    """
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:  # reaped already (an interrupt stopped it): no CPU time to read
        return (proc.returncode if proc.returncode is not None else -15), 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _run_process(
    stage: Stage, log: Path, env: dict[str, str], verbose: bool, timeout: float | None
) -> tuple[int | str, float]:
    """Run the stage's command with its output in ``log``: (exit code or why it was stopped, CPU seconds)."""
    tag = f"{stage.method}/{stage.name}"
    timed_out = threading.Event()
    rc: int | str
    with open(log, "w") as f:
        f.write("$ " + stage.shell() + "\n")
        f.flush()
        proc = subprocess.Popen(
            stage.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        interrupt.track(tag, proc)
        watchdog = None
        if timeout is not None:
            watchdog = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill()))
            watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                f.flush()
                if verbose:
                    _say(f"  [{tag}] {line.rstrip()}")
            rc, cpu = _wait_with_cpu(proc)
        except KeyboardInterrupt:
            interrupt.stop_all()  # this stage and any running beside it
            raise
        finally:
            interrupt.untrack(proc)
            if watchdog is not None:
                watchdog.cancel()
    if timed_out.is_set():
        rc = f"stopped after --stage-timeout {timeout:g} s"
    elif rc != 0 and interrupt.interrupted():
        rc = interrupt.INTERRUPTED_REASON
    return rc, cpu


def run_stage(
    stage: Stage,
    out: Path,
    verbose: bool = False,
    timeout: float | None = None,
    env_extra: dict[str, str] | None = None,
    no_rerun: bool = False,
) -> dict:
    """Run (or skip) one stage; returns its status record (also saved in the run's stage_status.json).

    A stage whose output was started from other inputs (``analysis.reproduce.stage_inputs``) is run
    again from the start, its old folder set aside, or refused with ``no_rerun``.
    """
    run_dir = out / stage.method
    unfinished = unfinished_reason(stage)
    changed, inputs = input_changes(stage)
    if changed:
        what = "; ".join(changed)
        if no_rerun:
            record = {"status": "failed", "reason": f"--no-rerun: its output was made from other inputs ({what})"}
            return _settle(stage, out, record, f"REFUSED (--no-rerun): {stage.metrics.parent} was made from other "
                                               f"inputs: {what}")
        moved = set_aside(stage, out)
        _say(f"[reproduce] {stage.method}/{stage.name}: inputs changed since its output was made ({what}): "
             f"old output moved to {moved}, running it again")
        unfinished = "its inputs changed"
    if unfinished is not None and stage.metrics.is_file():
        _say(f"[reproduce] {stage.method}/{stage.name}: not finished ({unfinished}): running it again")
    if unfinished is None:
        previous = read_status(run_dir).get(stage.name, {})
        record = {
            "status": "done",
            "cached": True,
            "wall_seconds": previous.get("wall_seconds"),
            "cpu_seconds": previous.get("cpu_seconds"),
            "metrics": str(stage.metrics),
        }
        unchecked = "" if inputs is not None else "; its inputs were not recorded, not checked"  # no record
        return _settle(stage, out, record, f"done before ({stage.metrics}), skipped{unchecked}")
    if stage.available:
        record = {"status": "skipped", "reason": f"not available: {stage.available}"}
        return _settle(stage, out, record, f"skipped (not available: {stage.available})")
    missing = [p for p in stage.needs if not p.is_file()]
    if missing:
        record = {"status": "skipped", "reason": f"needs {missing[0]} (an earlier stage did not finish)"}
        return _settle(stage, out, record, f"skipped (needs {missing[0]})")
    log = run_dir / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **stage.env, **(env_extra or {}))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    record_inputs(stage, inputs)
    _say(f"[reproduce] {stage.method}/{stage.name}: running (log: {log})")
    t0 = time.time()
    rc, cpu = _run_process(stage, log, env, verbose, timeout)
    wall = time.time() - t0
    if rc == 0 and unfinished_reason(stage) is None:
        record = {"status": "done", "wall_seconds": wall, "cpu_seconds": cpu, "metrics": str(stage.metrics)}
        return _settle(
            stage, out, record, f"done in {wall / 60:.1f} min (CPU time {cpu / 60:.1f} min)  {headline(stage)}"
        )
    tail = log.read_text().strip().splitlines()[-15:]
    why = (rc if isinstance(rc, str) else f"exit code {rc}") if rc != 0 else unfinished_reason(stage)
    record = {"status": "failed", "reason": why, "wall_seconds": wall, "cpu_seconds": cpu, "log": str(log)}
    return _settle(
        stage,
        out,
        record,
        f"FAILED after {wall / 60:.1f} min ({why}); last lines of {log}:\n" + "\n".join(f"    {line}" for line in tail),
    )


# --------------------------------------------------------------------------- many stages
def run_stages(
    stages: list[Stage],
    out: Path,
    jobs: int = 1,
    verbose: bool = False,
    timeout: float | None = None,
    env_extra: dict[str, str] | None = None,
    no_rerun: bool = False,
) -> dict[tuple[str, str], dict]:
    """Run stages in order, up to ``jobs`` at a time; a stage waits for the stage that writes what it needs."""
    records: dict[tuple[str, str], dict] = {}
    if jobs <= 1:
        for s in stages:
            records[(s.method, s.name)] = run_stage(s, out, verbose, timeout, env_extra, no_rerun)
        return records
    pending = list(stages)
    running: dict[Future, Stage] = {}

    def blocked(s: Stage) -> bool:
        others = pending + list(running.values())
        return any(p is not s and any(n.parent == p.metrics.parent for n in s.needs) for p in others)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while pending or running:
                for s in list(pending):
                    if len(running) >= jobs:
                        break
                    if not blocked(s):
                        pending.remove(s)
                        running[pool.submit(run_stage, s, out, verbose, timeout, env_extra, no_rerun)] = s
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    s = running.pop(fut)
                    records[(s.method, s.name)] = fut.result()
        except KeyboardInterrupt:  # only the main thread gets it: stop the stages the pool's threads run
            pool.shutdown(wait=False, cancel_futures=True)
            interrupt.stop_all()
            raise
    return records
