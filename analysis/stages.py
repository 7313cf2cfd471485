"""The stage table of the end-to-end run: one builder for every profile.

Each method gets the same six stages, each its own process that leaves one metrics JSON
behind: pretraining, fine-tuning, linear probing, detection, segmentation and the
position probe. A ``Profile`` (filled in by ``analysis.profiles``: the CPU demo, the
paper-scale runs) says how the processes are launched, where the data lie and which
recipes and overrides each stage gets; ``build_stage_table`` turns it into stages.
"""

from __future__ import annotations

import functools
import importlib.util
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

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
        """The command as one shell line, environment variables first."""
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
    """'' if every path exists below the repository root, else 'path not found'."""
    for p in paths:
        if not (ROOT / p).exists():
            return f"{p} not found"
    return ""


_PACKAGES = {
    "finetune": ("classification.finetune", "classification.linear_probe"),
    "linear_probe": ("classification.finetune", "classification.linear_probe"),
    "detection": ("detectron2", "detection.train_net"),
    "segmentation": ("mmseg", "mmcv"),
}


@functools.cache
def _segmentation_ops() -> str:
    """mmcv's compiled ops and mmseg's models import (checked once: a fresh interpreter takes seconds)."""
    return import_check("import mmcv.ops, mmseg.models", "mmseg / mmcv.ops")


def stage_availability(name: str, method: str, config: Path | None = None) -> str:
    """'' when a stage can run on this machine, else why not: its config file, then its packages."""
    packages = ("pretrain.models.adpe",) if name == "pretrain" and method == "adpe" else _PACKAGES.get(name, ())
    why = (missing_files(config) if config is not None else "") or missing_modules(*packages)
    if not why and name == "segmentation":
        why = _segmentation_ops()
    return why


# --------------------------------------------------------------------------- the table
def ade_data_root(ade: Path) -> list[str]:
    """``--cfg-options`` pointing the three segmentation dataloaders at one ADEChallengeData2016 folder."""
    return [f"{loader}.dataset.data_root={ade}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")]


@dataclass(frozen=True)
class Profile:
    """What the stage builder needs to know about one profile.

    Attributes:
        name: demo, vit_b_200ep, ...
        python: argv prefix of the one-process stages (detection, which has its own
            launcher, and the position probe).
        parallel: argv prefix of the data-parallel stages (pretraining, classification,
            segmentation): ``torchrun ...`` on a cluster.
        detection_flags: Detectron2 launcher options after ``-m detection.train_net``.
        segmentation_flags: MMEngine launcher options after the segmentation config.
        imagenet: ImageFolder root of pretraining and classification.
        probe_data: what the position probe reads.
        ade: the ADEChallengeData2016 folder.
        pretrain: method -> (recipe file in pretrain/configs, overrides).
        configs: config file of finetune, finetune_rel (AdPE's relative-position
            encoders), linear_probe, detection (detection/configs) and segmentation
            (segmentation/configs).
        train_flags: overrides of every pretraining and classification stage.
        overrides: stage -> its own overrides (key=value, or MMEngine ``--cfg-options``).
        probe_flags: position-probe options after ``--label``.
        env: stage -> extra environment variables.
        check: whether to mark the stages this machine cannot run (config file or packages missing).
    """

    name: str
    python: list[str]
    parallel: list[str]
    imagenet: str
    probe_data: str
    ade: Path
    pretrain: dict[str, tuple[str, list[str]]]
    configs: dict[str, str]
    detection_flags: list[str] = field(default_factory=list)
    segmentation_flags: list[str] = field(default_factory=list)
    train_flags: list[str] = field(default_factory=list)
    overrides: dict[str, list[str]] = field(default_factory=dict)
    probe_flags: list[str] = field(default_factory=list)
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    check: bool = False


def _stage(profile: Profile, run: Path, name: str, command: list[str], config: Path | None = None) -> Stage:
    """One stage of the run folder ``run`` (``<out>/<method>``); all but pretraining need its backbone."""
    method = run.name
    return Stage(
        method,
        name,
        command,
        run / name / METRICS[name],
        needs=[] if name == "pretrain" else [run / "pretrain" / "backbone.pth"],
        available=stage_availability(name, method, config) if profile.check else "",
        env=dict(profile.env.get(name, {})),
    )


def build_stage_table(profile: Profile, out: Path, methods: list[str]) -> list[Stage]:
    """Every stage of every method, method by method, as ``profile`` launches them."""
    p = profile
    stages: list[Stage] = []
    for method in methods:
        run = out / method
        pre = run / "pretrain"
        backbone = pre / "backbone.pth"
        recipe_file, recipe_overrides = p.pretrain[method]
        recipe = Path("pretrain/configs") / recipe_file
        pretrain = [
            *p.parallel,
            "-m",
            "pretrain.main",
            "--config",
            str(recipe),
            f"train.output_dir={pre}",
            f"data.path={p.imagenet}",
            *p.train_flags,
            *recipe_overrides,
        ]
        stages.append(_stage(p, run, "pretrain", pretrain, recipe))
        for task in ("finetune", "linear_probe"):
            rel = task == "finetune" and method == "adpe"  # AdPE's relative-position encoders
            cls = Path("classification/configs") / p.configs["finetune_rel" if rel else task]
            classify = [
                *p.parallel,
                "-m",
                f"classification.{task}",
                "--config",
                str(cls),
                f"checkpoint={backbone}",
                f"train.output_dir={run / task}",
                f"data.path={p.imagenet}",
                *p.train_flags,
                *p.overrides.get(task, []),
            ]
            stages.append(_stage(p, run, task, classify, cls))
        det = Path("detection/configs") / p.configs["detection"]
        detection = [
            *p.python,
            "-m",
            "detection.train_net",
            *p.detection_flags,
            "--config-file",
            str(det),
            f"train.init_checkpoint={backbone}",
            f"train.output_dir={run / 'detection'}",
            *p.overrides.get("detection", []),
        ]
        stages.append(_stage(p, run, "detection", detection, det))
        seg = Path("segmentation/configs") / p.configs["segmentation"]
        segmentation = [
            *p.parallel,
            "segmentation/train.py",
            str(seg),
            *p.segmentation_flags,
            "--checkpoint",
            str(backbone),
            "--work-dir",
            str(run / "segmentation"),
            "--cfg-options",
            *p.overrides.get("segmentation", []),
            *ade_data_root(p.ade),
        ]
        stages.append(_stage(p, run, "segmentation", segmentation, seg))
        probe = [
            *p.python,
            "-m",
            "analysis.position_probe",
            "--checkpoint",
            str(backbone),
            "--data",
            p.probe_data,
            "--sweep",
            PROBE_SWEEP,
            "--output",
            str(run / "position_probe"),
            "--label",
            method,
            *p.probe_flags,
        ]
        stages.append(_stage(p, run, "position_probe", probe))
    return stages
