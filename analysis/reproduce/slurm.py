"""``python -m analysis.reproduce --launcher slurm``: the end-to-end run as SLURM jobs, through submitit.

One job per stage (one task per node; :mod:`analysis.reproduce.slurm_job` runs it), with
``afterok`` dependencies on the jobs that write what it reads (pretraining before its
transfer stages; the fine-tuned models before the pretrained-vs-fine-tuned probe); the
transfer seeds of one stage on one backbone form a job array; the report is the last job
(``afterany``: it reports failed stages too). Each job asks for what
:mod:`analysis.reproduce.slurm_resources` gives its stage (``--time-limit`` overrides the
time), on ``--partition`` / ``--account`` / ``--qos`` / ``--constraint``, plus any
``--slurm-extra KEY=VALUE``; submitit's files and logs go to ``<out>/slurm/<job id>/``, each
stage's own log to ``<out>/<run folder>/logs/<stage>.log``, the job ids to ``<out>/jobs.json``.
Jobs are requeueable and submitit requeues them on preemption and ``--signal-delay``
seconds before their time limit; each stage resumes from its checkpoints.

Before anything is written or submitted (:func:`check_submission`, right after the stage
table is built): the options well-formed (``--slurm-extra KEY=VALUE``, ``--time-limit`` at
least 1), SLURM reachable (client commands on PATH, controller answering), the partition
known, each job fitting its nodes (GPUs, CPUs, memory, node count, time), and each time limit
longer than one checkpoint interval plus the signal delay: one ``error:`` line otherwise. Running the same command again submits only what is neither
done nor queued or running (a job blocked behind a failed one is cancelled and submitted
again); ``--resubmit-failed OUTPUT`` submits only the stages whose jobs failed (and the
report); ``--status OUTPUT`` prints every stage's state (``analysis.reproduce.slurm_status``).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from .runner import is_done, write_status
from ..layout import JOBS_FILE, SLURM_FOLDER
from .slurm_resources import REPORT, Resources, stage_resources
from .slurm_status import SlurmError, JobState, print_status, queue_states, read_jobs, run_slurm, stage_key, write_jobs
from .stages import ROOT, Profile, Stage

MAX_TIMEOUTS = 20  # requeues after a time limit (preemptions are not counted)
CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")


def add_slurm_args(p: argparse.ArgumentParser) -> None:
    """The options of ``--launcher slurm``, ``--status`` and ``--resubmit-failed`` (and ``--allow-batch-change``)."""
    g = p.add_argument_group("SLURM (analysis.reproduce.slurm: one job per stage, through submitit)")
    g.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: run or print the stages here (default); slurm: submit one job per stage")
    g.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default partition)")
    g.add_argument("--account", default=None)
    g.add_argument("--qos", default=None)
    g.add_argument("--constraint", default=None)
    g.add_argument("--slurm-extra", action="append", default=[], metavar="KEY=VALUE",
                   help="any further sbatch option (repeatable), e.g. --slurm-extra exclusive=true")
    g.add_argument("--time-limit", type=int, default=None, metavar="MIN",
                   help="time limit of every stage's job in minutes (default: each stage's own)")
    g.add_argument("--signal-delay", type=int, default=120, metavar="S",
                   help="seconds before the time limit at which a job checkpoints and requeues itself")
    g.add_argument("--status", default=None, metavar="OUTPUT", help="print the state of every stage of a SLURM run")
    g.add_argument("--resubmit-failed", default=None, metavar="OUTPUT",
                   help="submit again the stages of a SLURM run whose jobs failed (then the report)")
    g.add_argument("--allow-batch-change", action="store_true",
                   help="paper profiles: when --gpus x --nnodes cannot keep a recipe's total batch exactly, "
                   "run at the nearest one (its lr is printed) instead of refusing")


# --------------------------------------------------------------------------- options and checks
@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    partition: str | None
    account: str | None
    qos: str | None
    constraint: str | None
    extra: dict[str, str]
    time_limit: int | None
    signal_delay: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "SlurmOptions":
        """The options of ``args``; SlurmError (one line) for a malformed ``--slurm-extra`` or a ``--time-limit``
        under one minute."""
        if args.time_limit is not None and args.time_limit < 1:
            raise SlurmError(f"--time-limit {args.time_limit}: a job's time limit is at least 1 minute")
        extra = {}
        for item in args.slurm_extra:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SlurmError(f"--slurm-extra {item!r} must look like KEY=VALUE (an sbatch option without --)")
            extra[key.strip().lstrip("-")] = value
        return cls(args.partition, args.account, args.qos, args.constraint, extra, args.time_limit, args.signal_delay)


def _minutes(text: str) -> int | None:
    """SLURM's time ([days-]hours:minutes:seconds, minutes:seconds, minutes) in minutes; None = no limit."""
    text = text.strip()
    if text.upper() in ("INFINITE", "UNLIMITED", "N/A", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)


