"""Position awareness of pretrained versus fine-tuned backbones (the DropPos paper's §4.3).

    python -m analysis.probes.finetuned_probe --pretrained outputs/demo/droppos/pretrain/backbone.pth \
        --finetuned classification=outputs/demo/droppos/finetune/checkpoint-best.pth \
        --finetuned detection=outputs/demo/droppos/detection/model_final.pth \
        --finetuned segmentation=outputs/demo/droppos/segmentation/iter_400.pth \
        --data data/builtin [--sweep 0,0.75] [--output DIR]

Runs the position probe (``analysis.position_probe``, same seeds, same dropped sets) on
the pretrained encoder and on the backbone of every fine-tuned model, all at the
pretrained encoder's input size (a fine-tuned position table of another grid is
resized bicubically). A detector's or segmentor's backbone goes through the plain
ViT: its relative-position tables and window attention are dropped, a missing cls
token / final norm stays at initialisation; each row's notes say what was done.
Writes ``finetuned_probe_metrics.json`` and ``finetuned_probe.md`` (one row per backbone,
with the change in top-1 against the pretrained row).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pretrain.atomic import atomic_write_json, atomic_write_text

from .backbone import load_backbone
from ..cli import run_command
from .position_probe import ProbeSettings, add_settings_args, parse_ratios, run_probe, settings_from_args, with_bad_image_hint
from ..tables.comparison import to_markdown
from ..tables.finetuned_table import rows_table

METRICS_FILE = "finetuned_probe_metrics.json"
TABLE_FILE = "finetuned_probe.md"


def probe_backbones(
    pretrained: str | Path,
    finetuned: dict[str, str | Path],
    data: str | Path,
    drop_ratios: list[float],
    settings: ProbeSettings | None = None,
    verbose: bool = True,
    img_size: int | None = None,
) -> dict:
    """Probe the pretrained checkpoint and each fine-tuned one; one row each, same input size
    (``img_size``, default the pretrained encoder's)."""
    settings = settings or ProbeSettings()
    img_size = img_size or load_backbone(pretrained).img_size
    rows = []
    for name, ckpt in [("pretrained", pretrained), *finetuned.items()]:
        m = run_probe(ckpt, data, drop_ratios, settings, label=name, verbose=verbose, img_size=img_size)
        rows.append({k: m[k] for k in ("label", "checkpoint", "method", "format", "arch", "grid", "replacement",
                                        "notes", "results")})
    return {"task": "finetuned_probe", "img_size": img_size, "drop_ratios": drop_ratios, "rows": rows}


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder: MMEngine's ``last_checkpoint`` there names its newest file."""
    path = Path(path)
    if path.is_dir():
        pointer = path / "last_checkpoint"
        if not pointer.is_file():
            raise FileNotFoundError(f"{path} is a folder without last_checkpoint: name the checkpoint file")
        return Path(pointer.read_text().strip())
    return path


def _pair(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=CHECKPOINT (e.g. detection=model_final.pth), got {text!r}")
    return name, path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", required=True)
    p.add_argument("--finetuned", type=_pair, action="append", default=[], metavar="NAME=CHECKPOINT")
    p.add_argument("--data", required=True)
    p.add_argument("--sweep", type=parse_ratios, default=[0.75], help="drop ratios, comma separated")
    p.add_argument("--img-size", type=int, default=None, help="probe at this input size (default: the pretrained's)")
    add_settings_args(p)
    p.add_argument("--output", default=None, help="default: finetuned_probe/ beside --pretrained")
    args = p.parse_args(argv)
    output = Path(args.output or Path(args.pretrained).parent / "finetuned_probe")

    def probe() -> str:
        finetuned = {name: resolve_checkpoint(path) for name, path in args.finetuned}
        metrics = probe_backbones(args.pretrained, finetuned, args.data, args.sweep, settings_from_args(args),
                                  img_size=args.img_size)
        atomic_write_json(output / METRICS_FILE, metrics)
        table = to_markdown(*rows_table(metrics))
        atomic_write_text(output / TABLE_FILE, table + "\n")
        return f"{table}\n[finetuned_probe] wrote {output / METRICS_FILE} and {output / TABLE_FILE}"

    return run_command(with_bad_image_hint(probe, "pass a data folder whose images all read"))


if __name__ == "__main__":
    sys.exit(main())
