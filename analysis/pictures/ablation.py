"""Pretext position accuracy against each transfer metric across a sweep's runs, with the rank correlation.

The DropPos paper's claim that position accuracy and transfer are "positively correlated but
not absolutely", measured: one dot per pretraining run of the sweep (x: its ``pos_acc`` at
the end of pretraining, y: the transfer metric, the mean over its transfer seeds), Spearman's
rank correlation rho (average ranks for ties, Pearson's r of the ranks) and a percentile
bootstrap interval over the runs (resampled with replacement, seeded) printed on each panel.
No SciPy: the ranks and the bootstrap are computed here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

BOOTSTRAP_RESAMPLES = 2000
LEVEL = 0.95
MIN_RUNS = 3  # fewer runs give no correlation worth printing (two points always rank +-1)
# With a handful of runs the resamples repeat the same few runs: a monotone set of 3 resamples
# to rho = +1 only, a [+1, +1] "interval". Below this many runs the text says so.
FEW_RUNS = 6


@dataclass(frozen=True)
class Pair:
    """One pretraining run: its point, pretext accuracy (x), transfer metric (y), whether it is the recipe's."""

    point: str
    x: float
    y: float
    recipe: bool = False


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho over n runs and its bootstrap interval (None where undefined)."""

    rho: float | None
    low: float | None
    high: float | None
    n: int
    resamples: int = 0

    def text(self) -> str:
        """'rho = +0.80 [-0.20, +1.00] (n=5 runs, bootstrap 95 %)' or why there is none."""
        if self.rho is None:
            why = f"fewer than {MIN_RUNS} runs" if self.n < MIN_RUNS else "a constant variable"
            return f"rho undefined ({why}; n={self.n})"
        if self.low is None or self.high is None:
            return f"rho = {self.rho:+.2f} (n={self.n} runs, no bootstrap interval)"
        few = f"; under {FEW_RUNS} runs the interval understates the uncertainty" if self.n < FEW_RUNS else ""
        return (
            f"rho = {self.rho:+.2f} [{self.low:+.2f}, {self.high:+.2f}] "
            f"(n={self.n} runs, bootstrap {100 * LEVEL:.0f} %, {self.resamples} resamples{few})"
        )


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, tied values sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of paired values (None with fewer than 2 pairs or a constant side)."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs pairs, got {len(x)} and {len(y)} values")
    if len(x) < 2:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation percentile of sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def correlate(pairs: Sequence[Pair], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Correlation:
    """Spearman's rho of the runs and its percentile bootstrap interval (runs resampled with replacement)."""
    x, y = [p.x for p in pairs], [p.y for p in pairs]
    n = len(pairs)
    rho = spearman(x, y) if n >= MIN_RUNS else None
    if rho is None:
        return Correlation(None, None, None, n)
    rng = random.Random(seed)
    draws = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        r = spearman([x[i] for i in idx], [y[i] for i in idx])
        if r is not None:  # a resample of one repeated run has no ranks to correlate
            draws.append(r)
    if len(draws) < resamples // 2:
        return Correlation(rho, None, None, n, len(draws))
    draws.sort()
    tail = (1.0 - LEVEL) / 2.0
    return Correlation(rho, _percentile(draws, tail), _percentile(draws, 1.0 - tail), n, len(draws))


def plot_correlation(
    panels: dict[str, list[Pair]], path: str | Path, pretext_label: str = "pretext position accuracy (%)"
) -> Path:
    """One panel per transfer metric (label -> its runs' pairs): dots labelled by point, rho on the panel."""
    from .canvas import plt, save_figure

    shown = {label: pairs for label, pairs in panels.items() if pairs}
    if not shown:
        raise ValueError("no run has both a pretext accuracy and a transfer metric: nothing to correlate")
    cols = min(3, len(shown))
    nrows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 4.4 * nrows), squeeze=False, dpi=100)
    for ax, (label, pairs) in zip(axes.flat, shown.items()):
        for p in pairs:
            ax.scatter([p.x], [p.y], s=40 if p.recipe else 18, marker="*" if p.recipe else "o", zorder=3,
                       color="tab:red" if p.recipe else "tab:blue")
            ax.annotate(p.point, (p.x, p.y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(f"{label}\n" + correlate(pairs).text().replace(" (", "\n(").replace("; ", "\n"), fontsize=7)
        ax.set_xlabel(pretext_label, fontsize=8)
        ax.margins(0.15)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.suptitle("Pretext position accuracy vs transfer, one dot per pretraining run (star: the recipe); "
                 "Spearman's rho with its bootstrap interval", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
