"""Comparison tables: metrics JSON files of several runs -> Markdown and CSV, next to the papers' numbers.

    python -m analysis.tables outputs/demo/droppos outputs/demo/mae outputs/demo/adpe --out outputs/demo/report

A RUN_DIR is one pretraining run and its evaluations: every metrics file below it
is collected (``pretrain_metrics.json``, ``classification_metrics.json`` (task
finetune or linear_probe), ``detection_metrics.json``, ``segmentation_metrics.json``,
``position_probe_metrics.json``). The method comes from the pretraining metrics
(or a ``method`` key, or the folder name). Files are read strictly on the keys the
tables need (a malformed file stops with its path and what is wrong) and
tolerantly on everything else (``analysis.metrics_schema``; the runs are read by
``analysis.runs``). An optional ``stage_status.json`` in a run dir (written by
``analysis.reproduce``) says why a stage has no result (skipped / failed) and how long
each took.

Outputs in ``--out``: ``tables.md`` (results with the pretraining cost beside each
row, the methods side by side, the position probe per drop ratio, the papers'
numbers) and ``results.csv``, ``side_by_side.csv``, ``position_probe.csv``,
``paper_numbers.csv``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from .cli import run_command
from .metrics_schema import MetricsError
from .paper_numbers import GAINS_OVER_MAE, METHOD_NAMES, METHOD_ORDER, PAPER_ROWS, headline
from .runs import SIZE_NAMES, RunResults, collect_runs
from .stages import STAGES

PROBE_RATIO = 0.75  # the drop ratio quoted in the main tables


# --------------------------------------------------------------------------- values
def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: ``digits`` decimals, '—' for a missing value, text as it is."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:.{digits}f}"


def cost_text(cost: dict[str, float]) -> str:
    """Pretraining cost: GPU hours when on GPUs, else CPU wall minutes."""
    if not cost:
        return "—"
    if cost.get("gpu_hours", 0) > 0:
        return f"{cost['gpu_hours']:.1f} GPU h"
    return f"{cost.get('cpu_minutes', 0):.1f} min (CPU)"


def probe_at(m: dict | None, ratio: float = PROBE_RATIO) -> dict | None:
    """The probe result at ``ratio`` (or the nearest drop ratio measured)."""
    if not m:
        return None
    return min(m["results"], key=lambda r: abs(r["drop_ratio"] - ratio))


def _missing(run: RunResults, stage: str) -> str:
    st = run.status.get(stage)
    if isinstance(st, dict) and st.get("status") in ("skipped", "failed"):
        return st["status"]
    return "—"


def run_values(run: RunResults) -> dict[str, str]:
    """Display strings of one run's results, keyed by column."""
    m = run.metrics
    out = {
        "PT epochs": fmt(run.epochs, 0) if run.epochs is not None else _missing(run, "pretrain"),
        "PT cost": cost_text(run.cost) if "pretrain" in m else _missing(run, "pretrain"),
        "PT final loss": fmt(run.final.get("loss"), 4) if "pretrain" in m else _missing(run, "pretrain"),
    }
    for col, stage, key in (("FT top-1", "finetune", "top1"), ("LP top-1", "linear_probe", "top1")):
        out[col] = fmt(m[stage][key]) if stage in m else _missing(run, stage)
    if "detection" in m:
        out["COCO AP box"], out["COCO AP mask"] = fmt(m["detection"]["bbox_AP"]), fmt(m["detection"]["segm_AP"])
    else:
        out["COCO AP box"] = out["COCO AP mask"] = _missing(run, "detection")
    out["ADE mIoU"] = fmt(m["segmentation"]["mIoU"]) if "segmentation" in m else _missing(run, "segmentation")
    pr = probe_at(m.get("position_probe"))
    if pr is not None:
        out[f"pos. probe top-1 @{PROBE_RATIO:g}"] = f"{100 * pr['top1']:.1f} (chance {100 * pr['chance']:.1f})"
        out[f"pos. probe within-1 @{PROBE_RATIO:g}"] = fmt(100 * pr["within1"])
    else:
        out[f"pos. probe top-1 @{PROBE_RATIO:g}"] = out[f"pos. probe within-1 @{PROBE_RATIO:g}"] = _missing(
            run, "position_probe"
        )
    return out


def _backbone_text(size: str | None, arch: str | None) -> str:
    if size is None:
        return arch or "?"
    parts = (arch or "").split("_")
    patch = next((p[5:] for p in parts if p.startswith("patch")), "")
    img = parts[-1] if parts and parts[-1].isdigit() else ""
    return f"ViT-{SIZE_NAMES[size]}" + (f"/{patch}" if patch else "") + (f" @{img}px" if img else "")