def _gpus(gres: str) -> int:
    """GPUs in one node's gres string (``gpu:8``, ``gpu:a100:4(S:0-1),gpu:v100:2``, ``(null)``)."""
    return sum(int(n) for n in re.findall(r"gpu(?::[^:,()]+)?:(\d+)", gres))


def partition_limits(partition: str | None) -> tuple[str, dict[str, int | None]]:
    """(partition, its largest node's GPUs / CPUs / memory MB, its node count and time limit in minutes)."""
    text = run_slurm(["sinfo", "-h", "-o", "%P|%G|%c|%m|%D|%l"])
    rows: dict[str, list[list[str]]] = {}
    default = None
    for line in text.splitlines():
        cells = line.strip().split("|")
        if len(cells) != 6:
            continue
        name = cells[0].rstrip("*")
        default = name if cells[0].endswith("*") else default
        rows.setdefault(name, []).append(cells)
    if partition is None:
        if default is None:
            raise SlurmError(f"the cluster has no default partition: name one with --partition ({', '.join(rows)})")
        partition = default
    if partition not in rows:
        raise SlurmError(f"partition {partition!r} does not exist (partitions: {', '.join(rows) or 'none'})")
    cells = rows[partition]
    limits = {
        "gpus": max(_gpus(c[1]) for c in cells),
        "cpus": max(int(c[2].rstrip("+")) for c in cells),
        "mem_mb": max(int(c[3].rstrip("+")) for c in cells),
        "nodes": sum(int(c[4]) for c in cells),
        "time_min": _minutes(cells[0][5]),
    }
    return partition, limits


def check_job(label: str, res: Resources, partition: str, limits: dict, signal_delay: int) -> str:
    """Why ``res`` cannot run on ``partition`` ('' when it can)."""
    if res.gpus > (limits["gpus"] or 0):
        return (f"{label} asks for {res.gpus} GPUs per node (--gpus), more than the nodes of partition "
                f"{partition} have ({limits['gpus']})")
    if res.nodes > limits["nodes"]:
        return f"{label} asks for {res.nodes} nodes (--nnodes), partition {partition} has {limits['nodes']}"
    if res.cpus > limits["cpus"]:
        return f"{label} asks for {res.cpus} CPUs per node, the nodes of partition {partition} have {limits['cpus']}"
    if res.mem_gb * 1024 > limits["mem_mb"]:
        return f"{label} asks for {res.mem_gb} GB per node, the nodes of partition {partition} have {limits['mem_mb']} MB"
    if limits["time_min"] is not None and res.time_min > limits["time_min"]:
        return (f"{label}: time limit {res.time_min} min is over partition {partition}'s {limits['time_min']} min "
                "(pass --time-limit)")
    usable = res.time_min * 60 - signal_delay
    if res.checkpoint_min and usable < res.checkpoint_min * 60:
        return (f"{label}: --time-limit {res.time_min} min leaves {max(usable, 0) / 60:.1f} min before the requeue "
                f"signal (--signal-delay {signal_delay} s), less than one checkpoint interval (~{res.checkpoint_min:g} min): "
                "it would never get past a checkpoint")
    return ""


def check_cluster(opts: SlurmOptions, jobs: list[tuple[str, Resources]]) -> str:
    """Why these jobs cannot be submitted ('' when they can): SLURM, partition, resources, time limits."""
    missing = [c for c in CLIENTS if shutil.which(c) is None]
    if missing:
        return f"SLURM not reachable: {', '.join(missing)} not found on PATH (--launcher slurm submits with sbatch)"
    try:
        partition, limits = partition_limits(opts.partition)
    except SlurmError as exc:
        text = str(exc)
        return text if text.startswith(("partition", "the cluster")) else f"SLURM controller not reachable ({text})"
    for label, res in jobs:
        why = check_job(label, res, partition, limits, opts.signal_delay)
        if why:
            return why
    return ""


# --------------------------------------------------------------------------- the jobs
def launch_of(stage: Stage, profile: Profile, gpus: int):
    """Where the stage's command holds its launcher (rebuilt on the node by ``slurm_job.node_command``)."""
    from .slurm_job import Launch

    cmd = stage.command
    if profile.parallel and profile.parallel[0] == "torchrun" and cmd[: len(profile.parallel)] == profile.parallel:
        return Launch("torchrun", 0, len(profile.parallel), gpus)
    if "detection.train_net" in cmd and profile.name != "demo":
        at = cmd.index("detection.train_net") + 1
        return Launch("detectron2", at, len(profile.detection_flags), gpus)
    return Launch()


