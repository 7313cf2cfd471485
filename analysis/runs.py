"""The results of pretraining runs: every metrics file below a run folder, read strictly.

A run folder is one pretraining run and its evaluations (as ``analysis.reproduce`` lays it
out: ``<out>/<method>/{pretrain,finetune,...}``). The method comes from the pretraining
metrics (or a ``method`` key, or the folder name); an optional ``stage_status.json``
(``analysis.runner``) says why a stage has no result and how long each took.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics_schema import METRIC_FILES, TASK_STAGES, MetricsError, load_metrics_file
from .paper_numbers import METHOD_NAMES, METHOD_ORDER
from .runner import STATUS_FILE

SIZE_NAMES = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}


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
    pre = metrics.get("pretrain", {})
    method = pre.get("method") or next(
        (m.get("method") for m in metrics.values() if isinstance(m.get("method"), str)), None
    )
    if method is None:
        lowered = run_dir.name.lower()
        method = next((m for m in METHOD_ORDER if m in lowered), None)
    if method is None:
        raise MetricsError(
            f"{run_dir}: cannot tell the method (no pretrain_metrics.json, no 'method' key, "
            "and the folder name names none of droppos, mae, adpe)"
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
    )


def collect_runs(run_dirs: list[str | Path]) -> list[RunResults]:
    """Every run dir's results, DropPos, MAE, AdPE first (then by folder name)."""
    runs = [collect_run(d) for d in run_dirs]
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(runs, key=lambda r: (order.get(r.method, 99), r.name))
