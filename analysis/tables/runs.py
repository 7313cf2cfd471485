"""The results of pretraining runs: every metrics file below a run folder, read strictly.

A run folder is one pretraining run and one transfer seed of its evaluations (as
``analysis.reproduce`` lays it out: ``<out>/<init>/{pretrain,finetune,...}``, further seeds
in ``seed<k>/`` and ``pretrain_seed<j>/`` below it, which are run folders of their own). The
initialisation comes from ``protocol.json`` (written by ``analysis.reproduce``: per stage
the recipe, seed, checkpoint, image size and overrides), else the pretraining metrics, else
a ``method`` key, else the folder name; an optional ``stage_status.json``
(``analysis.runner``) says why a stage has no result and how long each took.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..layout import METRIC_FILES, PROTOCOL_FILE, SCRATCH, STATUS_FILE, TASK_STAGES
from .metrics_schema import MetricsError, load_metrics_file
from .paper_numbers import METHOD_NAMES, METHOD_ORDER

SEED_FOLDER = re.compile(r"^(pretrain_)?seed(\d+)$")

SIZE_NAMES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}


def arch_label(
    size: str | None, patch: int | str | None, img: int | str | None = None, unknown: str | None = None,
    px: str = " px",
) -> str:
    """``ViT-B/16 @224 px``: a size of ``SIZE_NAMES`` by its letter, another as ``unknown`` (default
    ``ViT-<size>``, ``ViT-?`` without one); no ``/patch`` without a patch, no ``@img`` without an image size;
    ``px``: what follows the image size."""
    if size in SIZE_NAMES:
        name = f"ViT-{SIZE_NAMES[size]}"
    else:
        name = unknown if unknown is not None else f"ViT-{size or '?'}"
    return name + (f"/{patch}" if patch not in (None, "") else "") + (f" @{img}{px}" if img else "")


@dataclass
class RunResults:
    """Everything found for one pretraining run."""

    name: str
    path: Path
    method: str
    size: str | None = None
    arch: str | None = None
    epochs: float | None = None
    cost: dict[str, float] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)  # stage -> metrics dict
    files: dict[str, Path] = field(default_factory=dict)
    status: dict[str, dict] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)  # protocol.json (empty when absent)

    def seed(self, stage: str) -> int | None:
        """The seed ``stage`` ran under: its metrics' ``seed`` key, else protocol.json, else None."""
        m = self.metrics.get(stage, {})
        if isinstance(m.get("seed"), int):
            return m["seed"]
        value = self.protocol.get("stages", {}).get(stage, {}).get("seed")
        return value if isinstance(value, int) else None

    @property
    def pretrain_seed(self) -> int | None:
        """The pretraining seed of this run's backbone (None for scratch or when not recorded)."""
        value = self.protocol.get("pretrain_seed")
        return value if isinstance(value, int) else None

    @property
    def label(self) -> str:
        """The method's display name (DropPos, MAE, AdPE)."""
        return METHOD_NAMES.get(self.method, self.method)


def _size_from_arch(arch: str | None) -> str | None:
    """The ViT size named in an arch string (``vit_tiny_patch8_64`` -> tiny)."""
    if not arch:
        return None
    for size in SIZE_NAMES:
        if f"_{size}_" in f"_{arch}_" or f"vit_{size}" in arch:
            return size
    return None


def collect_run(run_dir: str | Path) -> RunResults:
    """Read every metrics file under one run dir (strictly), newest per stage."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MetricsError(f"run dir not found: {run_dir}")
    found: dict[str, list[tuple[float, Path, dict]]] = {}
    for name in METRIC_FILES:
        for path in sorted(run_dir.rglob(name)):
            if any(SEED_FOLDER.match(part) for part in path.relative_to(run_dir).parts[:-1]):
                continue  # another seed's run folder
            data = load_metrics_file(path)
            found.setdefault(TASK_STAGES[data["task"]], []).append((path.stat().st_mtime, path, data))
    warnings = []
    metrics, files = {}, {}
    for stage, items in found.items():
        items.sort(key=lambda t: t[0])
        if len(items) > 1:
            if stage == "pretrain":
                raise MetricsError(
                    f"{run_dir}: several pretraining runs ({', '.join(str(p) for _, p, _ in items)}); "
                    "pass one folder per pretraining run"
                )
            warnings.append(f"{stage}: {len(items)} metrics files, the newest is used ({items[-1][1]})")
        _, files[stage], metrics[stage] = items[-1]
    protocol = read_protocol(run_dir)
    pre = metrics.get("pretrain", {})
    method = protocol.get("init") or pre.get("method") or (SCRATCH if run_dir.name == SCRATCH else None)
    method = method or next(
        (m.get("method") for m in metrics.values() if isinstance(m.get("method"), str)), None
    )
    if method is None:
        names = [run_dir.name.lower()] + [p.name.lower() for p in run_dir.parents if p.name]
        method = next((m for n in names for m in METHOD_ORDER if m in n), None)
    if method is None:
        raise MetricsError(
            f"{run_dir}: cannot tell the method (no protocol.json, no pretrain_metrics.json, no 'method' key, "
            "and the folder name names none of droppos, mae, adpe, scratch)"
        )
    arch = pre.get("arch") or next((m.get("arch") for m in metrics.values() if isinstance(m.get("arch"), str)), None)
    status = {}
    status_path = run_dir / STATUS_FILE
    if status_path.is_file():
        try:
            status = json.loads(status_path.read_text())
        except json.JSONDecodeError as exc:
            raise MetricsError(f"{status_path}: not valid JSON ({exc})") from None
    return RunResults(
        name=run_dir.name,
        path=run_dir,
        method=method,
        size=_size_from_arch(arch),
        arch=arch,
        epochs=pre.get("epochs"),
        cost=pre.get("cost", {}),
        final=pre.get("final", {}) or {},
        metrics=metrics,
        files=files,
        status=status,
        warnings=warnings,
        protocol=protocol,
    )


def seed_folders(run_dir: Path) -> list[Path]:
    """``run_dir`` and the run folders of its other seeds (``seed<k>``, ``pretrain_seed<j>``) below it."""
    if not run_dir.is_dir():
        return [run_dir]
    nested = [p for p in sorted(run_dir.iterdir()) if p.is_dir() and SEED_FOLDER.match(p.name)]
    return [run_dir] + [q for p in nested for q in seed_folders(p)]


def collect_runs(run_dirs: list[str | Path]) -> list[RunResults]:
    """Every run folder's results (seed folders below each included), DropPos, MAE, AdPE, scratch first."""
    runs = [collect_run(d) for top in run_dirs for d in seed_folders(Path(top))]
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(runs, key=lambda r: (order.get(r.method, 99), str(r.path)))


def run_name(run: RunResults) -> str:
    """A run folder's name in tables: its path below the initialisation's folder (``droppos/seed1``)."""
    parts = [run.path.name]
    for parent in run.path.parents:
        if not SEED_FOLDER.match(parts[0]):
            break
        parts.insert(0, parent.name)
    return "/".join(parts)


# --------------------------------------------------------------------------- protocol.json
def read_protocol(run_dir: Path) -> dict[str, Any]:
    """A run folder's protocol.json ({} when absent); a malformed one stops with its path."""
    path = run_dir / PROTOCOL_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MetricsError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages", {}), dict):
        raise MetricsError(f"{path}: expected an object with a 'stages' object")
    return data
