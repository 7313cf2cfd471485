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
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from pretrain.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("droppos", "mae", "adpe")
STAGES = ("pretrain", "finetune", "linear_probe", "detection", "segmentation", "position_probe")
METRICS = {
    "pretrain": "pretrain_metrics.json",
    "finetune": "classification_metrics.json",
    "linear_probe": "classification_metrics.json",
    "detection": "detection_metrics.json",
    "segmentation": "segmentation_metrics.json",
    "position_probe": "position_probe_metrics.json",
}
PROBE_SWEEP = "0,0.25,0.5,0.75,1.0"


@dataclass
class Stage:
    """One step of the pipeline for one method: a command that leaves ``metrics`` behind.

    Attributes:
        method, name: which run and which stage.
        command: argv of the process (run from the repository root).
        metrics: the JSON file whose presence means "done".
        needs: files that must exist before it can run (e.g. the pretrained backbone).
        available: '' when its packages are importable, else why not.
        env: extra environment variables.
    """

    method: str
    name: str
    command: list[str]
    metrics: Path
    needs: list[Path] = field(default_factory=list)
    available: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def shell(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + " ".join(shlex.quote(c) for c in self.command)


# --------------------------------------------------------------------------- availability
def missing_modules(*modules: str) -> str:
    """'' if every module can be found, else 'name not installed'."""
    for mod in modules:
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} not installed"
        except (ImportError, ValueError):
            return f"{mod} not installed"
    return ""


def import_check(code: str, what: str) -> str:
    """Run ``code`` in a fresh interpreter: '' if it works (packages whose import has side effects)."""
    try:
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return f"{what}: import check timed out"
    if r.returncode == 0:
        return ""
    last = (r.stderr.strip().splitlines() or ["?"])[-1]
    return f"{what} not importable ({last[:120]})"


def missing_files(*paths: Path) -> str:
    for p in paths:
        if not (ROOT / p).exists():
            return f"{p} not found"
    return ""


# --------------------------------------------------------------------------- demo profile
# Budget of the demo (2 CPU cores, ~15 min in all): epochs and iterations per stage. Measured CPU
# time per method and stage (one thread): pretraining 1.4-3.2 min, fine-tuning 2.1, linear probe
# 0.3, detection 1.7, segmentation 0.9, position probe 1.0. Detection needs ~300 iterations
# (~7.5 CPU min per method, detection/README.md) before its AP leaves zero: raise it with
# --detection-iters when there is time.
DEMO = {
    "pretrain_recipes": {
        "droppos": "droppos_vit_tiny_builtin.yaml",
        "mae": "mae_vit_tiny_builtin.yaml",
        "adpe": "adpe_vit_tiny_builtin.yaml",
    },
    "pretrain_overrides": {"droppos": ["train.epochs=6"], "mae": ["train.epochs=6"], "adpe": ["train.epochs=3"]},
    "finetune": ["train.epochs=3"],
    "linear_probe": ["train.epochs=30"],
    "detection_iters": 60,
    "segmentation_iters": 60,
    "probe_img_size": 64,
    "probe_train_images": 600,
}


