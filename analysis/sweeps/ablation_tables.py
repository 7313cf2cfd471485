"""The tables of a DropPos ablation sweep: one per axis, one of every point, the rank correlations.

    python -m analysis.sweeps.ablation_tables outputs/ablation

Reads ``<out>/ablation_plan.json`` (``analysis.ablation``) and each point's run folders
(``<out>/<point>/droppos``, seed folders below it). Each point's seeds are pooled as in the
comparison tables (``analysis.seed_rows``: mean ± std with n, one protocol per row), the
pretext measure is the position accuracy at the end of pretraining (``final.pos_acc`` of
``pretrain_metrics.json``). Per axis: the points that change that key alone, the recipe's
value marked, and each value's difference to the recipe by Welch's t interval with its
verdict (``analysis.stats``). Writes ``<out>/ablation.md`` and, in ``<out>/report/``,
``ablation_<key>.csv``, ``ablation_points.csv``, ``ablation_correlation.csv`` and
``pictures/ablation_correlation.png`` (``analysis.ablation_picture``) and
``pictures/ablation_monitor_curves.png`` (every point's pretext and online-monitor curves).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .ablation import GRID_SOURCE, METHOD, RECIPE, read_plan
from ..pictures.ablation import Pair, correlate, plot_correlation
from ..pictures.monitor_curves import plot_run_curves, pretrained_runs
from ..cli import run_command
from ..tables.metrics_schema import MetricsError
from ..tables.runs import collect_runs
from ..tables.seed_rows import MEASURES, Measure, SeedRow, build_rows
from ..tables.stats import TEST_NAME
from ..tables.comparison import _difference, row_cell, to_markdown, write_csv


def _pos_acc(m: dict) -> float | None:
    value = (m.get("final") or {}).get("pos_acc")
    return 100.0 * value if isinstance(value, (int, float)) and math.isfinite(value) else None


PRETEXT = Measure("PT pos. acc (pretext, %)", "pretrain", _pos_acc)
PICTURE = "pictures/ablation_correlation.png"
CURVES = "pictures/ablation_monitor_curves.png"  # pretext and monitor curves of every point


@dataclass
class PointRows:
    """One point of the sweep: the keys it changes and its rows (measure label -> seeds pooled)."""

    name: str
    settings: dict[str, str]
    rows: dict[str, SeedRow] = field(default_factory=dict)

    def pairs(self, label: str) -> list[Pair]:
        """(pretext accuracy, the measure's mean over transfer seeds) per pretraining run of this point."""
        pretext, measure = self.rows.get(PRETEXT.label), self.rows.get(label)
        if pretext is None or measure is None:
            return []
        by_run: dict[int, list[float]] = {}
        for run, value in measure.values:
            by_run.setdefault(run.pretrain_seed or 0, []).append(value)
        return [
            Pair(self.name, x, sum(by_run[j]) / len(by_run[j]), self.name == RECIPE)
            for run, x in pretext.values
            if (j := run.pretrain_seed or 0) in by_run
        ]


def collect_points(out: Path, plan: dict) -> list[PointRows]:
    """Every point of the plan that has a run folder, its seeds pooled per measure (the recipe first)."""
    names = sorted(plan["points"], key=lambda n: n != RECIPE)
    points = []
    for name in names:
        folder = out / name / METHOD
        if not folder.is_dir():
            continue
        rows = build_rows(collect_runs([folder]), (PRETEXT, *MEASURES))
        points.append(PointRows(name, plan["points"][name], {label: row for (_, label), row in rows.items()}))
    return points


def shown_measures(points: list[PointRows]) -> list[Measure]:
    """The transfer measures some point has a value of (in the comparison tables' order)."""
    return [m for m in MEASURES if any(p.rows.get(m.label) and p.rows[m.label].values for p in points)]


def _sort_key(text: str) -> tuple[int, float | str]:
    try:
        return 0, float(text)
    except ValueError:
        return 1, text


def axis_table(key: str, plan: dict, points: list[PointRows], measures: list[Measure]) -> tuple[list, list]:
    """One axis: per value its pretext accuracy and each transfer measure (mean ± std (n)), the recipe marked."""
    recipe_value = plan["recipe"][key]
    on_axis = {p.settings.get(key, recipe_value): p for p in points if set(p.settings) <= {key}}
    header = [key, PRETEXT.label] + [m.label for m in measures]
    rows = []
    for value in sorted(on_axis, key=_sort_key):
        p = on_axis[value]
        mark = f"{value} (recipe)" if value == recipe_value else value
        rows.append([mark, row_cell(p.rows.get(PRETEXT.label))] + [row_cell(p.rows.get(m.label)) for m in measures])
    return header, rows


def difference_table(key: str, plan: dict, points: list[PointRows], measures: list[Measure]) -> tuple[list, list]:
    """One axis: each value's difference to the recipe value, per measure, with Welch's interval and verdict."""
    recipe = next((p for p in points if p.name == RECIPE), None)
    header = [f"{key} vs {plan['recipe'][key]}"] + [m.label for m in (PRETEXT, *measures)]
    rows = []
    for p in sorted((p for p in points if set(p.settings) == {key}), key=lambda p: _sort_key(p.settings[key])):
        cells = []
        for m in (PRETEXT, *measures):
            row, ref = p.rows.get(m.label), recipe.rows.get(m.label) if recipe else None
            cells.append(_difference(row, ref) if row is not None and ref is not None else "—")
        rows.append([p.settings[key]] + cells)
    return header, rows


def points_table(plan: dict, points: list[PointRows], measures: list[Measure]) -> tuple[list, list]:
    """Every point (grid points included) with its value of every axis."""
    keys = list(plan["axes"])
    header = ["point"] + keys + [m.label for m in (PRETEXT, *measures)]
    rows = [
        [p.name]
        + [p.settings.get(k, plan["recipe"][k]) for k in keys]
        + [row_cell(p.rows.get(m.label)) for m in (PRETEXT, *measures)]
        for p in points
    ]
    return header, rows


def correlation_table(points: list[PointRows], measures: list[Measure]) -> tuple[list, list, dict[str, list[Pair]]]:
    """Per transfer measure: Spearman's rho between pretext accuracy and it over the pretraining runs."""
    panels = {m.label: [pair for p in points for pair in p.pairs(m.label)] for m in measures}
    header = ["transfer measure", "runs", "Spearman rho [bootstrap 95 % interval]"]
    rows = [[label, str(len(pairs)), correlate(pairs).text()] for label, pairs in panels.items()]
    return header, rows, panels


def build_ablation_tables(out: str | Path, pictures: bool = True) -> str:
    """Read the sweep below ``out``, write the CSV files (and the picture); return the Markdown."""
    out = Path(out)
    plan = read_plan(out)
    points = collect_points(out, plan)
    measures = shown_measures(points)
    report = out / "report"
    parts = [
        "# DropPos ablation sweep",
        "",
        f"Profile `{plan.get('profile', '?')}`; {len(points)} point(s) with results; the recipe's point (`{RECIPE}`) "
        "is every axis's reference row. Cells: mean ± standard deviation over seeds (n). Pretext: DropPos's own "
        f"position accuracy at the end of pretraining. Differences: {TEST_NAME}. Default grids: {GRID_SOURCE}.",
    ]
    for key in plan["axes"]:
        header, rows = axis_table(key, plan, points, measures)
        write_csv(header, rows, report / f"ablation_{key}.csv")
        parts += ["", f"## {key}", "", to_markdown(header, rows) if rows else "(no results)"]
        dh, drows = difference_table(key, plan, points, measures)
        if drows:
            parts += ["", f"Differences to the recipe value ({TEST_NAME}):", "", to_markdown(dh, drows)]
    header, rows = points_table(plan, points, measures)
    write_csv(header, rows, report / "ablation_points.csv")
    parts += ["", "## Every point", "", to_markdown(header, rows) if rows else "(no results)"]
    header, rows, panels = correlation_table(points, measures)
    write_csv(header, rows, report / "ablation_correlation.csv")
    parts += [
        "",
        "## Pretext position accuracy against transfer (one value per pretraining run)",
        "",
        to_markdown(header, rows) if rows else "(no transfer results)",
    ]
    if pictures:
        try:
            path = plot_correlation(panels, report / PICTURE)
            parts += ["", f"![pretext vs transfer]({path.relative_to(out)})"]
        except Exception as exc:  # a picture must never sink the tables
            parts += ["", f"Correlation picture not made: {type(exc).__name__}: {exc}"]
        runs = pretrained_runs([(p.name, out / p.name / METHOD) for p in points])
        try:
            if runs:
                path = plot_run_curves(runs, report / CURVES, title="Every point of the sweep, epoch by epoch")
                parts += ["", "## Pretraining curves of every point", "", f"![curves]({path.relative_to(out)})"]
        except Exception as exc:  # a picture must never sink the tables
            parts += ["", f"Curves picture not made: {type(exc).__name__}: {exc}"]
    return "\n".join(parts) + "\n"


def write_ablation_report(out: str | Path, no_pictures: bool = False) -> Path:
    """``<out>/ablation.md`` from the sweep's metrics files; a malformed file is named in it instead."""
    out = Path(out)
    try:
        md = build_ablation_tables(out, pictures=not no_pictures)
    except (MetricsError, ValueError) as exc:
        md = f"# DropPos ablation sweep\n\nTables not built: {exc}\n"
    path = out / "ablation.md"
    path.write_text(md)
    return path


def main(argv: list[str] | None = None) -> int:
    """Build the ablation tables of a sweep's output folder; 1 with the file and the problem if one is malformed."""
    p = argparse.ArgumentParser("DropPos ablation tables from a sweep's metrics files")
    p.add_argument("out", help="the sweep's output folder (holds ablation_plan.json)")
    p.add_argument("--no-pictures", action="store_true")
    args = p.parse_args(argv)

    def tables() -> str:
        md = build_ablation_tables(args.out, pictures=not args.no_pictures)
        (Path(args.out) / "ablation.md").write_text(md)
        return md + f"\n[ablation] wrote {Path(args.out) / 'ablation.md'} and CSV files in {Path(args.out) / 'report'}"

    return run_command(tables, errors=(MetricsError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
