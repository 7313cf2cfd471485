"""Comparison tables: metrics JSON files of several runs -> Markdown and CSV, next to the papers' numbers.

    python -m analysis.tables outputs/demo/droppos outputs/demo/mae outputs/demo/adpe outputs/demo/scratch \
        --out outputs/demo/report

A RUN_DIR is one initialisation's folder: its pretraining run and evaluations, and the
run folders of its other seeds below it (``seed<k>/``, ``pretrain_seed<j>/``, see
``analysis.stages``); every metrics file is collected (``pretrain_metrics.json``,
``classification_metrics.json`` (finetune, linear_probe or attentive_probe),
``knn_metrics.json``, ``detection_metrics.json``, ``segmentation_metrics.json``,
``position_probe_metrics.json``). Files are read strictly on the keys the tables need (a
malformed file stops with its path and what is wrong) and tolerantly on everything else
(``analysis.metrics_schema``, ``analysis.runs``). Each row pools one initialisation's seeds
(``analysis.seed_rows``): mean ± standard deviation with n, the protocol (recipe file,
epochs or iterations, image size, seeds) beside it; a row mixing protocols stops.
Differences to scratch and to MAE get Welch's t 95 % interval and a verdict
(``analysis.stats``).

Outputs in ``--out``: ``tables.md`` and ``side_by_side.csv``, ``comparison.csv`` (the
differences and protocols), ``pretraining.csv``, ``results.csv`` (one row per run folder,
every seed), ``per_seed.csv`` (one value per line), ``position_probe.csv``, ``stages.csv``,
``paper_numbers.csv`` and ``pictures/comparison.png`` (``analysis.comparison_picture``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from ..cli import run_command
from ..layout import SCRATCH, STAGES
from .metrics_schema import MetricsError
from .paper_numbers import (
    GAINS_OVER_MAE,
    MEASURE_NAMES,
    METHOD_NAMES,
    METHOD_ORDER,
    PAPER_ROWS,
    headline,
    reference_number,
)
from .provenance import HEADER as PROVENANCE_HEADER
from .provenance import provenance_cells, provenance_records, provenance_table, same_weights
from .runs import RunResults, arch_label, collect_runs, run_name
from .seed_rows import MEASURES, PRETRAIN_LOSS, SeedRow, build_rows, per_seed_rows, probe_at, shown_measures
from .stats import TEST_NAME, Summary, difference_cell, value_cell, welch

COMPARISON_PICTURE = "pictures/comparison.png"


# --------------------------------------------------------------------------- cells
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


def paper_value(value: float) -> str:
    """A paper's number as the paper gives it: one decimal, two where it states two (83.57)."""
    return f"{value:.2f}" if round(value, 1) != value else f"{value:.1f}"


def row_cell(row: SeedRow | None) -> str:
    """'71.0 ± 0.3 (n=3)', '71.0 (n=1)', with the runs that gave no value; else why there is none."""
    if row is None:
        return "—"
    s = row.summary
    if s is None:
        reasons = sorted({why for _, why in row.missing})
        return "/".join(reasons) if reasons else "—"
    cell = value_cell(s, row.measure.digits, row.planned)
    return cell + (f"; {len(row.missing)} run(s) without a value" if row.missing else "")


def _backbone_text(size: str | None, arch: str | None) -> str:
    if size is None:
        return arch or "?"
    parts = (arch or "").split("_")
    patch = next((p[5:] for p in parts if p.startswith("patch")), "")
    img = parts[-1] if parts and parts[-1].isdigit() else ""
    return arch_label(size, patch, img, px="px")


def _inits(runs: list[RunResults]) -> list[str]:
    return list(dict.fromkeys(r.method for r in runs))


def _size(runs: list[RunResults]) -> str | None:
    return next((r.size for r in runs if r.size), None)


# --------------------------------------------------------------------------- this suite
def _paper_cell(method: str, size: str, key: str | None) -> str:
    """A method's paper number for a measure (same size, else ViT-B), with its protocol."""
    if key is None or method == SCRATCH:
        return "—"
    ref = None
    for sz in (size, "base"):
        head = headline(method, sz)
        if ref is None:
            ref = head if head is not None and getattr(head, key) is not None else reference_number(method, sz, key)
    if ref is None:
        gains = GAINS_OVER_MAE.get(method, {})
        return f"MAE +{gains[key]:g}" if key in gains else "—"
    value = paper_value(getattr(ref, key))
    proto = ref.protocols.get(key, "")
    return f"{value} ({proto})" if proto and not key.endswith("top1") else value


