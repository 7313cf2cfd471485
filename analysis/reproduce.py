"""The end-to-end run: DropPos, MAE and AdPE through pretraining, every transfer task and the report.

    ./run.sh demo                                  (= python -m analysis.reproduce --profile demo)
    python -m analysis.reproduce --profile vit_b_200ep --imagenet /data/imagenet --coco /data --ade20k /data/ade \
        --gpus 8                                   (prints the commands)
    python -m analysis.reproduce --profile vit_b_200ep ... --launch      (runs them, in order)

Profiles:
- ``demo`` (default): the built-in data (generated on first use), ViT-Tiny with 8 px
  patches, CPU; each method is pretrained, fine-tuned, linearly probed, transferred to
  detection (ViTDet Mask R-CNN) and segmentation (UperNet), and position-probed; then the
  pictures and the report (``<output>/report.md``). About a quarter of an hour on 2 cores.
- ``vit_b_200ep``, ``vit_b_800ep``, ``vit_l_800ep``: the paper-scale runs on ImageNet-1K,
  COCO and ADE20K, for a GPU cluster: torchrun for pretraining and classification,
  Detectron2's launcher for detection, torchrun + MMEngine's pytorch launcher for
  segmentation. Without ``--launch`` the exact commands are printed.

Every stage writes one metrics JSON; a stage whose metrics already exist is skipped, so
the command can be re-run after an interruption (pretraining itself resumes from its last
checkpoint). Each stage runs as its own process; its output goes to
``<output>/<method>/logs/<stage>.log`` (``--verbose`` also streams it). A stage whose
package is not installed is reported as "skipped (not available)".

This module is the command line; the profiles are in ``analysis.profiles``, the stage
table in ``analysis.stages``, running them in ``analysis.runner`` and the report in
``analysis.report``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .profiles import DEMO, PROFILES, profile_from_args
from .report import make_pictures, write_report
from .runner import run_stages
from .stages import METHODS, ROOT, STAGES, Stage, build_stage_table


def get_args_parser() -> argparse.ArgumentParser:
    """The options of ``python -m analysis.reproduce``."""
    p = argparse.ArgumentParser("droppos end-to-end run", add_help=True)
    p.add_argument("--profile", default="demo", choices=list(PROFILES))
    p.add_argument("--output", default=None, help="output root (default: outputs/<profile>)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of droppos,mae,adpe")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of the stages")
    p.add_argument("--launch", action="store_true", help="paper profiles: run the commands (default: print them)")
    p.add_argument("--dry-run", action="store_true", help="print the commands of any profile and exit")
    p.add_argument("--verbose", action="store_true", help="stream every stage's output")
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="stages run at once (demo default 2: on a small CPU two 1-thread stages beat one 2-thread stage; "
        "paper profiles: always 1)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per stage (OMP_NUM_THREADS); default: the cores divided by --jobs",
    )
    p.add_argument("--stage-timeout", type=float, default=None, help="seconds after which a stage is stopped")
    p.add_argument("--no-pictures", action="store_true")
    g = p.add_argument_group("demo")
    g.add_argument("--data", default="data/builtin", help="built-in data root (generated if missing)")
    g.add_argument("--workers", type=int, default=1, help="data-loader workers per stage")
    g.add_argument("--detection-iters", type=int, default=None, help=f"default {DEMO['detection_iters']}")
    g.add_argument("--segmentation-iters", type=int, default=None, help=f"default {DEMO['segmentation_iters']}")
    g = p.add_argument_group("paper profiles")
    g.add_argument("--imagenet", default="/datasets/imagenet", help="ImageNet-1K root (train/, val/)")
    g.add_argument("--coco", default="/datasets", help="folder holding coco/ (DETECTRON2_DATASETS)")
    g.add_argument("--ade20k", default="/datasets/ade/ADEChallengeData2016", help="ADEChallengeData2016 folder")
    g.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    g.add_argument("--nnodes", type=int, default=1)
    g.add_argument("--node-rank", type=int, default=0)
    g.add_argument("--master-addr", default="127.0.0.1")
    g.add_argument("--master-port", type=int, default=29500)
    return p


def prepare_data(root: Path) -> None:
    """Generate the built-in data set (all formats) unless it is there already."""
    from pretrain.data.synthetic import make_builtin_dataset

    t = time.time()
    make_builtin_dataset(root)  # no-op when the manifest matches
    print(f"[reproduce] built-in data ready at {root} ({time.time() - t:.0f} s)", flush=True)


def build_stages(args: argparse.Namespace, out: Path, methods: list[str]) -> list[Stage]:
    """Every stage of ``methods`` under ``out`` for the profile the options ask for."""
    return build_stage_table(profile_from_args(args), out, methods)


def print_commands(args: argparse.Namespace, out: Path, methods: list[str], stages: list[Stage]) -> None:
    """The commands of the stages, in order, then the one that builds the tables."""
    print(
        f"# {args.profile}: {len(stages)} stages, run in this order from {ROOT} "
        "(each skips itself once its metrics exist):"
    )
    for s in stages:
        print(f"# {s.method} / {s.name} -> {s.metrics}")
        print(s.shell())
    print(f"python -m analysis.tables {' '.join(str(out / m) for m in methods)} --out {out / 'report'}")
    if args.profile != "demo":
        print("# add --launch to run these commands here, one after the other")


def main(argv: list[str] | None = None) -> int:
    """Print or run the stages, then the pictures and the report; 1 if a stage failed, 2 on bad options."""
    args = get_args_parser().parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    chosen = [s for s in args.stages.split(",") if s]
    bad = [m for m in methods if m not in METHODS] + [s for s in chosen if s not in STAGES]
    if bad:
        print(
            f"error: unknown method or stage: {', '.join(bad)} "
            f"(methods: {', '.join(METHODS)}; stages: {', '.join(STAGES)})",
            file=sys.stderr,
        )
        return 2
    out = Path(args.output or f"outputs/{args.profile}")
    table = build_stages(args, out, methods)
    stages = [s for name in STAGES if name in chosen for s in table if s.name == name]  # stage by stage
    if args.dry_run or (args.profile != "demo" and not args.launch):
        print_commands(args, out, methods, stages)
        return 0
    if args.profile == "demo":
        prepare_data(Path(args.data))
    jobs = 1 if args.profile != "demo" else max(1, args.jobs or 2)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)
    env_extra = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if threads else {}
    if jobs > 1:
        print(f"[reproduce] {jobs} stages at a time, {threads} thread(s) each", flush=True)
    t0 = time.time()
    records = run_stages(stages, out, jobs, args.verbose, args.stage_timeout, env_extra)
    made = []
    if not args.no_pictures:
        t = time.time()
        if threads:
            import torch

            torch.set_num_threads(max(threads, 1))
        made = make_pictures(out, Path(args.data if args.profile == "demo" else args.imagenet), methods)
        print(f"[reproduce] pictures: {len(made)} made ({time.time() - t:.0f} s)", flush=True)
    report = write_report(out, args.profile, records, methods, made, time.time() - t0, args.detection_iters)
    print(f"[reproduce] report: {report}  (total {(time.time() - t0) / 60:.1f} min)", flush=True)
    failed = [k for k, r in records.items() if r.get("status") == "failed"]
    if failed:
        print(f"[reproduce] failed stages: {', '.join('/'.join(k) for k in failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
