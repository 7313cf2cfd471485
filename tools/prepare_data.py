"""Prepare datasets for the suite.

    python -m tools.prepare_data builtin --out data/builtin [--seed 0] [--formats imagefolder coco ade20k]
    python -m tools.prepare_data DATASET --from ARCHIVES... --to ROOT [--no-verify] [--allow-partial] [--overwrite]

``builtin`` writes the deterministic synthetic dataset (``pretrain/data/synthetic.py``)
in the real ImageNet / COCO / ADE20K layouts and prints what it wrote. It is
idempotent: a format already written with the same seed and sizes is kept.

The DATASET commands (``imagenet``, ``imagenet-lowshot``, ``imagenet-v2``, ``imagenet-r``,
``imagenet-a``, ``imagenet-sketch``, ``imagenet-c``, ``imagenet-real``, ``coco``, ``ade20k``)
prepare the real datasets from their official archives: checked against the published
checksums and counts, extracted on every core into a temporary tree, validated, moved
into place part by part, resumable after an interruption (``tools/prepare/``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from tools.prepare.cli import COMMANDS, add_dataset_parsers, dataset_main, run_dataset


def get_args_parser() -> argparse.ArgumentParser:
    from pretrain.data.synthetic import FORMATS, BuiltinConfig

    parser = argparse.ArgumentParser("prepare_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("builtin", help="write the built-in synthetic dataset")
    b.add_argument("--out", default="data/builtin", help="output root folder")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    b.add_argument("--force", action="store_true", help="regenerate even if the manifest matches")
    b.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    for field in dataclasses.fields(BuiltinConfig):  # every size is a flag: --coco-train 50 ...
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, tuple):
            b.add_argument(flag, type=int, nargs=2, metavar=("LO", "HI"), default=None)
        else:
            b.add_argument(flag, type=type(field.default), default=None)
    add_dataset_parsers(sub)
    return parser


def main(args: argparse.Namespace) -> dict:
    if args.command != "builtin":
        status, summary = run_dataset(args)
        if status:
            raise SystemExit(status)
        return summary
    from pretrain.data.synthetic import BuiltinConfig, make_builtin_dataset, read_manifest

    sizes = {f.name: getattr(args, f.name) for f in dataclasses.fields(BuiltinConfig)
             if getattr(args, f.name) is not None}
    start = time.time()
    before = read_manifest(args.out).get("formats", {})
    paths = make_builtin_dataset(args.out, seed=args.seed, formats=args.formats,
                                 progress=not args.no_progress, **sizes)
    entries = read_manifest(args.out)["formats"]
    for fmt, path in paths.items():
        kept = "kept" if before.get(fmt) == entries[fmt] else "wrote"
        counts = ", ".join(f"{k}={v}" for k, v in entries[fmt]["counts"].items())
        print(f"{fmt:12s} {kept:5s} {path}  ({counts})")
    print(f"done in {time.time() - start:.1f}s (seed {args.seed})")
    return paths


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:  # the real datasets: no built-in generator (nor torch) to load
        raise SystemExit(dataset_main(sys.argv[1:]))
    main(get_args_parser().parse_args())
