"""Each stage's protocol (recipe, seed, checkpoint, image size, overrides) in its run folder's ``protocol.json``."""

from __future__ import annotations

from pathlib import Path

from pretrain.atomic import atomic_write_json

from ..layout import PROTOCOL_FILE, SCRATCH
from ..tables.metrics_schema import MetricsError
from ..tables.runs import read_protocol
from .stages import Stage


def write_protocols(stages: list[Stage], out: Path, seeds: int, pretrain_seeds: int) -> None:
    """Record each stage's protocol in its run folder's protocol.json (other stages' entries kept)."""
    by_folder: dict[str, list[Stage]] = {}
    for s in stages:
        by_folder.setdefault(s.method, []).append(s)
    for folder, items in by_folder.items():
        run_dir = out / folder
        try:
            data = read_protocol(run_dir)
        except MetricsError:
            data = {}
        init = items[0].init or folder.split("/")[0]
        data.update(
            init=init,
            seed=next((s.seed for s in items if s.name != "pretrain"), items[0].seed),
            pretrain_seed=items[0].pretrain_seed,
            planned_runs=seeds * (1 if init == SCRATCH or items[0].pretrain_seed is None else pretrain_seeds),
        )
        data.setdefault("stages", {}).update({s.name: s.protocol for s in items if s.protocol})
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / PROTOCOL_FILE, data)