def side_by_side_table(
    runs: list[RunResults], rows: dict, records: dict[str, dict[str, Any]] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Rows = measures; columns = the initialisations (DropPos, MAE, AdPE, scratch), then the papers' numbers
    (``records``: the runs' provenance, :func:`provenance_records`, read here when not given)."""
    records = provenance_records(runs) if records is None else records
    inits = _inits(runs)
    size = _size(runs) or "base"
    methods = [m for m in METHOD_ORDER if m != SCRATCH]
    paper_methods = [m for m in methods if m in inits] or methods
    heads = []
    for m in paper_methods:
        ref = headline(m, size) or headline(m, "base")
        heads.append(f"{METHOD_NAMES[m]} paper ({ref.arch})" if ref else f"{METHOD_NAMES[m]} paper")
    files = {r.method: Path(rec["source"]).name for r in runs for rec in [records[run_name(r)]]
             if rec.get("kind") == "file"}
    header = ["measure"] + [f"{i} (weights: {files[i]})" if i in files else f"{METHOD_NAMES.get(i, i)} (this suite)"
                            for i in inits] + heads
    out = []
    for measure in (PRETRAIN_LOSS, *shown_measures(rows)):
        out.append(
            [measure.label]
            + [row_cell(rows.get((i, measure.label))) for i in inits]
            + [_paper_cell(m, size, measure.paper_key) for m in paper_methods]
        )
    return header, out


def _difference(row: SeedRow, ref: SeedRow | None) -> str:
    """``row - ref`` with Welch's interval and verdict; no verdict across different budgets or image sizes."""
    if ref is None or row is ref:
        return "reference" if row is ref else "—"
    a, b = row.summary, ref.summary
    if a is None or b is None or row.protocol is None or ref.protocol is None:
        return "—"
    pairs = zip(row.protocol[1:], ref.protocol[1:])  # budget and image size
    differ = [f"{x} vs {y}" for x, y in pairs if x != y and "not recorded" not in x + y]
    if differ:
        return f"not compared: protocols differ ({'; '.join(differ)})"
    return difference_cell(welch(a, b), row.measure.digits)


def _versus_paper(row: SeedRow, size: str | None) -> str:
    """The run's mean against the paper's number of the same backbone size, with the published spread if any."""
    key = row.measure.paper_key
    s = row.summary
    if key is None or s is None or size is None or row.init == SCRATCH:
        return "—"
    ref = reference_number(row.init, size, key)
    if ref is None:
        return "—"
    value = getattr(ref, key)
    spread = ref.spreads.get(key)
    head = f"{paper_value(value)} ({ref.source}): "
    if spread is None:
        return head + f"{s.mean - value:+.{row.measure.digits}f} (no published spread, no verdict)"
    std, n, where = spread
    paper = Summary(value, std, n or 1, df=None if n else float("inf"))
    return head + difference_cell(welch(s, paper), row.measure.digits) + f" (spread: {where})"


def check_reference(reference: str, runs: list[RunResults]) -> None:
    """A ``reference`` other than the default MAE must be one of the initialisations (MetricsError otherwise)."""
    inits = _inits(runs)
    if reference != "mae" and reference not in inits:
        raise MetricsError(f"--reference {reference}: no such initialisation (found: {', '.join(inits)})")


def comparison_table(runs: list[RunResults], rows: dict, reference: str = "mae") -> tuple[list[str], list[list[str]]]:
    """Per task and initialisation: mean ± std (n), the differences to scratch and to ``reference`` (default
    MAE), the paper, the protocol."""
    inits = _inits(runs)
    size = _size(runs)
    header = [
        "measure",
        "initialisation",
        "mean ± std (n)",
        "vs scratch",
        f"vs {METHOD_NAMES.get(reference, reference)}",
        "vs paper (same backbone)",
        "protocol (recipe; budget; image size; seeds)",
    ]
    out = []
    for measure in shown_measures(rows):
        scratch, mae = rows.get((SCRATCH, measure.label)), rows.get((reference, measure.label))
        for init in inits:
            row = rows[(init, measure.label)]
            out.append(
                [
                    measure.label,
                    METHOD_NAMES.get(init, init),
                    row_cell(row),
                    _difference(row, scratch),
                    _difference(row, mae),
                    _versus_paper(row, size),
                    row.protocol_text(),
                ]
            )
    return header, out


def pretraining_table(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """Per pretraining run: backbone, epochs, cost, final loss, recipe (pooled over seeds: the side-by-side table)."""
    header = ["run", "backbone", "PT epochs", "PT cost", "PT final loss", "recipe"]
    out = []
    for run in runs:
        if "pretrain" not in run.metrics:
            continue
        recipe = run.protocol.get("stages", {}).get("pretrain", {}).get("recipe", "recipe not recorded")
        out.append(
            [
                run_name(run),
                _backbone_text(run.size, run.arch),
                fmt(run.epochs, 0),
                cost_text(run.cost),
                fmt(run.final.get("loss"), 4),
                recipe,
            ]
        )
    return header, out


def results_table(
    runs: list[RunResults], records: dict[str, dict[str, Any]] | None = None
) -> tuple[list[str], list[list[str]]]:
    """One row per run folder (every seed), its own values: the per-run CSV (``records``: the runs' provenance,
    read here when not given)."""
    header = ["run", "initialisation", "backbone", "seed"] + [m.label for m in (PRETRAIN_LOSS, *MEASURES)]
    header += PROVENANCE_HEADER
    records = provenance_records(runs) if records is None else records
    same = same_weights(runs, records)
    out = []
    for run in runs:
        seeds = sorted({s for s in (run.seed(st) for st in run.metrics if st != "pretrain") if s is not None})
        values = []
        for m in (PRETRAIN_LOSS, *MEASURES):
            got = m.read(run.metrics[m.stage]) if m.stage in run.metrics else None
            values.append(fmt(got, m.digits))
        out.append(
            [run_name(run), METHOD_NAMES.get(run.method, run.method), _backbone_text(run.size, run.arch)]
            + [",".join(map(str, seeds)) or "n/s"]
            + values
            + provenance_cells(records[run_name(run)], same[run_name(run)])
        )
    return header, out


def probe_table(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """Top-1 / within-one-cell position accuracy (%) per drop ratio and run folder."""
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
            [run_name(run), grid, str(m.get("replacement", "?"))]
            + [f"{100 * by[x]['top1']:.1f} / {100 * by[x]['within1']:.1f}" if x in by else "—" for x in ratios]
            + [f"{100 * probe_at(m)['chance']:.1f}"]
        )
    return header, rows


def finetuned_probe_table(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """The paper's §4.3: position-probe accuracy of each pretrained encoder beside its fine-tuned copies."""
    from .finetuned_table import rows_table

    header, rows = [], []
    for run in runs:
        m = run.metrics.get("finetuned_probe")
        if not m:
            continue
        head, table = rows_table(m)
        header = ["run", *head]
        rows += [[run_name(run), *cells] for cells in table]
    return header, rows


def stages_table(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """Per run folder and stage: done / skipped / failed and the wall time (from stage_status.json)."""
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
        rows.append([run_name(run)] + cells)
    return header, rows


# --------------------------------------------------------------------------- the papers
def paper_table() -> tuple[list[str], list[list[str]]]:
    """Every number the papers report (``analysis.paper_numbers``), one per row, with source and protocol."""
    header = ["method", "variant", "backbone", "PT epochs", "task", "value", "published spread", "protocol", "source"]
    header.append("note")
    rows = []
    for p in PAPER_ROWS:
        values = p.values() or {k: None for k in GAINS_OVER_MAE.get(p.method, {})}
        for key, value in values.items():
            spread = p.spreads.get(key)
            gain = GAINS_OVER_MAE.get(p.method, {}).get(key)
            rows.append(
                [
                    METHOD_NAMES[p.method],
                    p.variant,
                    p.arch,
                    fmt(p.epochs, 0) if p.epochs else "n/s",
                    MEASURE_NAMES[key],
                    paper_value(value) if value is not None else f"MAE +{gain:g}",
                    f"± {spread[0]:g} ({spread[2]})" if spread else "—",
                    p.protocols.get(key, "as stated in the source"),
                    p.source,
                    p.note,
                ]
            )
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


LEGEND = (
    "FT = fine-tuning, LP = linear probe, k-NN = weighted k-NN (top-1 %); COCO AP (Mask R-CNN) and ADE20K mIoU "
    "in %; scratch = the same transfer recipe and seeds from a random initialisation. Cells: mean ± standard "
    "deviation over seeds (n = runs that gave a value; 'of N planned' when seeds are missing). "
    f"Differences ('vs scratch', 'vs MAE', 'vs paper'): {TEST_NAME} on the difference of the means, "
    "'beyond noise' when the interval excludes zero; with one seed on a side: 'one seed, no noise estimate'. "
    "Paper numbers: see 'Reported in the papers' for each number's source and protocol; "
    "n/s = not stated; 'MAE +x' = stated only as a gain over MAE ViT-B; skipped / failed: see the Stages table. "
    "Per-seed values: results.csv and per_seed.csv."
)


def build_tables(
    run_dirs: list[str | Path], out: str | Path, stages: bool = True, reference: str = "mae"
) -> tuple[str, list[RunResults]]:
    """Collect the runs, write the CSV files and the comparison picture; return the Markdown (also tables.md).

    ``stages=False`` leaves the per-stage status table out of the Markdown (the CSV is still written);
    ``reference``: the initialisation the comparison's "vs" column compares against (default MAE).
    """
    out = Path(out)
    runs = collect_runs(run_dirs)
    check_reference(reference, runs)
    rows = build_rows(runs)
    records = provenance_records(runs)  # read once (init.json, protocol.json, load reports) for three tables
    sections = [
        (
            "Side by side (each initialisation's seeds pooled, each paper's numbers beside)",
            side_by_side_table(runs, rows, records),
            "side_by_side.csv",
        ),
        (
            "Comparison by task: differences, noise verdicts, protocols",
            comparison_table(runs, rows, reference),
            "comparison.csv",
        ),
        ("Initialisations: where each row's weights came from", provenance_table(runs, records=records), "provenance.csv"),
        ("Pretraining runs", pretraining_table(runs), "pretraining.csv"),
        (
            "Position-prediction probe (top-1 / within one cell, % of held-out tokens)",
            probe_table(runs),
            "position_probe.csv",
        ),
        (
            "Position awareness of pretrained vs fine-tuned backbones (DropPos §4.3; position probe, % of tokens)",
            finetuned_probe_table(runs),
            "finetuned_probe.csv",
        ),
        ("Stages", stages_table(runs), "stages.csv"),
        ("Reported in the papers", paper_table(), "paper_numbers.csv"),
    ]
    parts = []
    for title, (header, table), csv_name in sections:
        write_csv(header, table, out / csv_name)
        if csv_name == "stages.csv" and not stages:
            continue
        parts.append(f"### {title}\n\n" + (to_markdown(header, table) if table else "(no results)"))
    write_csv(*results_table(runs, records), out / "results.csv")
    write_csv(*per_seed_rows(rows), out / "per_seed.csv")
    md = "\n\n".join(parts) + "\n\n" + LEGEND + "\n"
    try:
        from ..pictures.comparison import plot_comparison

        plot_comparison(rows, out / COMPARISON_PICTURE)
    except Exception as exc:  # a picture must never sink the tables
        md += f"\nComparison picture not made: {type(exc).__name__}: {exc}\n"
    notes = [w for r in runs for w in r.warnings]
    if notes:
        md += "\nNotes:\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables.md").write_text(md)
    return md, runs


def main(argv: list[str] | None = None) -> int:
    """Build the tables of the given run folders; 1 with the file and the problem if one is malformed."""
    p = argparse.ArgumentParser("comparison tables from metrics JSON files")
    p.add_argument("run_dirs", nargs="+", help="one folder per initialisation (its seeds' folders below it)")
    p.add_argument("--out", default="report", help="output folder for tables.md and the CSV files")
    p.add_argument("--reference", default="mae", help="the initialisation the 'vs' column compares against")
    args = p.parse_args(argv)

    def tables() -> str:
        md, _ = build_tables(args.run_dirs, args.out, reference=args.reference)
        return md + f"\n[tables] wrote {Path(args.out) / 'tables.md'} and CSV files"

    return run_command(tables, errors=(MetricsError,))


if __name__ == "__main__":
    sys.exit(main())
