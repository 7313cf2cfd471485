"""One row per initialisation and measure: its seeds pooled, its protocol checked, nothing averaged silently.

The run folders of one initialisation (``droppos``, ``droppos/seed1``, ...; ``analysis.runs``)
each give a measure at most one value. A row pools them: the values with the run each came
from, the runs without one (skipped, failed, or a null metric) and how many runs were
planned (``protocol.json``), so a row with missing seeds shows its real n. Every value's
protocol (recipe file, epochs or iterations, image size) must be the same within a row; a
row that mixes protocols, or holds one seed twice, stops with the files named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .metrics_schema import MetricsError
from .runs import SEED_FOLDER, RunResults, run_name
from .stats import Summary, summarize

PROBE_RATIO = 0.75  # the drop ratio quoted in the main tables


def probe_at(m: dict | None, ratio: float = PROBE_RATIO) -> dict | None:
    """The probe result at ``ratio`` (or the nearest drop ratio measured)."""
    if not m:
        return None
    return min(m["results"], key=lambda r: abs(r["drop_ratio"] - ratio))


def _probe(key: str) -> Callable[[dict], float | None]:
    def read(m: dict) -> float | None:
        r = probe_at(m)
        return 100 * r[key] if r is not None else None

    return read


@dataclass(frozen=True)
class Measure:
    """One number a stage's metrics give: table label, stage, reader, decimals, paper key.

    ``optional``: a number only some profiles measure (ImageNet-R needs the ImageNet variants); its
    row is left out of the tables when no initialisation has a value.
    """

    label: str
    stage: str
    read: Callable[[dict], Any]
    digits: int = 1
    paper_key: str | None = None
    optional: bool = False


def _key(name: str) -> Callable[[dict], Any]:
    return lambda m: m.get(name)


def _robust(name: str, key: str = "top1") -> Callable[[dict], Any]:
    """A robustness set's number (``sets.<name>.<key>`` of robustness_metrics.json)."""
    return lambda m: ((m.get("sets") or {}).get(name) or {}).get(key)


def _perturbed(row: str) -> Callable[[dict], Any]:
    """Top-1 of one position-robustness row (``sets.position.rows.<row>``)."""
    return lambda m: ((((m.get("sets") or {}).get("position") or {}).get("rows") or {}).get(row) or {}).get("top1")


def _lowshot(*subsets: str) -> Callable[[dict], Any]:
    """Top-1 of the first of ``subsets`` the low-shot metrics have (ImageNet's list, else the demo's per-class draw)."""
    def read(m: dict) -> Any:
        found = m.get("subsets") or {}
        return next(((found[k] or {}).get("top1") for k in subsets if k in found), None)

    return read


MEASURES: tuple[Measure, ...] = (
    Measure("FT top-1", "finetune", _key("top1"), paper_key="finetune_top1"),
    Measure("LP top-1", "linear_probe", _key("top1"), paper_key="linear_probe_top1"),
    Measure("k-NN top-1", "knn", _key("top1")),
    Measure("attentive probe top-1", "attentive_probe", _key("top1")),
    Measure("COCO AP box", "detection", _key("bbox_AP"), paper_key="coco_box_ap"),
    Measure("COCO AP50 box", "detection", _key("bbox_AP50"), paper_key="coco_box_ap50"),
    Measure("COCO AP mask", "detection", _key("segm_AP"), paper_key="coco_mask_ap"),
    Measure("ADE mIoU", "segmentation", _key("mIoU"), paper_key="ade_miou"),
    Measure(f"pos. probe top-1 @{PROBE_RATIO:g}", "position_probe", _probe("top1")),
    Measure(f"pos. probe within-1 @{PROBE_RATIO:g}", "position_probe", _probe("within1")),
    Measure("low-shot 1 % (demo: 1 img/class) top-1", "lowshot", _lowshot("1percent", "per_class_1")),
    Measure("low-shot 10 % (demo: 10 img/class) top-1", "lowshot", _lowshot("10percent", "per_class_10")),
    Measure("IN-C mCE (lower is better)", "robustness", _robust("c", "mce"), optional=True),
    Measure("corrupted val mean top-1", "robustness", _robust("c", "mean_top1")),
    Measure("IN-V2 top-1", "robustness", _robust("v2"), optional=True),
    Measure("IN-R top-1", "robustness", _robust("r"), optional=True),
    Measure("IN-A top-1", "robustness", _robust("a"), optional=True),
    Measure("IN-Sketch top-1", "robustness", _robust("sketch"), optional=True),
    Measure("ReaL top-1", "robustness", _robust("real"), optional=True),
    Measure("patch shuffle (grid) top-1", "robustness", _perturbed("shuffle_grid")),
    Measure("75 % tokens dropped top-1", "robustness", _perturbed("drop_0.75")),
    Measure("centre occlusion 50 % top-1", "robustness", _perturbed("occlude_centre_0.5")),
)
PRETRAIN_LOSS = Measure("PT final loss", "pretrain", lambda m: (m.get("final") or {}).get("loss"), digits=4)


