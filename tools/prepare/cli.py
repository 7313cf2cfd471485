"""The dataset commands of ``python -m tools.prepare_data``: one per dataset, the same options for all."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from .errors import PrepareError, os_error_line

COMMANDS: dict[str, str] = {
    "imagenet": "ImageNet-1K from ILSVRC2012_img_{train,val}.tar + devkit, or the Kaggle layout",
    "imagenet-lowshot": "1 and 10 percent ImageNet subsets as file lists (published or a seeded draw)",
    "imagenet-v2": "ImageNetV2 matched-frequency (imagenetv2-matched-frequency.tar.gz)",
    "imagenet-r": "ImageNet-R (imagenet-r.tar)",
    "imagenet-a": "ImageNet-A (imagenet-a.tar)",
    "imagenet-sketch": "ImageNet-Sketch (ImageNet-Sketch.zip)",
    "imagenet-c": "ImageNet-C (noise / blur / weather / digital [/ extra] .tar)",
    "imagenet-real": "ImageNet-ReaL labels (timm's imagenet_real_labels.json) keyed by val file",
    "coco": "COCO 2017 zips into $DETECTRON2_DATASETS/coco",
    "ade20k": "ADEChallengeData2016.zip into MMSeg's ADE20KDataset layout",
}


def _runner(command: str) -> Callable[[Any], dict]:
    if command == "imagenet":
        from .imagenet import prepare_imagenet

        return prepare_imagenet
    if command == "coco":
        from .coco import prepare_coco

        return prepare_coco
    if command == "ade20k":
        from .ade20k import prepare_ade20k

        return prepare_ade20k
    from .variants import PREPARE

    return PREPARE[command]


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (argparse names the option in its one error line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_dataset_parsers(sub: argparse._SubParsersAction) -> None:
    """One sub-command per dataset, each with ``--from ARCHIVES... --to ROOT`` and the shared options."""
    from .extract import default_workers

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--from", dest="sources", nargs="+", default=[], metavar="ARCHIVE",
                        help="the official archives (or ROLE=PATH to name an archive's role); required except "
                             "for imagenet-real")
    common.add_argument("--to", required=True, type=Path, help="target root folder")
    common.add_argument("--no-verify", action="store_true", help="skip the published-checksum check")
    common.add_argument("--allow-partial", action="store_true", help="accept fewer images than published (a subset)")
    common.add_argument("--overwrite", action="store_true", help="redo and replace what is already complete")
    common.add_argument("--workers", type=int, default=min(default_workers(), 16), help="processes (default: the cores)")
    common.add_argument("--skip-validate", action="store_true", help="do not decode the images before moving them in")
    common.add_argument("--validate-max-files", type=positive_int, default=None, help="decode only N images per class folder")
    common.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    for command, text in COMMANDS.items():
        p = sub.add_parser(command, parents=[common], help=text, description=text)
        if command == "imagenet":
            p.add_argument("--val-labels", default=None, help="LOC_val_solution.csv (Kaggle) for the flat val images")
            p.add_argument("--lowshot", type=float, nargs="*", default=None, metavar="PERCENT",
                           help="also write seeded low-shot lists (e.g. --lowshot 1 10)")
        if command in ("imagenet", "imagenet-lowshot"):
            p.add_argument("--subset-file", dest="subset_files", nargs="+", default=[],
                           help="published subset lists (SimCLR's 1percent.txt / 10percent.txt)")
            p.add_argument("--seed", type=int, default=0, help="seed of the per-class draw")
        if command == "imagenet-lowshot":
            p.add_argument("--percent", type=float, nargs="+", default=None,
                           help="percent of each class to draw (default 1 10 without --subset-file)")


def dataset_main(argv: list[str]) -> int:
    """``python -m tools.prepare_data DATASET ...`` without the ``builtin`` command's imports; the exit status."""
    parser = argparse.ArgumentParser("prepare_data")
    add_dataset_parsers(parser.add_subparsers(dest="command", required=True))
    return run_dataset(parser.parse_args(argv))[0]


def run_dataset(args: argparse.Namespace, log: Callable[[str], object] = print) -> tuple[int, dict]:
    """Run one dataset command; returns (exit status, summary). Errors print one ``error:`` line (status 1)."""
    from .context import Context

    options = {k: getattr(args, k) for k in ("val_labels", "lowshot", "subset_files", "seed", "percent")
               if hasattr(args, k)}
    if options.get("lowshot") == [] and args.command == "imagenet":
        options["lowshot"] = [1.0, 10.0]
    ctx = Context(dataset=args.command, sources=list(args.sources), to=args.to.expanduser(),
                  verify=not args.no_verify, allow_partial=args.allow_partial, overwrite=args.overwrite,
                  workers=max(1, args.workers), progress=not args.no_progress, validate=not args.skip_validate,
                  validate_max_files=args.validate_max_files, options=options, log=log)
    try:
        if not ctx.sources and args.command != "imagenet-real":
            raise PrepareError(f"--from: {args.command} needs its archives (see --help)")
        if args.command == "imagenet-lowshot":
            summary = _lowshot(ctx)
        else:
            summary = _runner(args.command)(ctx)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1, {}
    except OSError as exc:
        print(f"error: {os_error_line(exc, ctx.to / '.prepare_data')}", file=sys.stderr)
        return 1, {}
    except KeyboardInterrupt:
        print(f"interrupted: finished work is kept in {ctx.to / '.prepare_data'}; a rerun resumes", file=sys.stderr)
        return 130, {}
    return 0, summary


def _lowshot(ctx: Any) -> dict:
    from .lowshot import write_lowshot

    if len(ctx.sources) != 1:
        raise PrepareError("--from: imagenet-lowshot takes the prepared ImageNet folder (holding train/)")
    subset_files = ctx.options.get("subset_files") or []
    percents = ctx.options.get("percent") or ([] if subset_files else [1.0, 10.0])
    try:
        ctx.to.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrepareError(os_error_line(exc)) from None
    return write_lowshot(Path(ctx.sources[0]).expanduser(), ctx.to, percents=percents,
                         seed=int(ctx.options.get("seed") or 0), subset_files=subset_files, log=ctx.log)
