"""The monitor-curves picture: how pretraining learnt, epoch by epoch, one colour per run.

Panels over the pretraining epochs: the pretext loss, the pretext accuracy (DropPos's
position accuracy on dropped tokens), and the online monitors of ``pretrain.engine.monitors``
(weighted k-NN top-1, position-probe top-1 at the recipe's drop ratio, RankMe). Read from a
pretraining run folder's ``pretrain_metrics.json`` history (or, for a run still going, its
``log.jsonl``). Optional final transfer numbers of a run are drawn as markers at its last
epoch: in the k-NN panel the k-NN / linear-probe / fine-tuning top-1 of its transfer stages,
in the position panel the position-probe stage's top-1 at the same drop ratio.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..layout import METRICS
from .canvas import FIGSIZE, plt, save_figure

PANELS = (  # (key, title, y label)
    ("loss", "pretext loss", "loss"),
    ("pos_acc", "pretext accuracy (DropPos: dropped positions)", "%"),
    ("knn_top1", "weighted k-NN top-1 (held-out slice)", "%"),
    ("position_top1", "position-probe top-1 (held-out slice)", "%"),
    ("rankme", "RankMe (effective rank of the features)", "effective rank"),
)
TITLE = "Pretraining, epoch by epoch: pretext and online monitors"
PERCENT = {"pos_acc"}  # fractions in the history, drawn in %
# final transfer numbers: (panel, label in the legend, marker)
FINAL_MARKERS = {"knn": ("knn_top1", "k-NN stage top-1", "*"), "linear_probe": ("knn_top1", "linear probe top-1", "D"),
                 "finetune": ("knn_top1", "fine-tuning top-1", "s"),
                 "position_probe": ("position_top1", "position-probe stage top-1", "*")}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_curves(pretrain_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """(epoch, value) per panel key of one pretraining run (monitor values from ``history[i]['monitor']``)."""
    folder = Path(pretrain_dir)
    metrics = folder / METRICS["pretrain"]
    if metrics.is_file():
        history = json.loads(metrics.read_text()).get("history") or []
    else:  # still running: the epoch and monitor lines of its log, the last one of each epoch
        by_epoch: dict[int, dict] = {}
        for line in (folder / "log.jsonl").read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("phase") == "epoch":
                by_epoch.setdefault(int(r["epoch"]), {}).update(r)
            elif r.get("phase") == "monitor":
                by_epoch.setdefault(int(r["epoch"]), {})["monitor"] = r
        history = [by_epoch[e] for e in sorted(by_epoch)]
    curves: dict[str, list[tuple[int, float]]] = {key: [] for key, _, _ in PANELS}
    for h in history:
        epoch, values = h.get("epoch"), {**h, **(h.get("monitor") or {})}
        for key in curves:
            v = values.get(key)
            if _finite(epoch) and _finite(v):
                curves[key].append((int(epoch), 100.0 * v if key in PERCENT else float(v)))
    return curves


def final_transfer(run_folder: str | Path) -> dict[str, float]:
    """A run folder's transfer top-1 (%) per stage of ``FINAL_MARKERS`` (those whose metrics exist); the
    position probe at the drop ratio the pretraining's position monitor used (nearest measured)."""
    folder, out = Path(run_folder), {}
    ratio = None
    history = folder / "pretrain" / METRICS["pretrain"]
    if history.is_file():
        entries = json.loads(history.read_text()).get("history") or []
        ratios = [(h.get("monitor") or {}).get("position_drop_ratio") for h in entries]
        ratio = next((r for r in reversed(ratios) if _finite(r)), None)
    for stage in FINAL_MARKERS:
        path = folder / stage / METRICS[stage]
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        if stage == "position_probe":
            results = m.get("results") or []
            if results and ratio is not None:
                best = min(results, key=lambda r: abs(r["drop_ratio"] - ratio))
                out[stage] = 100.0 * best["top1"]
        elif _finite(m.get("top1")):
            out[stage] = float(m["top1"])
    return out


def pretrained_runs(run_folders: Sequence[tuple[str, str | Path]]) -> list[tuple[str, Path]]:
    """(label, pretraining folder) of the (label, run folder) pairs whose pretraining left its metrics file."""
    runs = [(label, Path(folder) / "pretrain") for label, folder in run_folders]
    return [(label, pre) for label, pre in runs if (pre / METRICS["pretrain"]).is_file()]


def plot_run_curves(runs: Sequence[tuple[str, Path]], path: str | Path, title: str = TITLE) -> Path:
    """:func:`plot_monitor_curves` of :func:`pretrained_runs`' pairs, each run folder's transfer top-1 as markers."""
    finals = {label: final_transfer(pre.parent) for label, pre in runs}
    return plot_monitor_curves(runs, path, finals, title=title)


def plot_monitor_curves(
    runs: Sequence[tuple[str, str | Path]],
    path: str | Path,
    finals: dict[str, dict[str, float]] | None = None,
    title: str = TITLE,
) -> Path:
    """One line per run (label, pretraining folder) in every panel; ``finals[label][stage]`` = a
    transfer stage's top-1 (%), drawn at the run's last epoch (stages of ``FINAL_MARKERS``)."""
    fig, axes = plt.subplots(2, 3, figsize=FIGSIZE["monitors"])
    panels = dict(zip((key for key, _, _ in PANELS), axes.flat))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles, markers_used, drawn = [], {}, 0
    for i, (label, folder) in enumerate(runs):
        curves, colour = read_curves(folder), colours[i % len(colours)]
        last = max((e for points in curves.values() for e, _ in points), default=None)
        for key, points in curves.items():
            if points:
                panels[key].plot([e for e, _ in points], [v for _, v in points], "-o", color=colour, ms=3)
                drawn += 1
        for stage, value in ((finals or {}).get(label) or {}).items():
            if stage in FINAL_MARKERS and _finite(value) and last is not None:
                key, name, marker = FINAL_MARKERS[stage]
                panels[key].plot([last], [value], marker, color=colour, ms=11, mec="black", mew=0.6)
                markers_used[name] = marker
        handles.append(Patch(color=colour, label=label))
    if not drawn:
        plt.close(fig)
        raise ValueError("no pretraining history to draw (no pretrain_metrics.json / log.jsonl epochs in the runs)")
    for key, name, unit in PANELS:
        ax = panels[key]
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="grey")
    legend = axes.flat[-1]
    legend.axis("off")
    handles += [Line2D([], [], ls="", marker=m, color="grey", mec="black", ms=10, label=f"{n} (last epoch)")
                for n, m in markers_used.items()]
    legend.legend(handles=handles, loc="center", fontsize=9, title="runs and final transfer")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.06, right=0.98, top=0.9, bottom=0.08, hspace=0.4, wspace=0.28)
    return save_figure(fig, path)