def ade_data_root(ade: Path) -> list[str]:
    """``--cfg-options`` pointing the three segmentation dataloaders at one ADEChallengeData2016 folder."""
    return [f"{loader}.dataset.data_root={ade}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")]


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def demo_stages(out: Path, data: Path, methods: list[str], workers: int) -> list[Stage]:
    """The CPU demo: every stage of every method on the built-in data."""
    stages = []
    imagenet = data / "imagenet"
    has_cls = missing_modules("classification.finetune", "classification.linear_probe")
    has_det = missing_modules("detectron2", "detection.train_net")
    seg_check: str | None = None
    for method in methods:
        run = out / method
        pre = run / "pretrain"
        backbone = pre / "backbone.pth"
        recipe = Path("pretrain/configs") / DEMO["pretrain_recipes"][method]
        stages.append(
            Stage(
                method,
                "pretrain",
                _py(
                    "-m",
                    "pretrain.main",
                    "--config",
                    str(recipe),
                    f"train.output_dir={pre}",
                    f"data.path={imagenet}",
                    "data.builtin=true",
                    f"data.num_workers={workers}",
                    "train.progress=false",
                    "train.tensorboard=false",
                    *DEMO["pretrain_overrides"][method],
                ),
                pre / METRICS["pretrain"],
                available=missing_files(recipe)
                or (missing_modules("pretrain.models.adpe") if method == "adpe" else ""),
            )
        )
        for task in ("finetune", "linear_probe"):
            cfg = Path("classification/configs") / f"{task}_vit_tiny_builtin.yaml"
            stages.append(
                Stage(
                    method,
                    task,
                    _py(
                        "-m",
                        f"classification.{task}",
                        "--config",
                        str(cfg),
                        f"checkpoint={backbone}",
                        f"train.output_dir={run / task}",
                        f"data.path={imagenet}",
                        "data.builtin=true",
                        f"data.num_workers={workers}",
                        "train.progress=false",
                        "train.tensorboard=false",
                        *DEMO[task],
                    ),
                    run / task / METRICS[task],
                    needs=[backbone],
                    available=has_cls or missing_files(cfg),
                )
            )
        it = DEMO["detection_iters"]
        det_cfg = Path("detection/configs/mask_rcnn_vitdet_tiny_builtin.py")
        stages.append(
            Stage(
                method,
                "detection",
                _py(
                    "-m",
                    "detection.train_net",
                    "--config-file",
                    str(det_cfg),
                    f"train.init_checkpoint={backbone}",
                    f"train.output_dir={run / 'detection'}",
                    f"train.max_iter={it}",
                    f"train.eval_period={it}",
                    f"train.checkpointer.period={it}",
                    "train.log_period=10",
                    f"lr_multiplier.scheduler.num_updates={it}",
                    f"lr_multiplier.scheduler.milestones=[{int(it * 0.889)}, {int(it * 0.963)}]",
                    f"lr_multiplier.warmup_length={min(25, it // 4) / it:.4f}",
                    f"dataloader.train.dataset.names.root={data}",
                    f"dataloader.test.dataset.names.root={data}",
                    f"dataloader.evaluator.dataset_name.root={data}",
                    # a few dozen iterations leave most scores under Detectron2's 0.05 default:
                    # keep them, so that AP is defined
                    "model.roi_heads.box_predictor.test_score_thresh=0.001",
                ),
                run / "detection" / METRICS["detection"],
                needs=[backbone],
                available=has_det or missing_files(det_cfg),
            )
        )
        seg_cfg = Path("segmentation/configs/upernet_vit-tiny-p8_1xb8-400it_builtin-ade-64x64.py")
        if seg_check is None:
            seg_check = (
                missing_files(seg_cfg)
                or missing_modules("mmseg", "mmcv")
                or import_check("import mmcv.ops, mmseg.models", "mmseg / mmcv.ops")
            )
        it = DEMO["segmentation_iters"]
        ade = data / "ade20k" / "ADEChallengeData2016"
        stages.append(
            Stage(
                method,
                "segmentation",
                _py(
                    "segmentation/train.py",
                    str(seg_cfg),
                    "--checkpoint",
                    str(backbone),
                    "--work-dir",
                    str(run / "segmentation"),
                    "--cfg-options",
                    f"train_cfg.max_iters={it}",
                    f"train_cfg.val_interval={it}",
                    f"param_scheduler.0.end={max(it // 10, 1)}",
                    f"param_scheduler.1.begin={max(it // 10, 1)}",
                    f"param_scheduler.1.end={it}",
                    f"default_hooks.checkpoint.interval={it}",
                    "default_hooks.logger.interval=10",
                    *ade_data_root(ade),
                ),
                run / "segmentation" / METRICS["segmentation"],
                needs=[backbone],
                available=seg_check,
            )
        )
        stages.append(
            Stage(
                method,
                "position_probe",
                _py(
                    "-m",
                    "analysis.position_probe",
                    "--checkpoint",
                    str(backbone),
                    "--data",
                    str(data),
                    "--sweep",
                    PROBE_SWEEP,
                    "--output",
                    str(run / "position_probe"),
                    "--label",
                    method,
                    "--img-size",
                    str(DEMO["probe_img_size"]),
                    "--num-workers",
                    "0",
                    "--train-images",
                    str(DEMO["probe_train_images"]),
                ),
                run / "position_probe" / METRICS["position_probe"],
                needs=[backbone],
            )
        )
    return stages


