"""The robustness picture: a fine-tuned classifier's top-1 against corruption severity and against the share
of patch tokens dropped (and the patch-shuffle block count), one colour per initialisation.

Reads ``robustness_metrics.json`` files (``classification.robustness``): severity 0 / drop 0 /
1 block is the clean val pass the perturbed rows were measured on; a corruption point is the
mean top-1 over the corruptions measured at that severity. With several seeds of one
initialisation the line is their mean and the bars their standard deviation.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.ticker import FuncFormatter

from ..layout import METRICS
from .canvas import plt, save_figure

FIGSIZE = (15.0, 4.6)


def read_robustness(path: str | Path) -> dict:
    """One robustness_metrics.json (path or its folder), checked as the tables check it."""
    from ..tables.metrics_schema import load_metrics_file

    path = Path(path)
    return load_metrics_file(path / METRICS["robustness"] if path.is_dir() else path)


def _clean(m: dict) -> float | None:
    rows = ((m["sets"].get("position") or {}).get("rows") or {})
    if "clean" in rows:
        return rows["clean"]["top1"]
    return (m.get("clean") or {}).get("top1")


def severity_curve(m: dict) -> dict[float, float]:
    """{severity: mean top-1 over the corruptions measured there}, severity 0 = clean."""
    c = m["sets"].get("c") or {}
    by: dict[int, list[float]] = {}
    for per in (c.get("top1") or {}).values():
        for sev, top1 in per.items():
            by.setdefault(int(sev), []).append(top1)
    curve = {float(s): sum(v) / len(v) for s, v in sorted(by.items())}
    clean = (m.get("clean") or {}).get("top1")
    return {0.0: clean, **curve} if curve and clean is not None else curve


def position_curve(m: dict, kind: str) -> dict[float, float]:
    """{drop ratio or blocks per side: top-1} of the position rows of one kind; 0 dropped / 1 block = clean."""
    rows = ((m["sets"].get("position") or {}).get("rows") or {})
    curve = {float(r["value"]): r["top1"] for r in rows.values() if r.get("kind") == kind and r.get("value") is not None}
    clean = _clean(m)
    if curve and clean is not None:
        curve[0.0 if kind == "drop" else 1.0] = clean
    return dict(sorted(curve.items()))


def _pooled(curves: Sequence[dict[float, float]]) -> tuple[list[float], list[float], list[float]]:
    xs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    means = [statistics.fmean(c[x] for c in curves) for x in xs]
    stds = [statistics.stdev([c[x] for c in curves]) if len(curves) > 1 else 0.0 for x in xs]
    return xs, means, stds


def plot_robustness(sources: Mapping[str, Sequence[str | Path]], path: str | Path) -> Path:
    """One line per initialisation (its seeds pooled) in three panels; ValueError when nothing can be drawn."""
    data = {name: [read_robustness(p) for p in files] for name, files in sources.items() if files}
    if not data:
        raise ValueError("no robustness_metrics.json to draw")
    fig, axes = plt.subplots(1, 3, figsize=FIGSIZE, dpi=100)
    panels = [
        (axes[0], lambda m: severity_curve(m), "corruption severity (0 = clean)", "corrupted val: mean over corruptions"),
        (axes[1], lambda m: position_curve(m, "drop"), "share of patch tokens removed", "tokens dropped (positions kept)"),
        (axes[2], lambda m: position_curve(m, "shuffle"), "blocks per side (1 = clean)", "patch blocks shuffled"),
    ]
    drawn = 0
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, curve, xlabel, title in panels:
        for i, (name, metrics) in enumerate(data.items()):
            xs, means, stds = _pooled([c for c in (curve(m) for m in metrics) if c])
            if not xs:
                continue
            n = len(metrics)
            ax.errorbar(xs, means, yerr=stds if n > 1 else None, fmt="-o", ms=4, capsize=3,
                        color=colours[i % len(colours)], label=f"{name} (n={n})")
            drawn += 1
        if ax is axes[2]:
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("top-1 (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="best")
    if not drawn:
        plt.close(fig)
        raise ValueError("the robustness metrics hold neither corruption nor position rows")
    fig.suptitle("Robustness of the fine-tuned classifiers (same images and draws for every initialisation)")
    fig.tight_layout()
    return save_figure(fig, path)