# --------------------------------------------------------------------------- protocol
def _budget(stage: str, m: dict) -> str:
    """Epochs, iterations or k / T of one stage's metrics."""
    if stage == "knn":
        parts = [f"k={m['k']}" if "k" in m else "", f"T={m['temperature']:g}" if "temperature" in m else ""]
        return ", ".join(p for p in parts if p) or "k / T not recorded"
    if stage == "position_probe":
        epochs = (m.get("settings") or {}).get("epochs")
        return f"{epochs} probe epochs" if epochs is not None else "epochs not recorded"
    if stage == "robustness":
        images = (m.get("clean") or {}).get("images")
        return f"sets {', '.join(m.get('sets_requested') or sorted(m.get('sets', {})))}" + (
            f"; {images} val images" if images else "")
    if stage == "lowshot":
        return f"C on a held-out {m.get('holdout', '?')} of each subset, grid {m.get('C_grid', '?')}"
    if m.get("iterations") is not None:
        return f"{m['iterations']} iterations"
    if m.get("epochs") is not None:
        return f"{m['epochs']} epochs"
    return "epochs not recorded"


def _image_size(run: RunResults, stage: str, m: dict) -> str:
    size = run.protocol.get("stages", {}).get(stage, {}).get("image_size")
    arch = m.get("arch") if isinstance(m.get("arch"), str) else run.arch
    if size is None and arch and arch.split("_")[-1].isdigit():
        size = arch.split("_")[-1]
    return f"{size} px" if size is not None else "image size not recorded"


def protocol_of(run: RunResults, stage: str) -> tuple[str, str, str]:
    """(recipe file, epochs or iterations, image size) of one run's stage."""
    m = run.metrics.get(stage, {})
    recipe = run.protocol.get("stages", {}).get(stage, {}).get("recipe") or m.get("config") or "recipe not recorded"
    return str(recipe), _budget(stage, m), _image_size(run, stage, m)


# --------------------------------------------------------------------------- rows
@dataclass
class SeedRow:
    """One initialisation's values of one measure, one per run folder that has it.

    Attributes:
        values: (run, value) per seed that gave a value.
        missing: (run, why) per run folder without one.
        planned: runs ``analysis.reproduce`` planned for this initialisation (None: not recorded).
        protocol: (recipe, budget, image size) shared by the values (None without values).
    """

    init: str
    measure: Measure
    values: list[tuple[RunResults, float]] = field(default_factory=list)
    missing: list[tuple[RunResults, str]] = field(default_factory=list)
    planned: int | None = None
    protocol: tuple[str, str, str] | None = None

    @property
    def summary(self) -> Summary | None:
        """Mean, std and n of the values (None without any)."""
        return summarize([v for _, v in self.values]) if self.values else None

    def seeds_text(self) -> str:
        """'seeds 0, 1, 2' (with the pretraining seeds when more than one)."""
        seeds = [r.seed(self.measure.stage) for r, _ in self.values]
        text = "seeds " + ", ".join("n/s" if s is None else str(s) for s in seeds)
        pre = sorted({r.pretrain_seed for r, _ in self.values if r.pretrain_seed is not None})
        return text + (f" over pretraining seeds {', '.join(map(str, pre))}" if len(pre) > 1 else "")

    def protocol_text(self) -> str:
        """Recipe; epochs or iterations; image size; seeds."""
        return "—" if self.protocol is None else "; ".join([*self.protocol, self.seeds_text()])