# --------------------------------------------------------------------------- paper profiles
PAPER_PROFILES = {
    "vit_b_200ep": {
        "size": "base",
        "pretrain": {
            "droppos": ("droppos_vit_base_200ep.yaml", []),
            "mae": ("mae_vit_base_800ep.yaml", ["train.epochs=200"]),
            "adpe": ("adpe_rel_coord_vit_base_400ep.yaml", ["train.epochs=200"]),
        },
    },
    "vit_b_800ep": {
        "size": "base",
        "pretrain": {
            "droppos": ("droppos_vit_base_800ep.yaml", []),
            "mae": ("mae_vit_base_800ep.yaml", []),
            "adpe": ("adpe_rel_coord_vit_base_1600ep.yaml", ["train.epochs=800"]),
        },
    },
    "vit_l_800ep": {
        "size": "large",
        "pretrain": {
            "droppos": ("droppos_vit_large_800ep.yaml", []),
            "mae": ("mae_vit_base_800ep.yaml", ["model.size=large"]),
            "adpe": ("adpe_rel_coord_vit_large_1600ep.yaml", ["train.epochs=800"]),
        },
    },
}
PAPER_TRANSFER = {
    "base": {
        "finetune": "finetune_vit_base_100ep.yaml",
        "finetune_rel": "finetune_vit_base_relpos.yaml",
        "linear_probe": "linear_probe_vit_base.yaml",
        "detection": "mask_rcnn_vitdet_b_100ep.py",
        "segmentation": "upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py",
    },
    "large": {
        "finetune": "finetune_vit_large_50ep.yaml",
        "finetune_rel": "finetune_vit_large_50ep.yaml",
        "linear_probe": "linear_probe_vit_large.yaml",
        "detection": "mask_rcnn_vitdet_l_100ep.py",
        "segmentation": "upernet_vit-l16_8xb2-amp-160k_ade20k-512x512.py",
    },
}


def _torchrun(args: argparse.Namespace) -> list[str]:
    cmd = ["torchrun", f"--nproc_per_node={args.gpus}"]
    if args.nnodes > 1:
        cmd += [
            f"--nnodes={args.nnodes}",
            f"--node_rank={args.node_rank}",
            f"--master_addr={args.master_addr}",
            f"--master_port={args.master_port}",
        ]
    return cmd


def paper_stages(profile: str, out: Path, methods: list[str], args: argparse.Namespace) -> list[Stage]:
    """Paper-scale commands for one profile (ImageNet-1K, COCO, ADE20K on GPUs)."""
    spec = PAPER_PROFILES[profile]
    transfer = PAPER_TRANSFER[spec["size"]]
    stages = []
    for method in methods:
        run = out / method
        pre = run / "pretrain"
        backbone = pre / "backbone.pth"
        recipe, extra = spec["pretrain"][method]
        stages.append(
            Stage(
                method,
                "pretrain",
                _torchrun(args)
                + [
                    "-m",
                    "pretrain.main",
                    "--config",
                    f"pretrain/configs/{recipe}",
                    f"train.output_dir={pre}",
                    f"data.path={args.imagenet}",
                    *extra,
                ],
                pre / METRICS["pretrain"],
            )
        )
        for task in ("finetune", "linear_probe"):
            cfg = transfer["finetune_rel" if task == "finetune" and method == "adpe" else task]
            stages.append(
                Stage(
                    method,
                    task,
                    _torchrun(args)
                    + [
                        "-m",
                        f"classification.{task}",
                        "--config",
                        f"classification/configs/{cfg}",
                        f"checkpoint={backbone}",
                        f"train.output_dir={run / task}",
                        f"data.path={args.imagenet}",
                    ],
                    run / task / METRICS[task],
                    needs=[backbone],
                )
            )
        det = ["python", "-m", "detection.train_net", "--num-gpus", str(args.gpus)]
        if args.nnodes > 1:
            det += [
                "--num-machines",
                str(args.nnodes),
                "--machine-rank",
                str(args.node_rank),
                "--dist-url",
                f"tcp://{args.master_addr}:{args.master_port}",
            ]
        stages.append(
            Stage(
                method,
                "detection",
                det
                + [
                    "--config-file",
                    f"detection/configs/{transfer['detection']}",
                    f"train.init_checkpoint={backbone}",
                    f"train.output_dir={run / 'detection'}",
                ],
                run / "detection" / METRICS["detection"],
                needs=[backbone],
                env={"DETECTRON2_DATASETS": str(args.coco)},
            )
        )
        ade = (
            Path(args.ade20k) / "ADEChallengeData2016"
            if not str(args.ade20k).endswith("ADEChallengeData2016")
            else Path(args.ade20k)
        )
        stages.append(
            Stage(
                method,
                "segmentation",
                _torchrun(args)
                + [
                    "segmentation/train.py",
                    f"segmentation/configs/{transfer['segmentation']}",
                    "--launcher",
                    "pytorch",
                    "--checkpoint",
                    str(backbone),
                    "--work-dir",
                    str(run / "segmentation"),
                    "--cfg-options",
                    *ade_data_root(ade),
                ],
                run / "segmentation" / METRICS["segmentation"],
                needs=[backbone],
            )
        )
        stages.append(
            Stage(
                method,
                "position_probe",
                [
                    "python",
                    "-m",
                    "analysis.position_probe",
                    "--checkpoint",
                    str(backbone),
                    "--data",
                    str(args.imagenet),
                    "--sweep",
                    PROBE_SWEEP,
                    "--output",
                    str(run / "position_probe"),
                    "--label",
                    method,
                    "--img-size",
                    "224",
                ],
                run / "position_probe" / METRICS["position_probe"],
                needs=[backbone],
            )
        )
    return stages


