"""The GPU check's command line: refuse without a GPU, run the plan, write JSON and Markdown.

    tools/gpu_check.sh                      # on a CUDA machine: every part, about 6 minutes on an H100/H200
    tools/gpu_check.sh --dry-run            # the same parts at tiny sizes on the CPU (what CI runs)
    python -m tools.gpu_check --list        # the parts, their lanes and time limits
    python -m tools.gpu_check --parts 'bench-*' --limit bench-droppos-fp32=200
    python -m tools.gpu_check --table docs/gpu_check_result.json [--readme README.md]

Writes ``gpu_check.json``, ``gpu_check.md`` and ``gpu_check.log`` (every part's output)
to ``--out`` (default ``$OUT`` when set, else ``outputs/gpu_check``). Exit 0 when every
selected part succeeded, 1 naming the parts that failed, timed out or were skipped, 2
when there is no GPU (and no ``--dry-run``) or the arguments are wrong.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .plan import DRY, GPU, SEGMENTATION_NOTE, build_plan, with_limits
from .runner import Schedule, kill_running
from .summary import failures, summarize
from .tables import readme_block, report, write_readme

REPO = Path(__file__).resolve().parents[2]
MODULES = ("omegaconf", "fvcore", "iopath", "yacs", "termcolor", "tabulate", "timm", "pycocotools", "detectron2",
           "cv2", "PIL", "numpy", "tqdm", "yaml")  # imported by the parts beyond torch / torchvision
DISTRIBUTIONS = ("torch", "torchvision", "timm", "numpy", "omegaconf", "fvcore", "pycocotools", "detectron2")
LOG_PART_CHARS = 200_000  # the tail of each part's output that goes into gpu_check.log


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("python -m tools.gpu_check",
                                description="One check of every CUDA path (see docs/gpu_check.md)")
    p.add_argument("--dry-run", action="store_true", help="the same parts at tiny sizes on the CPU")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else outputs/gpu_check)")
    p.add_argument("--work-dir", type=Path, default=None, help="data and run folders (default: a folder in $TMPDIR)")
    p.add_argument("--budget", type=float, default=None, help="wall seconds for all parts (default 345; dry run 400)")
    p.add_argument("--parts", action="append", default=[], help="only parts matching these patterns (repeatable)")
    p.add_argument("--limit", action="append", default=[], metavar="PART=SECONDS", help="another time limit for a part")
    p.add_argument("--list", action="store_true", help="print the plan and exit")
    p.add_argument("--table", type=Path, default=None, metavar="JSON",
                   help="print the README's GPU block from a check's JSON (a missing file: the empty block)")
    p.add_argument("--readme", type=Path, default=None, help="with --table: rewrite the block in this README")
    return p


def machine_info() -> dict[str, Any]:
    """Device, driver and package versions of this machine."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                            "torch": torch.__version__, "cuda": torch.version.cuda, "platform": platform.platform()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2 ** 30, 1), multiprocessors=props.multi_processor_count,
                    cudnn=torch.backends.cudnn.version())
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    else:
        info["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    versions = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    info["packages"] = versions
    info["missing_modules"] = [m for m in MODULES if importlib.util.find_spec(m) is None]
    return info


def select(plan: list, patterns: list[str]) -> list:
    if not patterns:
        return plan
    pats = [p for item in patterns for p in item.split(",") if p]
    chosen = [part for part in plan if any(fnmatch.fnmatchcase(part.name, p) for p in pats)]
    if not chosen:
        raise ValueError(f"--parts {pats} match no part; --list shows them")
    return chosen


def parse_limits(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--limit {item!r} is not PART=SECONDS")
        out[name] = float(value)
    return out


def collect_log(outcomes: dict[str, dict[str, Any]], path: Path) -> None:
    """Every part's output (its tail when long) in one file, in plan order."""
    with open(path, "w", encoding="utf-8") as f:
        for o in outcomes.values():
            f.write(f"\n===== {o['name']}: {o['status']} =====\n$ {o['command']}\n")
            log = Path(o["log"]) if o.get("log") else None
            if log is not None and log.is_file():
                text = log.read_bytes()[-LOG_PART_CHARS:].decode("utf-8", "replace")
                f.write(text)


def stop_parts(signum: int, frame: Any) -> None:
    kill_running()
    raise SystemExit(128 + signum)


def render_table(args: argparse.Namespace) -> int:
    doc = json.loads(args.table.read_text()) if args.table.is_file() else None
    if doc is not None and doc.get("dry_run") and args.readme is not None:
        print(f"{args.table} is a CPU dry run: its figures do not go into the README", file=sys.stderr)
        return 2
    block = readme_block(doc)
    if args.readme is None:
        print(block)
    else:
        write_readme(args.readme, block)
        print(f"rewrote the GPU block of {args.readme}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    import torch

    sizes = DRY if args.dry_run else GPU
    work = args.work_dir or Path(tempfile.gettempdir()) / f"droppos_gpu_check{'_dry' if args.dry_run else ''}"
    out = args.out or Path(os.environ.get("OUT") or "outputs/gpu_check")
    plan = with_limits(select(build_plan(sizes, work), args.parts), parse_limits(args.limit))
    budget = args.budget if args.budget is not None else sizes.budget_s
    if args.list:
        for p in plan:
            print(f"{p.name:32s} lane {p.lane:5s} limit {p.limit_s:4.0f} s  python {' '.join(p.argv)}")
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU on this machine (torch.cuda.is_available() is False), so nothing was measured. "
              "Run it on a GPU machine, or run `tools/gpu_check.sh --dry-run` for the CPU dry run of the same parts.",
              file=sys.stderr)
        return 2
    shutil.rmtree(work / "parts", ignore_errors=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    command = os.environ.get("GPU_CHECK_COMMAND") or "python -m tools.gpu_check " + " ".join(sys.argv[1:])
    print(f"[gpu_check] {machine['device_name']}, torch {machine['torch']}; {len(plan)} parts, budget {budget:.0f} s; "
          f"work {work}, out {out}")
    print(f"[gpu_check] {SEGMENTATION_NOTE}")
    if machine["missing_modules"]:
        print(f"[gpu_check] missing modules: {', '.join(machine['missing_modules'])} "
              "(carry the wheels of tools/prepare_gpu_wheels.py; the parts that import them will fail)")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # stopped: end the running parts first
        signal.signal(sig, stop_parts)
    t0 = time.monotonic()
    outcomes = Schedule(plan, budget, work / "logs", cwd=REPO).run()
    wall = time.monotonic() - t0
    failed = failures(outcomes)
    if machine["missing_modules"]:
        failed.insert(0, f"environment (missing modules: {', '.join(machine['missing_modules'])})")
    doc = {
        "kind": "droppos-gpu-check", "version": 1, "dry_run": bool(args.dry_run),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "machine": machine, "budget_s": budget, "wall_s": wall, "work_dir": str(work),
        "segmentation": SEGMENTATION_NOTE, "failed": failed, "parts": outcomes,
        "summary": summarize(outcomes, judged=not args.dry_run),
    }
    from pretrain.atomic import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "gpu_check.json", doc)
    text = report(doc)
    atomic_write_text(out / "gpu_check.md", text)
    collect_log(outcomes, out / "gpu_check.log")
    print(text)
    print(f"[gpu_check] wrote {out / 'gpu_check.json'}, {out / 'gpu_check.md'}, {out / 'gpu_check.log'} "
          f"({wall:.0f} s)")
    if failed:
        print("[gpu_check] FAILED: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.readme is not None and args.table is None:
        print("--readme needs --table JSON", file=sys.stderr)
        return 2
    if args.table is not None:
        return render_table(args)
    try:
        return run_check(args)
    except ValueError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
