"""Run the check's parts: each one a subprocess under its own time limit, in two lanes.

A part that outlives its limit is killed with its whole process group (DataLoader
workers and compile workers included) and reported as ``timeout``, so one hang costs
its own limit and never the lease. All parts share one wall-clock budget: a part gets
at most what is left of it, and is ``skipped`` once it is spent. Lanes run side by side
(one thread each); a part waits for the parts it names in ``needs`` / ``after``, and is
skipped when a part it ``needs`` did not succeed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from .plan import Part

MIN_PART_S = 3.0  # a part is not started with less time than this left in the budget
KILL_GRACE_S = 5.0
TAIL_CHARS = 4000
RUNNING: set[subprocess.Popen] = set()  # the parts running now (their own sessions: see kill_running)
STOPPED = threading.Event()  # set by kill_running: no part starts after it


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group that ``proc`` leads (started with ``start_new_session``)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the part's process group, then SIGKILL whatever is left after a grace period."""
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    signal_group(proc, signal.SIGKILL)
    proc.wait()


def run_command(argv: list[str], timeout: float, log_path: Path, env: dict[str, str] | None = None,
                cwd: str | os.PathLike | None = None) -> tuple[str, int | None, float]:
    """Run ``argv`` with output to ``log_path``; returns (ok | failed | timeout, exit code, seconds)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
        RUNNING.add(proc)
        try:
            code: int | None = proc.wait(timeout=timeout)
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            kill_group(proc)
            code, status = None, "timeout"
        finally:
            RUNNING.discard(proc)
    signal_group(proc, signal.SIGKILL)  # leftovers of a part that exited (a worker it did not reap)
    return status, code, time.monotonic() - t0


def kill_running() -> None:
    """SIGKILL every running part's process group: a part runs in its own session, so it would
    outlive a check that is itself stopped (SIGTERM, Ctrl-C) unless the check ends it."""
    STOPPED.set()
    for proc in list(RUNNING):
        signal_group(proc, signal.SIGKILL)


def read_tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Schedule:
    """Runs a plan's lanes side by side within ``budget_s``; ``outcomes`` holds one record per part."""

    def __init__(self, plan: list[Part], budget_s: float, log_dir: Path, python: str = sys.executable,
                 cwd: str | os.PathLike | None = None, say: Callable[[str], None] = print) -> None:
        self.plan, self.budget_s, self.log_dir = plan, float(budget_s), Path(log_dir)
        self.python, self.cwd = python, cwd
        self.names = {p.name for p in plan}
        self.done = {p.name: threading.Event() for p in plan}
        self.outcomes: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._say = say
        self.deadline = 0.0

    def say(self, message: str) -> None:
        with self._lock:
            self._say(f"[gpu_check] {message}")

    def run(self) -> dict[str, dict[str, Any]]:
        """Run every lane to its end; returns the outcomes in plan order."""
        self.deadline = time.monotonic() + self.budget_s
        lanes: dict[str, list[Part]] = {}
        for part in self.plan:
            lanes.setdefault(part.lane, []).append(part)
        main = lanes.pop("main", [])
        threads = [threading.Thread(target=self._run_lane, args=(parts,), name=f"lane-{lane}", daemon=True)
                   for lane, parts in lanes.items()]
        for t in threads:
            t.start()
        self._run_lane(main)
        for t in threads:
            t.join()
        return {p.name: self.outcomes[p.name] for p in self.plan}

    def _run_lane(self, parts: list[Part]) -> None:
        for part in parts:
            try:
                outcome = self._run_part(part)
            except Exception as exc:  # noqa: BLE001 - a broken part must not stop the lane
                outcome = self._record(part, "failed", reason=f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.outcomes[part.name] = outcome
            self.done[part.name].set()

    def _record(self, part: Part, status: str, **items: Any) -> dict[str, Any]:
        return {"name": part.name, "kind": part.kind, "lane": part.lane, "status": status, "limit_s": part.limit_s,
                "command": " ".join(["python", *part.argv]), **part.info, **items}

    def _wait_for(self, part: Part) -> dict[str, Any] | None:
        """Wait for the parts ``part`` depends on; a skip record if it cannot run."""
        for dep in (*part.needs, *part.after):
            if dep not in self.names:
                continue  # not selected in this run (--parts): its files may be there from an earlier one
            left = self.deadline - time.monotonic()
            if not self.done[dep].wait(timeout=max(0.0, left)):
                return self._record(part, "skipped", reason=f"time budget spent while waiting for {dep}")
        for dep in part.needs:
            status = self.outcomes.get(dep, {}).get("status", "ok")
            if dep in self.names and status != "ok":
                return self._record(part, "skipped", reason=f"needs {dep}, which {status_word(status)}")
        return None

    def _run_part(self, part: Part) -> dict[str, Any]:
        skipped = self._wait_for(part)
        if skipped is not None:
            self.say(f"{part.name}: skipped ({skipped['reason']})")
            return skipped
        if STOPPED.is_set():
            return self._record(part, "skipped", reason="the check was stopped")
        left = self.deadline - time.monotonic()
        if left < MIN_PART_S:
            self.say(f"{part.name}: skipped (time budget spent)")
            return self._record(part, "skipped", reason=f"the check's time budget ({self.budget_s:.0f} s) was spent")
        timeout = min(part.limit_s, left)
        part.json_path.unlink(missing_ok=True)
        log = self.log_dir / f"{part.name}.log"
        self.say(f"{part.name}: start (limit {timeout:.0f} s)")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **part.env}
        status, code, seconds = run_command([self.python, *part.argv], timeout, log, env=env, cwd=self.cwd)
        reason = None
        if status == "timeout":
            own = timeout >= part.limit_s
            reason = (f"killed after its time limit of {timeout:.0f} s" if own else
                      f"killed at the end of the check's time budget ({timeout:.0f} s left for it)")
        elif status == "failed":
            reason = f"exit code {code}"
        result = read_json(part.json_path)
        failed_checks = [k for k, v in ((result or {}).get("checks") or {}).items() if not v]
        if status == "failed" and failed_checks:
            reason += "; checks failed: " + ", ".join(failed_checks)
        if status == "ok" and result is None:
            status, reason = "failed", f"exited 0 but wrote no result ({part.json_path.name})"
        self.say(f"{part.name}: {status} in {seconds:.1f} s" + (f" ({reason})" if reason else ""))
        return self._record(part, status, seconds=round(seconds, 2), returncode=code, reason=reason,
                            log=str(log), log_tail=read_tail(log) if status != "ok" else "", result=result)


def status_word(status: str) -> str:
    return {"failed": "failed", "timeout": "timed out", "skipped": "was skipped"}.get(status, status)