def _why_missing(run: RunResults, stage: str) -> str:
    st = run.status.get(stage)
    if isinstance(st, dict) and st.get("status") in ("skipped", "failed"):
        return st["status"]
    return "no value" if stage in run.metrics else "—"


def _check_one_protocol(row: SeedRow) -> None:
    """Stop when the row's values come from different protocols or repeat a seed.

    A field a run does not record (e.g. the recipe of a metrics file written outside
    ``analysis.reproduce``) matches any; two recorded, different values stop.
    """
    stage = row.measure.stage
    fields = ("recipe", "budget", "image size")
    merged = []
    for i, name in enumerate(fields):
        seen: dict[str, RunResults] = {}
        for run, _ in row.values:
            value = protocol_of(run, stage)[i]
            if "not recorded" not in value:
                seen.setdefault(value, run)
        if len(seen) > 1:
            parts = [f"{r.files.get(stage, r.path)} ({name} {v})" for v, r in seen.items()]
            raise MetricsError(
                f"one row mixes protocols ({row.init}, {row.measure.label}): {'; '.join(parts)}; "
                "pass run folders of one protocol per initialisation"
            )
        merged.append(next(iter(seen), f"{name} not recorded"))
    keys: dict[tuple[int | None, int], RunResults] = {}
    for run, _ in row.values:
        seed = run.seed(stage)
        if seed is None:
            continue
        key = (run.pretrain_seed, seed)
        if key in keys:
            raise MetricsError(
                f"seed {seed} appears twice in one row ({row.init}, {row.measure.label}): "
                f"{keys[key].files.get(stage, keys[key].path)} and {run.files.get(stage, run.path)}"
            )
        keys[key] = run
    row.protocol = tuple(merged) if row.values else None  # type: ignore[assignment]


def shown_measures(rows: dict, measures: tuple[Measure, ...] = MEASURES) -> tuple[Measure, ...]:
    """``measures`` less the optional ones no initialisation has a value of (the tables' rows)."""
    return tuple(m for m in measures if not m.optional or any(
        r.values for (_, label), r in rows.items() if label == m.label))


def build_rows(runs: list[RunResults], measures: tuple[Measure, ...] = (*MEASURES, PRETRAIN_LOSS)) -> dict:
    """(init, measure label) -> SeedRow for every initialisation in ``runs`` and every measure."""
    rows: dict[tuple[str, str], SeedRow] = {}
    for measure in measures:
        for run in runs:
            row = rows.setdefault((run.method, measure.label), SeedRow(run.method, measure))
            if measure.stage == "pretrain" and SEED_FOLDER.match(run.path.name) and not run.path.name.startswith("p"):
                continue  # a transfer seed's folder: its pretraining lives in the folder above
            planned = run.protocol.get("planned_runs")
            if isinstance(planned, int) and measure.stage != "pretrain":
                row.planned = max(row.planned or 0, planned)
            m = run.metrics.get(measure.stage)
            value = measure.read(m) if m else None
            if value is None:
                row.missing.append((run, _why_missing(run, measure.stage)))
            else:
                row.values.append((run, float(value)))
    for row in rows.values():
        _check_one_protocol(row)
    return rows


def per_seed_rows(rows: dict) -> tuple[list[str], list[list[str]]]:
    """Every value of every row, one line each: the per-seed CSV."""
    header = ["initialisation", "measure", "pretrain_seed", "seed", "value", "run", "file", "protocol"]
    out = []
    for row in rows.values():
        for run, value in row.values:
            seed, pre = run.seed(row.measure.stage), run.pretrain_seed
            out.append(
                [
                    row.init,
                    row.measure.label,
                    "" if pre is None else str(pre),
                    "" if seed is None else str(seed),
                    f"{value:.{row.measure.digits + 2}f}",
                    run_name(run),
                    str(run.files.get(row.measure.stage, "")),
                    "; ".join(protocol_of(run, row.measure.stage)),
                ]
            )
    return header, out