def _resources(args: argparse.Namespace, opts: SlurmOptions, profile: Profile, stage: Stage) -> Resources:
    """The stage's job: every GPU of every node where its command holds a launcher, else one GPU."""
    large = profile_size_large(args.profile)
    parallel = launch_of(stage, profile, args.gpus).kind != "process"
    res = stage_resources(args.profile, stage.name, args.gpus, args.nnodes, args.threads, large, parallel=parallel)
    return dataclasses.replace(res, time_min=opts.time_limit) if opts.time_limit is not None else res


def profile_size_large(profile: str) -> bool:
    from .profiles import PROFILES

    return PROFILES.get(profile, {}).get("size") == "large"


def _executor(out: Path, opts: SlurmOptions, res: Resources, name: str, dependency: str):
    import submitit

    ex = submitit.SlurmExecutor(folder=out / SLURM_FOLDER / "%j", max_num_timeout=MAX_TIMEOUTS)
    params = dict(
        job_name=name, time=res.time_min, nodes=res.nodes, ntasks_per_node=1, cpus_per_task=res.cpus,
        mem=f"{res.mem_gb}GB", signal_delay_s=opts.signal_delay, stderr_to_stdout=True,
        setup=[f"cd {shlex.quote(str(ROOT))}", f"export PYTHONPATH={shlex.quote(str(ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"],
        additional_parameters={"requeue": True, **({"dependency": dependency} if dependency else {}), **opts.extra},
    )
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(opts, key):
            params[key] = getattr(opts, key)
    ex.update_parameters(**params)
    return ex


def _producers(stage: Stage, table: list[Stage]) -> list[Stage | None]:
    """For each file the stage needs, the stage that writes it (None: none in the table)."""
    return [next((p for p in table if p is not stage and p.metrics.parent == need.parent), None) for need in stage.needs]


def recorded_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace | None:
    """The options of the submission recorded in ``OUTPUT/jobs.json`` (for ``--status`` / ``--resubmit-failed``)."""
    out = Path(args.status or args.resubmit_failed)
    try:
        argv = read_jobs(out).get("argv")
    except SlurmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if argv is None:
        print(f"error: {out / JOBS_FILE} not found: nothing was submitted there with --launcher slurm", file=sys.stderr)
        return None
    again = parser.parse_args(argv)
    again.status, again.resubmit_failed, again.output = args.status, args.resubmit_failed, str(out)
    return again


def show_status(out: Path, stages: list[Stage]) -> int:
    """``--status OUTPUT``: every stage's state; 1 when one failed, 2 when SLURM does not answer."""
    try:
        return print_status(out, stages, read_jobs(out))
    except SlurmError as exc:
        print(f"error: SLURM controller not reachable ({exc})", file=sys.stderr)
        return 2


@dataclasses.dataclass(frozen=True)
class Submission:
    """What :func:`check_submission` found fit to submit: the options, the profile, each stage's job."""

    opts: SlurmOptions
    profile: Profile
    resources: dict[str, Resources]  # stage key -> its job


def check_submission(args: argparse.Namespace, profile: Profile, stages: list[Stage]) -> Submission:
    """The SLURM options, the cluster and every stage's job (and the report's) checked, before anything is
    written; SlurmError in one line when they cannot be submitted."""
    opts = SlurmOptions.from_args(args)
    resources = {stage_key(s): _resources(args, opts, profile, s) for s in stages}
    why = check_cluster(opts, [(k, r) for k, r in resources.items()] + [("report", REPORT)])
    if why:
        raise SlurmError(why)
    return Submission(opts, profile, resources)


