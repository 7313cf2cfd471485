"""The end-to-end run: DropPos, MAE, AdPE and a scratch baseline through every transfer task, then the report.

    ./run.sh demo                                  (= python -m analysis.reproduce --profile demo)
    ./run.sh demo --seeds 3                        (every transfer stage under seeds 0, 1, 2)
    python -m analysis.reproduce --profile vit_b_200ep --imagenet /data/imagenet --coco /data --ade20k /data/ade \
        --gpus 8                                   (prints the commands)
    python -m analysis.reproduce --profile vit_b_200ep ... --launch      (runs them, in order)
    python -m analysis.reproduce --ablation droppos.mask_ratio=0.5,0.75,0.9   (a DropPos ablation sweep)

Profiles:
- ``demo`` (default): the built-in data (generated on first use), ViT-Tiny with 8 px
  patches, CPU; each method is pretrained, then it and a randomly initialised ``scratch``
  encoder are fine-tuned, linearly probed, k-NN classified, attentive-probed, transferred to
  detection (ViTDet Mask R-CNN) and segmentation (UperNet), and position-probed (not
  scratch); then the pictures and the report (``<output>/report.md``).
- ``vit_b_200ep``, ``vit_b_800ep``, ``vit_l_800ep``: the paper-scale runs on ImageNet-1K,
  COCO and ADE20K, for a GPU cluster: torchrun for pretraining and classification,
  Detectron2's launcher for detection, torchrun + MMEngine's pytorch launcher for
  segmentation. Without ``--launch`` the exact commands are printed. The scratch baseline
  is optional there (``--methods droppos,mae,adpe,scratch``).

Ablation: ``--ablation KEY[=V1,V2,...]`` (repeatable; no values: the key's default grid)
sweeps a key of the DropPos pretraining config, one axis at a time (``--ablation-grid``:
every combination; over ``GRID_CONFIRM_RUNS`` pretraining runs it needs ``--yes``); each
value is pretrained and evaluated by fine-tuning, linear probing, k-NN and the position
probe, then ``<output>/ablation.md`` (``analysis.ablation``, ``analysis.ablation_tables``).

Seeds: ``--seeds N`` runs every transfer stage under seeds 0..N-1 on each pretraining run,
``--pretrain-seeds P`` pretrains each method under seeds 0..P-1 (layout: ``analysis.stages``);
each run records its seed (the stage's own seed option, and ``protocol.json`` in its run
folder). The tables show mean ± standard deviation with n and judge each difference by
Welch's t interval (``analysis.stats``).

Every stage writes one metrics JSON; a stage whose metrics already exist is skipped, so
the command can be re-run after an interruption (pretraining itself resumes from its last
checkpoint). Each stage runs as its own process; its output goes to
``<output>/<run folder>/logs/<stage>.log`` (``--verbose`` also streams it). A stage whose
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

from pretrain.engine.total_batch import TotalBatchError

from ..layout import REPORT_FOLDER
from ..sweeps.ablation import ABLATION_STAGES, GRID_CONFIRM_RUNS, AblationError, build_ablation_stages, plan_sweep, write_plan
from .profiles import DEMO, PROFILES, profile_from_args
from .report import make_pictures, write_report
from .inits import InitError, describe, init_stages, plan_from_args, run_methods, write_init_records
from .interrupt import run_interruptible
from .runner import run_stages
from .slurm import add_slurm_args, check_submission, recorded_args, show_status, submit_run
from .slurm_status import SlurmError
from .protocols import write_protocols
from .stages import INITS, ROOT, STAGES, Profile, Stage, build_stage_table


def get_args_parser() -> argparse.ArgumentParser:
    """The options of ``python -m analysis.reproduce``."""
    p = argparse.ArgumentParser("droppos end-to-end run", add_help=True)
    p.add_argument("--profile", default="demo", choices=list(PROFILES))
    p.add_argument("--output", default=None, help="output root (default: outputs/<profile>)")
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated subset of droppos,mae,adpe,scratch, or none (default: all four in the demo, "
        "the three methods in the paper profiles, none in the evaluation-only profiles)",
    )
    p.add_argument(
        "--init",
        action="append",
        metavar="NAME=PATH",
        help="also evaluate the weights in PATH (any format pretrain.weights reads; never downloaded) as the row "
        "NAME: every transfer and probe stage, no pretraining; repeatable",
    )
    p.add_argument("--reference", default="mae", help="the row the tables' 'vs' column compares against")
    p.add_argument(
        "--no-rerun",
        action="store_true",
        help="refuse, instead of running again, a finished stage whose inputs (checkpoint, recipe file, "
        "arguments) changed",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds of every transfer stage (0 .. N-1), at least 1")
    p.add_argument("--pretrain-seeds", type=int, default=1, help="pretraining seeds per method, at least 1")
    p.add_argument(
        "--stages",
        default=None,
        help="comma-separated subset of the stages (default: all; with --ablation: " + ",".join(ABLATION_STAGES) + ")",
    )
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
    g = p.add_argument_group("ablation (analysis.ablation: DropPos pretraining sweeps)")
    g.add_argument(
        "--ablation",
        action="append",
        metavar="KEY[=V1,V2,...]",
        help="sweep a key of the DropPos pretraining config over these values (no values: its default grid); "
        "repeatable, one axis at a time, the others at the recipe value",
    )
    g.add_argument("--ablation-grid", action="store_true", help="every combination of the --ablation axes")
    g.add_argument(
        "--yes", action="store_true", help=f"confirm a grid over more than {GRID_CONFIRM_RUNS} pretraining runs"
    )
    g = p.add_argument_group("demo")
    g.add_argument("--data", default="data/builtin", help="built-in data root (generated if missing)")
    g.add_argument("--workers", type=int, default=1, help="data-loader workers per stage")
    g.add_argument("--detection-iters", type=int, default=None, help=f"default {DEMO['detection_iters']}")
    g.add_argument("--segmentation-iters", type=int, default=None, help=f"default {DEMO['segmentation_iters']}")
    g = p.add_argument_group("paper profiles")
    g.add_argument("--imagenet", default="/datasets/imagenet", help="ImageNet-1K root (train/, val/)")
    g.add_argument("--imagenet-variants", default="/datasets/imagenet_variants",
                   help="ImageNet-V2 / -R / -A / -Sketch / -C / ReaL as tools.prepare_data lays them out (robustness)")
    g.add_argument("--coco", default="/datasets", help="folder holding coco/ (DETECTRON2_DATASETS)")
    g.add_argument("--ade20k", default="/datasets/ade/ADEChallengeData2016", help="ADEChallengeData2016 folder")
    g.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    g.add_argument("--nnodes", type=int, default=1)
    g.add_argument("--node-rank", type=int, default=0)
    g.add_argument("--master-addr", default="127.0.0.1")
    g.add_argument("--master-port", type=int, default=29500)
    add_slurm_args(p)
    return p


def prepare_data(root: Path) -> None:
    """Generate the built-in data set (all formats) unless it is there already."""
    from pretrain.data.synthetic import make_builtin_dataset

    from .profiles import prepare_demo_variants

    t = time.time()
    make_builtin_dataset(root)  # no-op when the manifest matches
    prepare_demo_variants(root)  # the robustness stage's corrupted val copy (no-op when it matches)
    print(f"[reproduce] built-in data ready at {root} ({time.time() - t:.0f} s)", flush=True)


def build_stages(args: argparse.Namespace, out: Path, methods: list[str], profile: Profile) -> list[Stage]:
    """Every stage of ``methods`` under ``out`` for ``profile`` (the options' profile) and the seeds asked for."""
    return build_stage_table(profile, out, methods, args.seeds, args.pretrain_seeds)


def print_commands(args: argparse.Namespace, out: Path, methods: list[str], stages: list[Stage]) -> None:
    """The commands of the stages, in order, then the one that builds the tables."""
    print(
        f"# {args.profile}: {len(stages)} stages, run in this order from {ROOT} "
        "(each skips itself once its metrics exist):"
    )
    for s in stages:
        print(f"# {s.method} / {s.name} -> {s.metrics}")
        print(f"# not available: {s.available}" if s.available else s.shell())
    if methods:
        ref = f" --reference {args.reference}" if getattr(args, "reference", "mae") != "mae" else ""
        print(f"python -m analysis.tables {' '.join(str(out / m) for m in methods)} --out {out / REPORT_FOLDER}{ref}")
    if args.profile != "demo":
        print("# add --launch to run these commands here, one after the other")


def execution(args: argparse.Namespace) -> tuple[int, int | None, dict[str, str]]:
    """(stages at a time, threads per stage, their environment): the demo 2 x 1 thread, paper profiles 1."""
    jobs = 1 if args.profile != "demo" else max(1, args.jobs or 2)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)
    env_extra = {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if threads else {}
    if jobs > 1:
        print(f"[reproduce] {jobs} stages at a time, {threads} thread(s) each", flush=True)
    return jobs, threads, env_extra


def bad_options(args: argparse.Namespace, methods: list[str], chosen: list[str]) -> str:
    """Why the options cannot run ('' when they can): unknown methods or stages, seeds under 1."""
    bad = [m for m in methods if m not in INITS] + [s for s in chosen if s not in STAGES]
    if bad:
        return (
            f"unknown method or stage: {', '.join(bad)} (methods: {', '.join(INITS)}; stages: {', '.join(STAGES)})"
        )
    for option, value in (("--seeds", args.seeds), ("--pretrain-seeds", args.pretrain_seeds)):
        if value < 1:
            return f"{option} must be at least 1 (one seed per run), got {value}"
    return ""


def exit_code(records: dict[tuple[str, str], dict]) -> int:
    """1, with the failed stages named, when a stage failed; else 0."""
    failed = [k for k, r in records.items() if r.get("status") == "failed"]
    if failed:
        print(f"[reproduce] failed stages: {', '.join('/'.join(k) for k in failed)}", file=sys.stderr)
        return 1
    return 0


def run_ablation(args: argparse.Namespace) -> int:
    """The ``--ablation`` sweep: check every axis and value, print or run the stages, then the ablation report."""
    from ..sweeps.ablation_tables import write_ablation_report

    chosen = [s for s in (args.stages or ",".join(ABLATION_STAGES)).split(",") if s]
    why = bad_options(args, [], chosen)
    if not why and args.methods not in (None, "droppos"):
        why = f"--ablation sweeps DropPos only (got --methods {args.methods})"
    try:
        profile = profile_from_args(args)
        axes, points = plan_sweep(args.ablation, profile, args.ablation_grid, args.pretrain_seeds, args.yes)
    except (AblationError, TotalBatchError) as exc:
        why = why or str(exc)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    out = Path(args.output or ("outputs/ablation" if args.profile == "demo" else f"outputs/ablation_{args.profile}"))
    stages = build_ablation_stages(profile, out, points, args.seeds, args.pretrain_seeds, tuple(chosen))
    print(f"[reproduce] ablation: {len(points)} pretraining configurations ({', '.join(p.name for p in points)})")
    if args.dry_run or (args.profile != "demo" and not args.launch):
        print_commands(args, out, [], stages)
        print(f"python -m analysis.sweeps.ablation_tables {out}")
        return 0
    if args.profile == "demo":
        prepare_data(Path(args.data))
    jobs, _, env_extra = execution(args)
    t0 = time.time()
    write_plan(out, axes, points, args.profile)
    write_protocols([s for s in stages if not s.metrics.is_file()], out, args.seeds, args.pretrain_seeds)
    records = run_stages(stages, out, jobs, args.verbose, args.stage_timeout, env_extra, no_rerun=args.no_rerun)
    report = write_ablation_report(out, no_pictures=args.no_pictures)
    print(f"[reproduce] ablation report: {report}  (total {(time.time() - t0) / 60:.1f} min)", flush=True)
    return exit_code(records)


def main(argv: list[str] | None = None) -> int:
    """Print or run the stages, then the pictures and the report; 1 if a stage failed, 2 on bad options,
    130 with one line on Ctrl-C (the running stages stopped, ``analysis.reproduce.interrupt``)."""
    return run_interruptible(lambda: _main(argv))


def _main(argv: list[str] | None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.status or args.resubmit_failed:  # the options of that SLURM run, from its jobs.json
        args = recorded_args(args, get_args_parser())
        if args is None:
            return 2
    if args.ablation and args.launcher == "slurm":
        print("error: --launcher slurm runs the end-to-end stages; --ablation sweeps run locally", file=sys.stderr)
        return 2
    if args.ablation:
        return run_ablation(args)
    methods = run_methods(args)
    chosen = [s for s in (args.stages or ",".join(STAGES)).split(",") if s]
    why = bad_options(args, methods, chosen)
    inits = []
    try:
        inits = plan_from_args(args, methods) if not why else []  # every --init read and checked before any stage
    except InitError as exc:
        why = str(exc)
    rows = [*methods, *(i.name for i in inits)]
    if not why and args.reference != "mae" and args.reference not in rows:
        why = f"--reference {args.reference}: not a row of this run (rows: {', '.join(rows)})"
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    out = Path(args.output or f"outputs/{args.profile}")
    try:
        profile = profile_from_args(args)  # once: a paper profile's batch plan prints its notes as it is made
        table = build_stages(args, out, methods, profile) + init_stages(profile, out, inits, args.seeds)
    except TotalBatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stages = [s for name in STAGES if name in chosen for s in table if s.name == name]  # stage by stage
    if args.status:
        return show_status(out, stages)
    print_only = args.dry_run or (args.profile != "demo" and not args.launch and args.launcher == "local")
    submission = None
    if (args.launcher == "slurm" or args.resubmit_failed) and not print_only:
        try:  # the SLURM options, the cluster and every job's resources, before anything is written
            submission = check_submission(args, profile, stages)
        except SlurmError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    for init in inits:
        print(describe(init), flush=True)
    if print_only:
        print_commands(args, out, rows, stages)
        return 0
    if args.profile == "demo":
        prepare_data(Path(args.data))
    jobs, threads, env_extra = execution(args)
    t0 = time.time()
    write_protocols([s for s in stages if not s.metrics.is_file()], out, args.seeds, args.pretrain_seeds)
    write_init_records(out, inits, args.seeds)
    if submission is not None:
        return submit_run(args, sys.argv[1:] if argv is None else list(argv), out, rows, table, stages, submission)
    records = run_stages(stages, out, jobs, args.verbose, args.stage_timeout, env_extra, no_rerun=args.no_rerun)
    made = []
    if not args.no_pictures:
        t = time.time()
        if threads:  # every stage has finished: the pictures get all the cores
            import torch

            torch.set_num_threads(max(threads * jobs, 1))
        made = make_pictures(out, Path(args.data if args.profile == "demo" else args.imagenet), rows)
        print(f"[reproduce] pictures: {len(made)} made ({time.time() - t:.0f} s)", flush=True)
    folders = list(dict.fromkeys(s.method for s in table))
    report = write_report(
        out, args.profile, records, folders, made, time.time() - t0, args.detection_iters, reference=args.reference
    )
    print(f"[reproduce] report: {report}  (total {(time.time() - t0) / 60:.1f} min)", flush=True)
    return exit_code(records)


if __name__ == "__main__":
    sys.exit(main())