# --------------------------------------------------------------------------- running
def read_status(run_dir: Path) -> dict:
    path = run_dir / "stage_status.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


_STATUS_LOCK = threading.Lock()
_PRINT_LOCK = threading.Lock()


def _say(message: str) -> None:
    """One whole line to stdout (stages running side by side print from threads)."""
    with _PRINT_LOCK:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()


def write_status(run_dir: Path, stage: str, record: dict) -> None:
    with _STATUS_LOCK:  # stages of one run may finish at the same time (--jobs)
        run_dir.mkdir(parents=True, exist_ok=True)
        status = read_status(run_dir)
        status[stage] = record
        atomic_write_text(run_dir / "stage_status.json", json.dumps(status, indent=2) + "\n")


def _summary(stage: Stage) -> str:
    """One line of the stage's headline numbers from its metrics file."""
    try:
        m = json.loads(stage.metrics.read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    if not isinstance(m, dict):
        return ""
    if stage.name == "pretrain":
        final = m.get("final", {})
        return ", ".join(
            f"{k} {v:.4f}" for k, v in final.items() if isinstance(v, (int, float)) and k in ("loss", "pos_acc")
        )
    if stage.name in ("finetune", "linear_probe"):
        return f"top-1 {m.get('top1', float('nan')):.2f}%"
    if stage.name == "detection":
        return f"AP box {m.get('bbox_AP')}, AP mask {m.get('segm_AP')}"
    if stage.name == "segmentation":
        return f"mIoU {m.get('mIoU')}"
    if stage.name == "position_probe":
        return "; ".join(f"drop {r['drop_ratio']:g}: {100 * r['top1']:.1f}%" for r in m.get("results", []))
    return ""


def _wait_with_cpu(proc: subprocess.Popen) -> tuple[int, float]:
    """Reap ``proc``: (exit code, user + system CPU seconds of it and its reaped children).

    The CPU time says what a stage costs whatever else the machine runs; ``wait4`` reads it
    for this child alone, so stages running side by side are told apart.
    """
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def run_stage(
    stage: Stage,
    out: Path,
    verbose: bool = False,
    timeout: float | None = None,
    env_extra: dict[str, str] | None = None,
) -> dict:
    """Run (or skip) one stage; returns its status record (also saved in the run's stage_status.json)."""
    run_dir = out / stage.method
    tag = f"{stage.method}/{stage.name}"
    previous = read_status(run_dir).get(stage.name, {})
    if stage.metrics.is_file():
        record = {
            "status": "done",
            "cached": True,
            "wall_seconds": previous.get("wall_seconds"),
            "cpu_seconds": previous.get("cpu_seconds"),
            "metrics": str(stage.metrics),
        }
        _say(f"[reproduce] {tag}: done before ({stage.metrics}), skipped")
        write_status(run_dir, stage.name, record)
        return record
    if stage.available:
        record = {"status": "skipped", "reason": f"not available: {stage.available}"}
        _say(f"[reproduce] {tag}: skipped (not available: {stage.available})")
        write_status(run_dir, stage.name, record)
        return record
    missing = [p for p in stage.needs if not p.is_file()]
    if missing:
        record = {"status": "skipped", "reason": f"needs {missing[0]} (an earlier stage did not finish)"}
        _say(f"[reproduce] {tag}: skipped (needs {missing[0]})")
        write_status(run_dir, stage.name, record)
        return record
    log = run_dir / "logs" / f"{stage.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, **stage.env, **(env_extra or {}))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    _say(f"[reproduce] {tag}: running (log: {log})")
    t0 = time.time()
    rc: int | str
    timed_out = threading.Event()
    with open(log, "w") as f:
        f.write("$ " + stage.shell() + "\n")
        f.flush()
        proc = subprocess.Popen(
            stage.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        watchdog = None
        if timeout is not None:
            watchdog = threading.Timer(timeout, lambda: (timed_out.set(), proc.kill()))
            watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                f.write(line)
                f.flush()
                if verbose:
                    _say(f"  [{tag}] {line.rstrip()}")
            rc, cpu = _wait_with_cpu(proc)
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
        finally:
            if watchdog is not None:
                watchdog.cancel()
    wall = time.time() - t0
    if timed_out.is_set():
        rc = f"stopped after --stage-timeout {timeout:g} s"
    if rc == 0 and stage.metrics.is_file():
        record = {"status": "done", "wall_seconds": wall, "cpu_seconds": cpu, "metrics": str(stage.metrics)}
        _say(f"[reproduce] {tag}: done in {wall / 60:.1f} min (CPU time {cpu / 60:.1f} min)  {_summary(stage)}")
    else:
        tail = log.read_text().strip().splitlines()[-15:]
        why = (rc if isinstance(rc, str) else f"exit code {rc}") if rc != 0 else f"no {stage.metrics.name} written"
        record = {"status": "failed", "reason": why, "wall_seconds": wall, "cpu_seconds": cpu, "log": str(log)}
        _say(
            f"[reproduce] {tag}: FAILED after {wall / 60:.1f} min ({why}); last lines of {log}:\n"
            + "\n".join(f"    {line}" for line in tail)
        )
    write_status(run_dir, stage.name, record)
    return record


def run_stages(
    stages: list[Stage],
    out: Path,
    jobs: int = 1,
    verbose: bool = False,
    timeout: float | None = None,
    env_extra: dict[str, str] | None = None,
) -> dict[tuple[str, str], dict]:
    """Run stages in order, up to ``jobs`` at a time; a stage waits for the stage that writes what it needs."""
    records: dict[tuple[str, str], dict] = {}
    if jobs <= 1:
        for s in stages:
            records[(s.method, s.name)] = run_stage(s, out, verbose, timeout, env_extra)
        return records
    pending = list(stages)
    running: dict[Future, Stage] = {}

    def blocked(s: Stage) -> bool:
        others = pending + list(running.values())
        return any(p is not s and any(n.parent == p.metrics.parent for n in s.needs) for p in others)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            for s in list(pending):
                if len(running) >= jobs:
                    break
                if not blocked(s):
                    pending.remove(s)
                    running[pool.submit(run_stage, s, out, verbose, timeout, env_extra)] = s
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                s = running.pop(fut)
                records[(s.method, s.name)] = fut.result()
    return records


# --------------------------------------------------------------------------- pictures and report
def make_pictures(out: Path, data: Path, methods: list[str]) -> list[tuple[str, Path]]:
    """Pictures for the report; each failure is reported and skipped. Returns (caption, path)."""
    from . import pictures

    pics_dir = out / "report" / "pictures"
    made: list[tuple[str, Path]] = []

    def attempt(caption: str, fn: Callable[[], Path]) -> None:
        try:
            made.append((caption, fn()))
        except Exception as exc:  # a picture must never sink the report
            print(f"[reproduce] picture '{caption}' not made: {type(exc).__name__}: {exc}", flush=True)

    attempt(
        "Position smoothing targets (paper vs reference code), 14x14 grid",
        lambda: pictures.plot_smoothing_targets(pics_dir / "smoothing_targets.png"),
    )
    probes = [out / m / "position_probe" / METRICS["position_probe"] for m in methods]
    probes = [p for p in probes if p.is_file()]
    if probes:
        attempt(
            "Position-probe accuracy against the share of dropped positions",
            lambda: pictures.plot_probe_curves(probes, pics_dir / "position_probe_curves.png"),
        )
    for method in methods:
        pre = out / method / "pretrain"
        backbone = pre / "backbone.pth"
        if not backbone.is_file():
            continue
        full = sorted(pre.glob("checkpoint-*.pth"))
        ckpt = full[-1] if method == "droppos" and full else backbone
        attempt(
            f"{method}: predicted positions of patches",
            lambda c=ckpt, m=method: pictures.positions_picture(c, pics_dir, data=data, label=m, probe_epochs=10),
        )
        attempt(
            f"{method}: attentive-reconstruction weights",
            lambda m=method, b=backbone: pictures.attention_picture(b, pics_dir, data=data, label=m),
        )
    return made


def write_report(
    out: Path,
    profile: str,
    stages: list[Stage],
    records: dict[tuple[str, str], dict],
    methods: list[str],
    pictures_made: list[tuple[str, Path]],
    wall: float,
) -> Path:
    """<out>/report.md: stage wall times, the comparison tables and the pictures."""
    from .tables import MetricsError, build_tables

    lines = [f"# DropPos / MAE / AdPE: {profile} report", ""]
    if profile == "demo":
        lines += [
            "Built-in synthetic data, ViT-Tiny with 8 px patches, CPU, minutes of training per stage: the numbers "
            "show that every stage runs end to end and how the methods compare at this toy scale; they are not "
            "comparable with the papers' ImageNet-scale numbers listed beside them. "
            "One seed and a few minutes per stage: differences between the methods at this scale are within "
            "run-to-run noise. Detection runs "
            f"{DEMO['detection_iters']} iterations to stay within the budget; Mask R-CNN needs about 300 before its "
            "AP leaves zero (`--detection-iters 300`, ~7.5 CPU minutes per method).",
            "",
        ]
    lines += [
        f"Wall time of this invocation: {wall / 60:.1f} min.",
        "",
        "## Stages (status, wall time / CPU time of the stage's processes)",
        "",
    ]
    header = "| stage | " + " | ".join(methods) + " |"
    lines += [header, "|" + "---|" * (len(methods) + 1)]
    for name in STAGES:
        cells = []
        for m in methods:
            r = records.get((m, name)) or read_status(out / m).get(name, {})
            state = r.get("status", "—")
            if state == "skipped" and r.get("reason"):
                state = f"skipped ({r['reason']})"
            elif state == "failed":
                log = Path(r["log"]).relative_to(out) if r.get("log") else "log"
                state = f"failed ({r.get('reason')}; see {log})"
            secs, cpu = r.get("wall_seconds"), r.get("cpu_seconds")
            if isinstance(secs, (int, float)):
                state += f", {secs / 60:.1f} min" + (
                    f" / CPU {cpu / 60:.1f} min" if isinstance(cpu, (int, float)) else ""
                )
                state += " (earlier run)" if r.get("cached") else ""
            cells.append(state)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Results", ""]
    try:
        md, _ = build_tables([out / m for m in methods if (out / m).is_dir()], out / "report", stages=False)
        lines.append(md)
    except MetricsError as exc:
        lines.append(f"Tables not built: {exc}")
    if pictures_made:
        lines += ["", "## Pictures", ""]
        for caption, path in pictures_made:
            lines += [f"**{caption}**", "", f"![{caption}]({path.relative_to(out)})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "report").mkdir(parents=True, exist_ok=True)
    (out / "report" / "report.md").write_text("\n".join(lines).replace("](report/", "](") + "\n")
    return path


# --------------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("droppos end-to-end run", add_help=True)
    p.add_argument("--profile", default="demo", choices=["demo", *PAPER_PROFILES])
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
    if args.profile == "demo":
        for key in ("detection_iters", "segmentation_iters"):
            if getattr(args, key, None):
                DEMO[key] = int(getattr(args, key))
        return demo_stages(out, Path(args.data), methods, args.workers)
    return paper_stages(args.profile, out, methods, args)


def main(argv: list[str] | None = None) -> int:
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
    stages = [
        s
        for stage_name in STAGES
        if stage_name in chosen
        for s in build_stages(args, out, methods)
        if s.name == stage_name
    ]
    if args.dry_run or (args.profile != "demo" and not args.launch):
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
    report = write_report(out, args.profile, stages, records, methods, made, time.time() - t0)
    print(f"[reproduce] report: {report}  (total {(time.time() - t0) / 60:.1f} min)", flush=True)
    failed = [k for k, r in records.items() if r.get("status") == "failed"]
    if failed:
        print(f"[reproduce] failed stages: {', '.join('/'.join(k) for k in failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
