"""Where each row's weights came from: file, sha256, format, architecture, position embedding, load, card.

An ``--init NAME=PATH`` run folder holds ``init.json`` (written by ``analysis.reproduce``
once the file was identified and trial-loaded); the suite's own methods are read off the
checkpoint their stages used (``protocol.json``: the pretraining run's ``backbone.pth``) and
the load report a classification stage saved beside its metrics; ``scratch`` is a random
initialisation. Rows whose files have the same sha256 are named as the same weights.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from ..layout import INIT_FILE, SCRATCH
from .runs import SIZE_NAMES, RunResults, arch_label, run_name

LOAD_REPORT_STAGES = ("linear_probe", "knn", "finetune", "attentive_probe")
HEADER = ["source file", "sha256", "format", "architecture", "position embedding", "load report", "card",
          "same weights as"]
_NO_FILE = (None, "", "none", "none (random initialisation)")


@functools.lru_cache(maxsize=64)
def _identify(path: str, size: int, mtime_ns: int) -> dict[str, Any] | str:
    """The identity of a file (memoised per path, size and modification time), or why it cannot be read."""
    from pretrain.weights import CheckpointError
    from pretrain.weights.identify import identify_checkpoint

    try:
        return identify_checkpoint(path).to_dict()
    except CheckpointError as exc:
        return str(exc).splitlines()[0]


def _checkpoint_of(run: RunResults) -> str | None:
    """The file the run's transfer stages started from (protocol.json), None for a random initialisation."""
    for stage, record in run.protocol.get("stages", {}).items():
        ckpt = record.get("checkpoint") if isinstance(record, dict) else None
        if stage != "pretrain" and ckpt not in _NO_FILE:
            return str(ckpt)
    return None


def _saved_load_report(run: RunResults) -> dict[str, Any] | None:
    for stage in LOAD_REPORT_STAGES:
        path = run.path / stage / "load_report.json"
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(report, dict):
            return {"loaded": len(report.get("loaded", [])), "left_at_initialisation": report.get("new", []),
                    "resized": report.get("resized", {}), "skipped": report.get("skipped", {}), "from": str(path)}
    return None


def provenance(run: RunResults) -> dict[str, Any]:
    """The run's provenance record: ``kind`` file / pretrained / random, and what is known of the weights."""
    try:
        record = json.loads((run.path / INIT_FILE).read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict):
        return record
    if run.method == SCRATCH:
        return {"kind": "random", "source": None}
    ckpt = _checkpoint_of(run)
    record: dict[str, Any] = {"kind": "pretrained", "source": ckpt}
    if ckpt is not None:
        path = Path(ckpt)
        if path.is_file():
            st = os.stat(path)
            found = _identify(str(path.resolve()), st.st_size, st.st_mtime_ns)
            record.update(found if isinstance(found, dict) else {"error": found})
        else:
            record["error"] = f"file not found: {ckpt}"
    report = _saved_load_report(run)
    if report is not None:
        record["load_report"] = report
    return record


def _arch(record: dict[str, Any]) -> str:
    if "patch_size" not in record:
        return "—"
    size = record.get("size")
    unknown = None if size in SIZE_NAMES else f"ViT {record['embed_dim']}d x {record['depth']}"
    return arch_label(size, record["patch_size"], record.get("img_size"), unknown=unknown)


def _position(record: dict[str, Any]) -> str:
    pe = record.get("position_embedding")
    if not isinstance(pe, dict):
        return "—"
    rel = pe.get("relative_position")
    text = pe.get("position_embedding", "?") + (f": {', '.join(rel)}" if rel else "")
    return text + (" + absolute table" if rel and pe.get("absolute_table") else "")


def _load(record: dict[str, Any]) -> str:
    report = record.get("load_report")
    if not isinstance(report, dict):
        return "—"
    left = ", ".join(report.get("left_at_initialisation") or []) or "nothing"
    text = f"loaded {report.get('loaded')} tensors; left at initialisation: {left}"
    if report.get("resized"):
        text += "; resized: " + ", ".join(f"{k} ({v})" for k, v in report["resized"].items())
    return text


def _card(record: dict[str, Any]) -> str:
    card = record.get("card")
    if not isinstance(card, dict):
        return "none"
    parts = [f"{k} {card[k]}" for k in ("method", "epochs", "recipe", "exported_to") if card.get(k) is not None]
    source = card.get("source") if isinstance(card.get("source"), dict) else {}
    if source.get("file"):
        parts.append(f"from {source['file']}")
    return ", ".join(parts) or "card without fields"


def _format(record: dict[str, Any]) -> str:
    if "format" not in record:
        return "—"
    text = record["format"]
    if record.get("declared_format"):
        text += f" ({record['declared_format']})"
    return text + (" .safetensors" if record.get("container") == "safetensors" else "")


def same_weights(runs: list[RunResults], records: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Run name -> the other initialisations whose file has the same sha256."""
    by_sha: dict[str, set[str]] = {}
    for run in runs:
        sha = records[run_name(run)].get("sha256")
        if sha:
            by_sha.setdefault(sha, set()).add(run.method)
    return {run_name(r): sorted(by_sha.get(records[run_name(r)].get("sha256") or "", set()) - {r.method})
            for r in runs}


def provenance_records(runs: list[RunResults]) -> dict[str, dict[str, Any]]:
    """Run name -> provenance record."""
    return {run_name(r): provenance(r) for r in runs}


def provenance_cells(record: dict[str, Any], same: list[str], full_sha: bool = True) -> list[str]:
    """The HEADER cells of one record (the sha256 in full for CSV, its first 12 digits for Markdown)."""
    kind = record.get("kind")
    if kind == "random":
        source = "random initialisation"
    else:
        source = record.get("source") or "—"
    if record.get("error"):
        source += f" ({record['error']})"
    sha = record.get("sha256") or "—"
    return [source, sha if full_sha or sha == "—" else sha[:12], _format(record), _arch(record), _position(record),
            _load(record), _card(record) if kind != "random" else "—",
            ", ".join(same) if same else "—"]


def provenance_table(
    runs: list[RunResults], full_sha: bool = False, records: dict[str, dict[str, Any]] | None = None
) -> tuple[list[str], list[list[str]]]:
    """One row per run folder: where its weights came from (``records``: :func:`provenance_records` of ``runs``,
    read here when not given)."""
    records = provenance_records(runs) if records is None else records
    same = same_weights(runs, records)
    header = ["run", "initialisation", *HEADER]
    rows = [[run_name(r), r.label, *provenance_cells(records[run_name(r)], same[run_name(r)], full_sha)]
            for r in runs]
    return header, rows