# --------------------------------------------------------------------------- tables
RESULT_COLUMNS = [
    "source",
    "method",
    "backbone",
    "PT epochs",
    "PT cost",
    "PT final loss",
    "FT top-1",
    "LP top-1",
    "COCO AP box",
    "COCO AP mask",
    "ADE mIoU",
    f"pos. probe top-1 @{PROBE_RATIO:g}",
    f"pos. probe within-1 @{PROBE_RATIO:g}",
]


def _transfer_cell(value: float | None, key: str, gains: dict[str, float]) -> str:
    """A paper's transfer number, or the gain over MAE it states instead."""
    if value is not None:
        return fmt(value)
    return f"MAE +{gains[key]:g}" if key in gains else "—"


def results_table(runs: list[RunResults], include_paper: bool = True) -> tuple[list[str], list[list[str]]]:
    """One row per run (cost beside it), then the papers' rows."""
    rows = []
    for run in runs:
        v = run_values(run)
        rows.append(
            ["this run: " + run.name, run.label, _backbone_text(run.size, run.arch)]
            + [v[c] for c in RESULT_COLUMNS[3:]]
        )
    if include_paper:
        for p in PAPER_ROWS:
            gains = GAINS_OVER_MAE.get(p.method, {}) if p.variant.endswith("(transfer)") else {}
            rows.append(
                [
                    f"paper: {p.source}",
                    p.variant,
                    p.arch,
                    fmt(p.epochs, 0) if p.epochs else "n/s",
                    "—",
                    "—",
                    fmt(p.finetune_top1),
                    "—",
                    _transfer_cell(p.coco_box_ap, "coco_box_ap", gains),
                    _transfer_cell(p.coco_mask_ap, "coco_mask_ap", gains),
                    _transfer_cell(p.ade_miou, "ade_miou", gains),
                    "—",
                    "—",
                ]
            )
    return RESULT_COLUMNS, rows


SIDE_ROWS = RESULT_COLUMNS[3:]  # the measures, without source / method / backbone


def _paper_cell(method: str, size: str, row: str) -> str:
    """A method's headline paper number for a table row (same size, else ViT-B)."""
    ref = headline(method, size) or headline(method, "base")
    if ref is None:
        return "—"
    base = [p for p in PAPER_ROWS if p.method == method and p.size == ref.size]
    if row == "PT epochs":
        return fmt(ref.epochs, 0) if ref.epochs else "n/s"
    if row == "FT top-1":
        return fmt(ref.finetune_top1)
    key = {"COCO AP box": "coco_box_ap", "COCO AP mask": "coco_mask_ap", "ADE mIoU": "ade_miou"}.get(row)
    if key is None:
        return "—"
    vals = [getattr(p, key) for p in base if getattr(p, key) is not None and "ViTDet" not in p.variant]
    if vals:
        return fmt(vals[0])
    gains = GAINS_OVER_MAE.get(method, {})
    return f"MAE +{gains[key]:g}" if key in gains and ref.size == "base" else "—"


