"""The comparison picture of the report: per task, the initialisations side by side with their seed spread.

One panel per measure that has a value: each pretraining method's seeds as small dots, its
mean with a ±1 standard deviation bar (no bar with one seed), and the scratch baseline as a
dashed reference line with its ±1 standard deviation band. Rows come from
``analysis.seed_rows.build_rows``.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..layout import SCRATCH
from .canvas import plt, save_figure
from ..tables.paper_numbers import METHOD_NAMES
from ..tables.seed_rows import MEASURES, SeedRow


def plot_comparison(rows: dict[tuple[str, str], SeedRow], path: str | Path) -> Path:
    """Draw every measure with a value into one PNG at ``path``; ValueError when none has one."""
    panels = [m for m in MEASURES if any(r.values for (_, label), r in rows.items() if label == m.label)]
    if not panels:
        raise ValueError("no measure has a value: nothing to compare")
    inits = [i for i in dict.fromkeys(init for init, _ in rows) if i != SCRATCH]
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False, dpi=100)
    for ax, measure in zip(axes.flat, panels):
        for x, init in enumerate(inits):
            row = rows.get((init, measure.label))
            if row is None or not row.values:
                ax.text(x, 0.5, "no value", transform=ax.get_xaxis_transform(), ha="center", fontsize=8, color="grey")
                continue
            values = [v for _, v in row.values]
            jitter = [x + 0.08 * (i - (len(values) - 1) / 2) for i in range(len(values))]
            ax.scatter(jitter, values, s=10, color="grey", zorder=2)
            s = row.summary
            ax.errorbar([x], [s.mean], yerr=[s.std] if s.std is not None else None, fmt="o", ms=7, capsize=5, zorder=3)
        base = rows.get((SCRATCH, measure.label))
        if base is not None and base.values:
            s = base.summary
            ax.axhline(s.mean, ls="--", color="black", lw=1, label=f"scratch (n={s.n})")
            if s.std is not None:
                ax.axhspan(s.mean - s.std, s.mean + s.std, color="black", alpha=0.08)
            ax.legend(fontsize=7, loc="best")
        ax.set_xticks(range(len(inits)))
        ax.set_xticklabels([METHOD_NAMES.get(i, i) for i in inits])
        ax.set_xlim(-0.6, len(inits) - 0.4)
        ax.set_title(measure.label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle("Initialisations per task: seeds (dots), mean ± 1 std; scratch: dashed line ± 1 std")
    fig.tight_layout()
    return save_figure(fig, path)
