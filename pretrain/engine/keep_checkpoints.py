"""Kept checkpoints: every N-th epoch's checkpoint stays for later evaluation, with a table of its signals.

``python -m pretrain.main ... --keep-checkpoints-every N`` (= ``train.keep_checkpoints_every=N``;
0, the default, keeps none): the checkpoint written at the end of every N-th epoch is also
kept as ``<out>/kept/checkpoint-epoch<E>.pth`` (a hard link where the file system allows,
else a copy; either way written atomically), which pruning (``train.keep_checkpoints``)
never removes. Each is a full training checkpoint, so any transfer stage takes it as its
initialisation (``checkpoint=`` / ``--init``), the DropPos position token included.

``<out>/checkpoint_monitors.csv`` lists, per kept checkpoint (and the run's last one), the
epoch's pretext loss and accuracy and the online monitors' values of that epoch (from the
run history, which every checkpoint carries): which checkpoint to evaluate, read honestly
off signals measured during training, not off the transfer results.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from omegaconf import DictConfig, OmegaConf

from ..atomic import atomic_write, atomic_write_text, temp_path
from . import distributed as du
from .hooks import Hook

if TYPE_CHECKING:  # pragma: no cover
    from .trainer import Trainer

FLAG = "--keep-checkpoints-every"
KEY = "train.keep_checkpoints_every"
KEPT_DIR = "kept"
TABLE = "checkpoint_monitors.csv"
PRETEXT = ("loss", "pos_acc")
MONITOR = ("knn_top1", "knn_top5", "position_top1", "position_within1", "rankme", "seconds")


def flag_as_override(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--keep-checkpoints-every N`` (or ``=N``) turned into the override ``train.keep_checkpoints_every=N``."""
    out, items = [], list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item == FLAG:
            if i + 1 >= len(items) or items[i + 1].startswith("--"):
                raise ValueError(f"{FLAG} needs a number of epochs (e.g. {FLAG} 10)")
            out.append(f"{KEY}={items[i + 1]}")
            i += 2
            continue
        out.append(f"{KEY}={item.split('=', 1)[1]}" if item.startswith(FLAG + "=") else item)
        i += 1
    return out


def check_keep_every(cfg: DictConfig) -> None:
    """A negative interval is refused before any work."""
    every = OmegaConf.select(cfg, KEY, default=0)
    if every is not None and int(every) < 0:
        raise ValueError(f"{KEY} ({FLAG}) must be >= 0 epochs (0 keeps none), got {every}")


def kept_path(out_dir: Path, epoch: int) -> Path:
    return Path(out_dir) / KEPT_DIR / f"checkpoint-epoch{epoch:04d}.pth"


def keep_file(source: Path, target: Path) -> Path:
    """``target`` becomes ``source``'s content: a hard link, else a copy; atomic either way (temp + rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        if tmp.exists():
            tmp.unlink()
        os.link(source, tmp)
        os.replace(tmp, target)
    except OSError:  # no hard links here (or across devices): copy
        if tmp.exists():
            tmp.unlink()

        def copy(f) -> None:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 24)

        atomic_write(target, copy)
    return target


def kept_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) of the kept checkpoints, oldest first."""
    folder = Path(out_dir) / KEPT_DIR
    found = []
    for p in folder.glob("checkpoint-epoch*.pth") if folder.is_dir() else ():
        digits = p.stem[len("checkpoint-epoch"):]
        if digits.isdigit():
            found.append((int(digits), p))
    return sorted(found)


def checkpoint_rows(out_dir: Path, history: Sequence[dict[str, Any]],
                    last: tuple[int, Path] | None = None) -> list[dict[str, Any]]:
    """One row per kept checkpoint (and ``last``): epoch, file, pretext loss / accuracy, monitor values."""
    by_epoch = {int(h["epoch"]): h for h in history if "epoch" in h}
    items = dict(kept_checkpoints(out_dir))
    if last is not None:
        items.setdefault(int(last[0]), Path(last[1]))
    rows = []
    for epoch, path in sorted(items.items()):
        h = by_epoch.get(epoch, {})
        monitor = h.get("monitor") or {}
        row: dict[str, Any] = {"epoch": epoch, "checkpoint": os.path.relpath(path, out_dir)}
        row.update({k: h[k] for k in PRETEXT if k in h})
        row.update({("monitor_seconds" if k == "seconds" else k): monitor[k] for k in MONITOR if k in monitor})
        if "error" in monitor:
            row["monitor_error"] = monitor["error"]
        rows.append(row)
    return rows


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    return cols


def write_checkpoint_table(out_dir: Path, history: Sequence[dict[str, Any]],
                           last: tuple[int, Path] | None = None) -> list[dict[str, Any]]:
    """``<out>/checkpoint_monitors.csv`` (atomically) from the kept checkpoints and the run history;
    returns its rows (:func:`checkpoint_rows`)."""
    rows = checkpoint_rows(out_dir, history, last)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(rows) or ["epoch", "checkpoint"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(Path(out_dir) / TABLE, buf.getvalue())
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (numbers with 2 decimals)."""
    cols = _columns(rows)
    if not rows:
        return ""
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else ("" if value is None else str(value))


class KeepCheckpointsHook(Hook):
    """After the checkpoint of every ``every``-th epoch: keep it under ``kept/`` and update the table."""

    def __init__(self, out_dir: Path, every: int) -> None:
        self.out_dir, self.every = Path(out_dir), int(every)

    def after_save(self, trainer: "Trainer") -> None:
        st = trainer.state
        if st.iter_in_epoch != 0 or st.epoch < 1 or st.epoch % self.every or not du.is_main_process():
            return
        if trainer.last_checkpoint is None:
            return
        keep_file(Path(trainer.last_checkpoint), kept_path(self.out_dir, st.epoch))
        write_checkpoint_table(self.out_dir, st.history)


def build_keep_hook(cfg: DictConfig, out_dir: Path) -> KeepCheckpointsHook | None:
    """The hook ``train.keep_checkpoints_every`` asks for, or None (0: keep none)."""
    every = int(OmegaConf.select(cfg, KEY, default=0) or 0)
    return KeepCheckpointsHook(out_dir, every) if every > 0 else None