def side_by_side_table(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """Rows = measures; columns = this suite's runs (DropPos, MAE, AdPE ...) then each method's paper numbers."""
    names = [r.label if sum(x.method == r.method for x in runs) == 1 else f"{r.label} ({r.name})" for r in runs]
    size = next((r.size for r in runs if r.size), "base")
    paper_methods = [m for m in METHOD_ORDER if any(r.method == m for r in runs)] or list(METHOD_ORDER)
    paper_heads = []
    for m in paper_methods:
        ref = headline(m, size) or headline(m, "base")
        paper_heads.append(f"{METHOD_NAMES[m]} paper ({ref.arch})" if ref else f"{METHOD_NAMES[m]} paper")
    values = [run_values(r) for r in runs]
    header = ["measure"] + [f"{n} (this run)" for n in names] + paper_heads
    rows = [[row] + [v[row] for v in values] + [_paper_cell(m, size, row) for m in paper_methods] for row in SIDE_ROWS]
    return header, rows


def probe_table(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """Top-1 / within-one-cell position accuracy (%) per drop ratio and run."""
    ratios = sorted({r["drop_ratio"] for run in runs for r in run.metrics.get("position_probe", {}).get("results", [])})
    header = ["run", "grid", "replacement"] + [f"drop {x:g}: top-1 / within-1" for x in ratios] + ["chance top-1"]
    rows = []
    for run in runs:
        m = run.metrics.get("position_probe")
        if not m:
            continue
        by = {r["drop_ratio"]: r for r in m["results"]}
        grid = "x".join(str(g) for g in m.get("grid", [])) or "?"
        rows.append(
            [run.label, grid, str(m.get("replacement", "?"))]
            + [f"{100 * by[x]['top1']:.1f} / {100 * by[x]['within1']:.1f}" if x in by else "—" for x in ratios]
            + [f"{100 * m['results'][0]['chance']:.1f}"]
        )
    return header, rows


def stages_table(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """Per run and stage: done / skipped / failed and the wall time (from stage_status.json)."""
    header = ["run"] + list(STAGES)
    rows = []
    for run in runs:
        cells = []
        for stage in STAGES:
            st = run.status.get(stage, {})
            state = st.get("status") or ("done" if stage in run.metrics else "—")
            secs = st.get("wall_seconds")
            reason = f": {st['reason']}" if st.get("reason") and state != "done" else ""
            cells.append(f"{state}{reason}" + (f" ({secs / 60:.1f} min)" if isinstance(secs, (int, float)) else ""))
        rows.append([run.label] + cells)
    return header, rows


def paper_table() -> tuple[list[str], list[list[str]]]:
    """Every result the papers report (``analysis.paper_numbers``), one row each."""
    header = [
        "method",
        "variant",
        "backbone",
        "PT epochs",
        "FT top-1",
        "COCO AP box",
        "COCO AP mask",
        "ADE mIoU",
        "source",
        "note",
    ]
    rows = [
        [
            METHOD_NAMES[p.method],
            p.variant,
            p.arch,
            fmt(p.epochs, 0) if p.epochs else "n/s",
            fmt(p.finetune_top1),
            fmt(p.coco_box_ap),
            fmt(p.coco_mask_ap),
            fmt(p.ade_miou),
            p.source,
            p.note,
        ]
        for p in PAPER_ROWS
    ]
    return header, rows


# --------------------------------------------------------------------------- output
def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table ('|' in cells escaped)."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(header: list[str], rows: list[list[str]], path: Path) -> Path:
    """The table as a CSV file (header row first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def build_tables(run_dirs: list[str | Path], out: str | Path, stages: bool = True) -> tuple[str, list[RunResults]]:
    """Collect the runs, write the CSV files and return the Markdown (also written to tables.md).

    ``stages=False`` leaves the per-stage status table out of the Markdown (the CSV is still written).
    """
    out = Path(out)
    runs = collect_runs(run_dirs)
    parts = []
    sections = [
        (
            "Side by side (this suite's runs next to each paper's headline numbers)",
            side_by_side_table(runs),
            "side_by_side.csv",
        ),
        ("All results, pretraining cost beside each row", results_table(runs), "results.csv"),
        (
            "Position-prediction probe (top-1 / within one cell, % of held-out tokens)",
            probe_table(runs),
            "position_probe.csv",
        ),
        ("Stages", stages_table(runs), "stages.csv"),
        ("Reported in the papers", paper_table(), "paper_numbers.csv"),
    ]
    for title, (header, rows), csv_name in sections:
        write_csv(header, rows, out / csv_name)
        if csv_name == "stages.csv" and not stages:
            continue
        parts.append(f"### {title}\n\n" + (to_markdown(header, rows) if rows else "(no results)"))
    notes = [w for r in runs for w in r.warnings]
    legend = (
        "FT = fine-tuning, LP = linear probe (top-1 %); COCO AP (Mask R-CNN) and ADE20K mIoU in %; "
        "PT cost = pretraining wall time (GPU hours: wall x GPUs; min (CPU): wall minutes on a CPU run); "
        "n/s = not stated; "
        "'MAE +x' = stated only as a gain over MAE ViT-B; skipped / failed: see the Stages table."
    )
    md = "\n\n".join(parts) + "\n\n" + legend + "\n"
    if notes:
        md += "\nNotes:\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(md)
    return md, runs


def main(argv: list[str] | None = None) -> int:
    """Build the tables of the given run folders; 1 with the file and the problem if one is malformed."""
    p = argparse.ArgumentParser("comparison tables from metrics JSON files")
    p.add_argument("run_dirs", nargs="+", help="one folder per pretraining run (its evaluations below it)")
    p.add_argument("--out", default="report", help="output folder for tables.md and the CSV files")
    args = p.parse_args(argv)

    def tables() -> str:
        md, _ = build_tables(args.run_dirs, args.out)
        return md + f"\n[tables] wrote {Path(args.out) / 'tables.md'} and CSV files"

    return run_command(tables, errors=(MetricsError,))


if __name__ == "__main__":
    sys.exit(main())
