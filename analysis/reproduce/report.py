"""The report of the end-to-end run: ``<out>/report.md`` with the stages, the tables and the pictures.

The same Markdown is also written to ``<out>/report/report.md`` (picture links relative to
that folder), beside the CSV tables and ``pictures/`` (the comparison picture among them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .profiles import DEMO
from .runner import read_status
from ..layout import REPORT_FILE, REPORT_FOLDER
from .stages import METRICS, STAGES


def make_pictures(out: Path, data: Path, methods: list[str]) -> list[tuple[str, Path]]:
    """Pictures for the report; each failure is reported and skipped. Returns (caption, path).

    ``methods``: the report's rows, the suite's methods and the ``--init`` names (the pictures of
    pretraining leave out the rows without a pretraining folder).
    """
    from .. import pictures  # the package: its picture functions

    pics_dir = out / REPORT_FOLDER / "pictures"
    made: list[tuple[str, Path]] = []

    def attempt(caption: str, fn: Callable[[], Path]) -> None:
        try:
            made.append((caption, fn()))
        except Exception as exc:  # a picture must never sink the report
            print(f"[reproduce] picture '{caption}' not made: {type(exc).__name__}: {exc}", flush=True)

    attempt(
        "Position smoothing targets (paper vs reference code), 14x14 grid",
        lambda: pictures.plot_smoothing_targets(pics_dir / "smoothing_targets.png"),
    )
    probes = [out / m / "position_probe" / METRICS["position_probe"] for m in methods]
    probes = [p for p in probes if p.is_file()]
    if probes:
        attempt(
            "Position-probe accuracy against the share of dropped positions",
            lambda: pictures.plot_probe_curves(probes, pics_dir / "position_probe_curves.png"),
        )
    robust = {m: sorted((out / m).glob(f"**/robustness/{METRICS['robustness']}")) for m in methods}
    if any(robust.values()):
        from ..pictures.robustness import plot_robustness

        attempt(
            "Fine-tuned classifiers: top-1 against corruption severity, share of patch tokens dropped and "
            "patch blocks shuffled (seeds pooled)",
            lambda: plot_robustness(robust, pics_dir / "robustness.png"),
        )
    runs = pictures.pretrained_runs([(m, out / m) for m in methods])
    if runs:
        attempt(
            "Pretraining epoch by epoch: pretext loss and accuracy, online k-NN, position probe and RankMe; "
            "the transfer stages' top-1 as markers at the last epoch",
            lambda: pictures.plot_run_curves(runs, pics_dir / "monitor_curves.png"),
        )
    for method in methods:
        pre = out / method / "pretrain"
        backbone = pre / "backbone.pth"
        if not backbone.is_file():
            continue
        full = sorted(pre.glob("checkpoint-*.pth"))
        ckpt = full[-1] if method == "droppos" and full else backbone
        attempt(
            f"{method}: predicted positions of patches",
            lambda c=ckpt, m=method: pictures.positions_picture(c, pics_dir, data=data, label=m, probe_epochs=10),
        )
        attempt(
            f"{method}: attentive-reconstruction weights",
            lambda m=method, b=backbone: pictures.attention_picture(b, pics_dir, data=data, label=m),
        )
    return made


def _stage_cell(record: dict, out: Path) -> str:
    """A stage's status, reason and wall / CPU minutes as one table cell."""
    state = record.get("status", "—")
    if state == "skipped" and record.get("reason"):
        state = f"skipped ({record['reason']})"
    elif state == "failed":
        log = Path(record["log"]).relative_to(out) if record.get("log") else "log"
        state = f"failed ({record.get('reason')}; see {log})"
    secs, cpu = record.get("wall_seconds"), record.get("cpu_seconds")
    if isinstance(secs, (int, float)):
        state += f", {secs / 60:.1f} min" + (f" / CPU {cpu / 60:.1f} min" if isinstance(cpu, (int, float)) else "")
        state += " (earlier run)" if record.get("cached") else ""
    return state


def write_report(
    out: Path,
    profile: str,
    records: dict[tuple[str, str], dict],
    folders: list[str],
    pictures_made: list[tuple[str, Path]],
    wall: float,
    detection_iters: int | None = None,
    reference: str = "mae",
) -> Path:
    """<out>/report.md: stage wall times, the comparison tables, the comparison picture and the pictures.

    ``folders``: the run folders below ``out`` (``droppos``, ``droppos/seed1``, ``scratch`` ...);
    ``detection_iters``: the demo's detection iterations when not the DEMO budget's; ``reference``: the row
    the comparison's "vs" column compares against.
    """
    from ..tables.comparison import COMPARISON_PICTURE, MetricsError, build_tables

    lines = [f"# DropPos / MAE / AdPE / scratch: {profile} report", ""]
    if profile == "demo":
        lines += [
            "Built-in synthetic data, ViT-Tiny with 8 px patches, CPU, minutes of training per stage: the numbers "
            "show that every stage runs end to end and how the initialisations compare at this toy scale; they are "
            "not comparable with the papers' ImageNet-scale numbers listed beside them. Whether a difference is "
            "beyond run-to-run noise is judged per cell from the seeds (`--seeds N`); with one seed the cells say "
            f"so. Detection runs {detection_iters or DEMO['detection_iters']} iterations.",
            "",
        ]
    lines += [
        f"Wall time of this invocation: {wall / 60:.1f} min.",
        "",
        "## Stages (status, wall time / CPU time of the stage's processes)",
        "",
    ]
    lines += ["| run | " + " | ".join(STAGES) + " |", "|" + "---|" * (len(STAGES) + 1)]
    for folder in folders:
        status = read_status(out / folder)
        cells = [_stage_cell(records.get((folder, name)) or status.get(name, {}), out) for name in STAGES]
        lines.append(f"| {folder} | " + " | ".join(cells) + " |")
    lines += ["", "## Results", ""]
    inits = list(dict.fromkeys(f.split("/")[0] for f in folders))
    try:
        md, _ = build_tables([out / i for i in inits if (out / i).is_dir()], out / REPORT_FOLDER, stages=False,
                             reference=reference)
        lines.append(md)
    except MetricsError as exc:
        lines.append(f"Tables not built: {exc}")
    comparison = out / REPORT_FOLDER / COMPARISON_PICTURE
    shown = ([("Comparison per task: initialisations with their seed spread, scratch as the reference", comparison)]
             if comparison.is_file() else [])
    if shown or pictures_made:
        lines += ["", "## Pictures", ""]
        for caption, path in shown + pictures_made:
            lines += [f"**{caption}**", "", f"![{caption}]({path.relative_to(out)})", ""]
    path = out / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    (out / REPORT_FOLDER).mkdir(parents=True, exist_ok=True)
    (out / REPORT_FOLDER / REPORT_FILE).write_text("\n".join(lines).replace("](report/", "](") + "\n")
    return path