def submit_run(
    args: argparse.Namespace, argv: list[str], out: Path, rows: list[str], table: list[Stage], stages: list[Stage],
    submission: Submission,
) -> int:
    """Submit the stages not done (``--resubmit-failed``: those whose jobs failed), then the report of ``rows``
    (the methods and the ``--init`` names); ``submission``: what :func:`check_submission` passed."""
    opts, profile, resources = submission.opts, submission.profile, submission.resources
    jobs = read_jobs(out)
    states = queue_states()
    record = {"argv": jobs.get("argv", argv) if args.resubmit_failed else argv, "profile": args.profile, "stages": jobs.get("stages", {}),
              "report": jobs.get("report", {}), "submissions": jobs.get("submissions", [])}
    job_of: dict[str, str] = {}  # stage key -> the live or new job that will write its output
    groups: dict[tuple, list[tuple[Stage, list[str]]]] = {}
    for stage in stages:
        key = stage_key(stage)
        before = record["stages"].get(key)
        state = states.get(before["job_id"]) if before else None
        if is_done(stage):
            print(f"[reproduce] {key}: done before ({stage.metrics}), skipped")
            continue
        if stage.available:
            _skip(stage, out, f"not available: {stage.available}")
            continue
        if state is not None and state.live:
            job_of[key] = before["job_id"]
            print(f"[reproduce] {key}: job {before['job_id']} {state.state.lower()}, left alone")
            continue
        if state is not None and state.blocked:
            run_slurm(["scancel", before["job_id"]])
        if args.resubmit_failed and not before:
            continue
        after, missing = [], None  # the stages whose jobs write what this one reads
        for need, producer in zip(stage.needs, _producers(stage, table)):
            if producer is not None and stage_key(producer) in job_of:
                after.append(stage_key(producer))  # even where an earlier, unfinished run left the file
            elif not need.is_file():
                missing = need
        if missing is not None:
            _skip(stage, out, f"needs {missing} (no stage of this run writes it)")
            continue
        groups.setdefault((stage.name, stage.init, stage.pretrain_seed), []).append((stage, after))
        job_of[key] = ""  # known once its group is submitted (groups come in stage order, producers first)
    submitted = 0
    for group in groups.values():
        resolved = [(stage, sorted({job_of[k] for k in after})) for stage, after in group]
        ids = _submit_group(out, opts, profile, resources, resolved, args.no_rerun)
        for (stage, deps), job_id in zip(resolved, ids):
            key = stage_key(stage)
            job_of[key] = job_id
            old = record["stages"].get(key, {})
            record["stages"][key] = {
                "job_id": job_id, "dependency": deps, "array": len(group) > 1, "submitted": time.time(),
                "resources": dataclasses.asdict(resources[key]), "slurm_folder": str(out / SLURM_FOLDER / job_id),
                "history": old.get("history", []) + ([old["job_id"]] if old.get("job_id") else []),
            }
            print(f"[reproduce] {key}: job {job_id}" + (f" (after {', '.join(deps)})" if deps else ""), flush=True)
        submitted += len(group)
        write_jobs(out, record)
    report_id = _submit_report(args, out, opts, rows, table, [j for j in job_of.values() if j], record, states)
    record["submissions"].append({"time": time.time(), "stages": submitted, "report": report_id})
    write_jobs(out, record)
    print(f"[reproduce] {submitted} stage job(s) submitted, report job {report_id}; jobs: {out / JOBS_FILE}; "
          f"follow with: python -m analysis.reproduce --status {out}", flush=True)
    return 0


def _skip(stage: Stage, out: Path, reason: str) -> None:
    """Record a stage that is not submitted, as the local runner does."""
    print(f"[reproduce] {stage_key(stage)}: skipped ({reason})")
    write_status(out / stage.method, stage.name, {"status": "skipped", "reason": reason})


def _submit_group(
    out: Path,
    opts: SlurmOptions,
    profile: Profile,
    resources: dict[str, Resources],
    group: list[tuple[Stage, list[str]]],
    no_rerun: bool = False,
) -> list[str]:
    """One job (or one array: the seeds of a stage) for ``group``; their job ids."""
    from .slurm_job import StageJob

    first = group[0][0]
    res = resources[stage_key(first)]
    deps = sorted({d for _, ds in group for d in ds})
    name = f"droppos-{first.method.replace('/', '-')}-{first.name}" if len(group) == 1 else f"droppos-{first.init}-{first.name}"
    ex = _executor(out, opts, res, name, "afterok:" + ":".join(deps) if deps else "")
    threads = {k: str(res.cpus) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} if profile.name == "demo" else {}
    with ex.batch():
        jobs = [ex.submit(StageJob(s, out, launch_of(s, profile, res.gpus), threads, no_rerun)) for s, _ in group]
    return [j.job_id for j in jobs]


def _submit_report(args, out, opts, rows, table, after: list[str], record: dict, states: dict[str, JobState]) -> str:
    """The report job after every stage job (``afterany``); a still-pending earlier one is replaced."""
    from .slurm_job import ReportJob

    old = record["report"].get("job_id")
    if old and old in states and states[old].state == "PENDING":
        run_slurm(["scancel", old])
    folders = list(dict.fromkeys(s.method for s in table))
    data = None if args.no_pictures else Path(args.data if args.profile == "demo" else args.imagenet)
    ex = _executor(out, opts, dataclasses.replace(REPORT, cpus=max(1, args.threads or 1)), "droppos-report",
                   "afterany:" + ":".join(after) if after else "")
    job = ex.submit(ReportJob(out, args.profile, folders, rows, data, time.time(), args.detection_iters,
                              args.threads, args.reference))
    record["report"] = {"job_id": job.job_id, "dependency": after, "submitted": time.time(),
                        "history": record["report"].get("history", []) + ([old] if old else [])}
    return job.job_id
