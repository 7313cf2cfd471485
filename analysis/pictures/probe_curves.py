"""The probe-curves picture: position-probe accuracy against the share of dropped positions.

One colour per checkpoint; top-1 (exact cell) solid, within one cell dashed, chance dotted.
Reads ``position_probe_metrics.json`` files (``analysis.position_probe``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .canvas import FIGSIZE, plt, save_figure


def read_probe_metrics(source: str | Path | dict) -> dict:
    """A position_probe_metrics.json (path, its folder, or the dict), checked for what the curves need."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / "position_probe_metrics.json"
    data = json.loads(path.read_text())
    if data.get("task") != "position_probe" or not isinstance(data.get("results"), list):
        raise ValueError(f"{path} is not a position_probe_metrics.json (task/results missing)")
    return data


def plot_probe_curves(
    sources: Sequence[str | Path | dict], path: str | Path, labels: Sequence[str] | None = None
) -> Path:
    """Top-1 (solid) and within-one-cell (dashed) probe accuracy against drop ratio, one colour per checkpoint."""
    fig, ax = plt.subplots(figsize=FIGSIZE["curves"])
    chance = None
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles = []
    for i, src in enumerate(sources):
        m = read_probe_metrics(src)
        rows = sorted(m["results"], key=lambda r: r["drop_ratio"])
        x = [r["drop_ratio"] for r in rows]
        name = labels[i] if labels else m.get("label") or m.get("method") or Path(str(m.get("checkpoint"))).parent.name
        colour = colours[i % len(colours)]
        ax.plot(x, [100 * r["top1"] for r in rows], "-o", color=colour)
        ax.plot(x, [100 * r["within1"] for r in rows], "--s", color=colour, ms=4)
        handles.append(Patch(color=colour, label=name))
        chance = rows[0]["chance"] if rows else chance
    if chance is not None:
        ax.axhline(100 * chance, color="grey", ls=":", lw=1)
    handles += [
        Line2D([], [], color="black", ls="-", marker="o", label="top-1 (exact cell)"),
        Line2D([], [], color="black", ls="--", marker="s", ms=4, label="within one cell"),
        Line2D([], [], color="grey", ls=":", label="chance (top-1)"),
    ]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("share of position embeddings dropped")
    ax.set_ylabel("position accuracy on held-out images (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Linear position probe on frozen features")
    ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.92, bottom=0.11)
    return save_figure(fig, path)
