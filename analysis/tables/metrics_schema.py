"""The metrics files every stage writes, and the checks a file must pass before the tables use it.

One JSON object per file, with a ``task`` that belongs to the file's name
(``METRIC_FILES``). The keys the tables need are checked strictly (a malformed file
stops with its path and what is wrong); every other key is kept and ignored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from ..layout import METRIC_FILES

class MetricsError(ValueError):
    """A metrics file that cannot be used; the message names the file and the problem."""


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _require(data: dict, key: str, path: Path, check: Callable[[Any], bool], what: str, nullable: bool = False) -> Any:
    """``data[key]``, which must pass ``check`` (or be None when ``nullable``)."""
    if key not in data:
        raise MetricsError(f"{path}: required key '{key}' is missing ({what})")
    value = data[key]
    if value is None and nullable:
        return None
    if not check(value):
        raise MetricsError(f"{path}: key '{key}' must be {what}, got {value!r}")
    return value


def _check_pretrain(data: dict, path: Path) -> None:
    _require(data, "method", path, lambda v: isinstance(v, str) and v, "the method name (droppos, mae, adpe)")
    _require(data, "epochs", path, lambda v: _is_num(v) and v >= 0, "a number of epochs")
    cost = _require(data, "cost", path, lambda v: isinstance(v, dict), "an object with gpu_hours and cpu_minutes")
    for key in ("gpu_hours", "cpu_minutes"):
        if key not in cost:
            raise MetricsError(f"{path}: required key 'cost.{key}' is missing")
        if not _is_num(cost[key]) or cost[key] < 0:
            raise MetricsError(f"{path}: key 'cost.{key}' must be a non-negative number, got {cost[key]!r}")
    final = data.get("final", {})
    if not isinstance(final, dict):
        raise MetricsError(f"{path}: key 'final' must be an object of final metrics, got {final!r}")
    for key in ("loss", "pos_acc"):
        if key in final and final[key] is not None and not _is_num(final[key]):
            raise MetricsError(f"{path}: key 'final.{key}' must be a number, got {final[key]!r}")


def _check_classification(data: dict, path: Path) -> None:
    _require(data, "top1", path, lambda v: _is_num(v) and 0 <= v <= 100, "a top-1 accuracy in percent (0-100)")


def _check_detection(data: dict, path: Path) -> None:
    for key in ("bbox_AP", "segm_AP"):
        _require(data, key, path, _is_num, "an AP in percent or null", nullable=True)
    if "bbox_AP50" in data:
        _require(data, "bbox_AP50", path, _is_num, "an AP50 in percent or null", nullable=True)


def _check_segmentation(data: dict, path: Path) -> None:
    _require(data, "mIoU", path, _is_num, "a mIoU in percent or null", nullable=True)


def _check_position_probe(data: dict, path: Path) -> None:
    results = _require(
        data, "results", path, lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of results"
    )
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise MetricsError(f"{path}: results[{i}] must be an object, got {r!r}")
        for key in ("drop_ratio", "top1", "within1", "chance"):
            if key not in r:
                raise MetricsError(f"{path}: required key 'results[{i}].{key}' is missing")
            if not _is_num(r[key]) or not 0 <= r[key] <= 1:
                raise MetricsError(f"{path}: key 'results[{i}].{key}' must be a fraction in [0, 1], got {r[key]!r}")


def _check_finetuned_probe(data: dict, path: Path) -> None:
    rows = _require(data, "rows", path, lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of rows")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "label" not in row:
            raise MetricsError(f"{path}: rows[{i}] must be an object with a 'label'")
        _check_position_probe(row, path)


def _percent(v: Any) -> bool:
    return _is_num(v) and 0 <= v <= 100


def _check_lowshot(data: dict, path: Path) -> None:
    subsets = _require(data, "subsets", path, lambda v: isinstance(v, dict) and len(v) > 0,
                       "an object of low-shot subsets (1percent, per_class_1 ...)")
    for name, sub in subsets.items():
        if not isinstance(sub, dict):
            raise MetricsError(f"{path}: subsets.{name} must be an object, got {sub!r}")
        _require(sub, "top1", path, _percent, f"subsets.{name}.top1: a top-1 accuracy in percent (0-100)")
        _require(sub, "C", path, lambda v: _is_num(v) and v > 0, f"subsets.{name}.C: the chosen C (> 0)")
        _require(sub, "C_selection", path, lambda v: isinstance(v, str) and v, f"subsets.{name}: how C was chosen")


def _check_robustness(data: dict, path: Path) -> None:
    """Every set's numbers in range, with its protocol; ImageNet-C's per corruption and severity."""
    sets = _require(data, "sets", path, lambda v: isinstance(v, dict) and len(v) > 0, "an object of evaluated sets")
    if data.get("clean") is not None:
        _require(data["clean"], "top1", path, _percent, "clean.top1: a top-1 accuracy in percent")
    for name, m in sets.items():
        if not isinstance(m, dict) or "protocol" not in m:
            raise MetricsError(f"{path}: sets.{name} must be an object with its 'protocol'")
        if name == "c":
            top1 = _require(m, "top1", path, lambda v: isinstance(v, dict) and len(v) > 0,
                            "sets.c.top1: {corruption: {severity: top-1}}")
            for corruption, sev in top1.items():
                if not isinstance(sev, dict) or not sev or not all(_percent(x) for x in sev.values()):
                    raise MetricsError(f"{path}: sets.c.top1.{corruption} must map severities to top-1 in percent")
            for key in ("mce", "relative_mce", "mean_top1"):
                _require(m, key, path, _is_num, f"sets.c.{key}: a number or null", nullable=True)
        elif name == "position":
            rows = _require(m, "rows", path, lambda v: isinstance(v, dict) and "clean" in v,
                            "sets.position.rows: {perturbation: {top1, ...}} with a clean row")
            for row, r in rows.items():
                _require(r, "top1", path, _percent, f"sets.position.rows.{row}.top1 in percent")
        else:
            _require(m, "top1", path, _percent, f"sets.{name}.top1: a top-1 accuracy in percent (0-100)")


_CHECKS: dict[str, Callable[[dict, Path], None]] = {
    "pretrain": _check_pretrain,
    "finetune": _check_classification,
    "linear_probe": _check_classification,
    "knn": _check_classification,
    "attentive_probe": _check_classification,
    "coco_detection": _check_detection,
    "ade20k_segmentation": _check_segmentation,
    "position_probe": _check_position_probe,
    "finetuned_probe": _check_finetuned_probe,
    "lowshot": _check_lowshot,
    "robustness": _check_robustness,
}


def load_metrics_file(path: str | Path) -> dict:
    """Read and check one metrics file; returns its dict (extra keys kept)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise MetricsError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise MetricsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise MetricsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    allowed = METRIC_FILES.get(path.name)
    task = _require(data, "task", path, lambda v: isinstance(v, str), "a task name string")
    if allowed is not None and task not in allowed:
        raise MetricsError(f"{path}: task '{task}' does not belong in {path.name} (expected {' or '.join(allowed)})")
    if task in _CHECKS:
        _CHECKS[task](data, path)
    elif allowed is None:
        raise MetricsError(f"{path}: unknown metrics file name (expected one of {', '.join(METRIC_FILES)})")
    return data
