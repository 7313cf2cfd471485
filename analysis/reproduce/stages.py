"""The stage table of the end-to-end run: one builder for every profile.

Each pretraining method gets the same stages, each its own process that leaves one metrics
JSON behind: pretraining, fine-tuning, linear probing, k-NN, the attentive probe, low-shot,
detection, segmentation, the position probe and the robustness of the fine-tuned classifier. The ``scratch`` initialisation (random
weights) gets every stage but pretraining, with the same transfer recipes and seeds. Each
transfer stage runs under ``seeds`` seeds on each of ``pretrain_seeds`` pretraining runs.
Layout below the output root (one *run folder* per pretraining seed and transfer seed;
seed 0 stays where a one-seed run puts it):

    <init>/pretrain/, <init>/<stage>/           pretraining seed 0, transfer seed 0
    <init>/seed<k>/<stage>/                     transfer seed k on pretraining seed 0
    <init>/pretrain_seed<j>/pretrain/, .../<stage>/, .../seed<k>/<stage>/
    scratch/<stage>/, scratch/seed<k>/<stage>/  random initialisation

A ``Profile`` (filled in by ``analysis.profiles``: the CPU demo, the paper-scale runs) says
how the processes are launched, where the data lie and which recipes and overrides each
stage gets; ``build_stage_table`` turns it into stages.
"""

from __future__ import annotations

import functools
import importlib.util
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..layout import FEATURE_CACHE, INITS, METHODS, METRICS, SCRATCH, STAGES  # noqa: F401  (re-exported: the stage table's names)

ROOT = Path(__file__).resolve().parents[2]
PROBE_SWEEP = "0,0.25,0.5,0.75,1.0"
# the stages that encode frozen features; their shared cache is FEATURE_CACHE below the output root
# (classification.feature_cache)
FEATURE_STAGES = ("linear_probe", "knn", "attentive_probe", "lowshot")


@dataclass
class Stage:
    """One step of the pipeline for one method: a command that leaves ``metrics`` behind.

    Attributes:
        method: the run folder below the output root (``droppos``, ``droppos/seed1``,
            ``scratch`` ...); its ``stage_status.json`` and ``logs/`` hold this stage's
            status and output.
        name: the stage.
        command: argv of the process (run from the repository root).
        metrics: the JSON file whose presence means "done".
        needs: files that must exist before it can run (e.g. the pretrained backbone).
        available: '' when its packages are importable, else why not.
        env: extra environment variables.
        init: droppos, mae, adpe or scratch ('' = ``method``).
        seed, pretrain_seed: the seed this stage runs under and the pretraining seed of its backbone.
        protocol: recipe file, seed, checkpoint, image size and overrides (``protocol.json``).
    """

    method: str
    name: str
    command: list[str]
    metrics: Path
    needs: list[Path] = field(default_factory=list)
    available: str = ""
    env: dict[str, str] = field(default_factory=dict)
    init: str = ""
    seed: int = 0
    pretrain_seed: int | None = 0
    protocol: dict = field(default_factory=dict)

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
    "knn": ("classification.knn",),
    "attentive_probe": ("classification.attentive_probe",),
    "lowshot": ("sklearn", "classification.lowshot"),
    "robustness": ("classification.robustness",),
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
# What the scratch baseline cannot run, and why.
NO_RANDOM_INIT: dict[str, str] = {"finetuned_probe": "compares a pretrained encoder with its fine-tuned copies"}
# The fine-tuned backbones the DropPos paper's §4.3 analysis probes: stage -> its checkpoint in the
# stage's folder (a folder: MMEngine's last_checkpoint names the file).
FINETUNED_BACKBONES = {"finetune": "best.pth", "detection": "model_final.pth", "segmentation": "."}
ROBUSTNESS = Path("classification/robustness.py")  # the robustness stage's protocol is its command's options


def ade_data_root(ade: Path) -> list[str]:
    """``--cfg-options`` pointing the three segmentation dataloaders at one ADEChallengeData2016 folder."""
    return [f"{loader}.dataset.data_root={ade}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")]


def run_folder(init: str, pretrain_seed: int | None, seed: int) -> str:
    """The run folder (below the output root) of one pretraining seed and transfer seed."""
    parts = [init] + ([f"pretrain_seed{pretrain_seed}"] if pretrain_seed else []) + ([f"seed{seed}"] if seed else [])
    return "/".join(parts)


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
            encoders), linear_probe, knn, attentive_probe (classification/configs),
            detection (detection/configs) and segmentation (segmentation/configs).
        image_sizes: stage -> the input size its recipe trains and tests at (the protocol).
        data_flags: overrides of every pretraining and classification stage (k-NN included).
        train_flags: overrides of the stages that train (all of those but k-NN).
        overrides: stage -> its own overrides (key=value, or MMEngine ``--cfg-options``).
        probe_flags: position-probe options after ``--label``.
        probe_sweep: the drop ratios of the position-probe stage (comma-separated; 0.75 among them).
        random_arch: the ViT the scratch baseline's position probe builds (``vit_<size>_patch<p>_<img>``).
        robustness_flags: ``classification.robustness`` options after ``--checkpoint`` (``--sets``, the
            ImageNet variants, ``--imagenet`` ...): the robustness of the stage's fine-tuned classifier.
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
    image_sizes: dict[str, int] = field(default_factory=dict)
    data_flags: list[str] = field(default_factory=list)
    detection_flags: list[str] = field(default_factory=list)
    segmentation_flags: list[str] = field(default_factory=list)
    train_flags: list[str] = field(default_factory=list)
    overrides: dict[str, list[str]] = field(default_factory=dict)
    probe_flags: list[str] = field(default_factory=list)
    probe_sweep: str = PROBE_SWEEP
    random_arch: str = ""
    robustness_flags: list[str] = field(default_factory=list)
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    check: bool = False


def _pretrain_command(p: Profile, method: str, pre: Path, seed: int) -> tuple[list[str], Path, list[str]]:
    """(argv, recipe, overrides) of one pretraining run."""
    recipe_file, recipe_overrides = p.pretrain[method]
    recipe = Path("pretrain/configs") / recipe_file
    extra = [*p.data_flags, *p.train_flags, *recipe_overrides, f"train.seed={seed}"]
    argv = [*p.parallel, "-m", "pretrain.main", "--config", str(recipe), f"train.output_dir={pre}"]
    return argv + [f"data.path={p.imagenet}", *extra], recipe, extra


def _transfer_command(
    p: Profile, name: str, init: str, backbone: Path | None, where: Path, seed: int, method: str | None = None
) -> tuple[list[str], Path | None, list[str]]:
    """(argv, recipe, overrides) of one transfer stage; ``backbone`` None = random initialisation.

    ``method``: whose recipes apply where a method has its own (default ``init``; an ``--init``
    checkpoint names the method its weights show, ``adpe`` for AdPE's relative-position tables).
    """
    ckpt = str(backbone) if backbone is not None else "none"
    recipes = method or init
    if name in ("finetune", "linear_probe", "knn", "attentive_probe", "lowshot"):
        rel = name == "finetune" and recipes == "adpe"  # AdPE's relative-position encoders
        own = f"{name}_{recipes}"  # a method's own recipe where it differs (DropPos ViT-L fine-tuning)
        cls = Path("classification/configs") / p.configs["finetune_rel" if rel else own if own in p.configs else name]
        flags = [*p.data_flags, *(p.train_flags if name not in ("knn", "lowshot") else [])]  # those train nothing
        extra = [*flags, *p.overrides.get(name, []), f"train.seed={seed}"]
        head = [*p.parallel, "-m", f"classification.{name}", "--config", str(cls), f"checkpoint={ckpt}"]
        return head + [f"train.output_dir={where}", f"data.path={p.imagenet}", *extra], cls, extra
    if name == "detection":
        det = Path("detection/configs") / p.configs["detection"]
        extra = [*p.overrides.get("detection", []), f"train.seed={seed}"]
        head = [*p.python, "-m", "detection.train_net", *p.detection_flags, "--config-file", str(det)]
        return head + [f"train.init_checkpoint={ckpt}", f"train.output_dir={where}", *extra], det, extra
    if name == "segmentation":
        seg = Path("segmentation/configs") / p.configs["segmentation"]
        extra = [*p.overrides.get("segmentation", []), f"randomness.seed={seed}"]
        if backbone is None:  # random init: no --checkpoint, and no default weights of the config
            extra.append("model.backbone.pretrained=None")
        init_flags = ["--checkpoint", ckpt] if backbone is not None else []
        head = [*p.parallel, "segmentation/train.py", str(seg), *p.segmentation_flags, *init_flags]
        return head + ["--work-dir", str(where), "--cfg-options", *extra, *ade_data_root(p.ade)], seg, extra
    if name == "robustness":  # of the classifier the finetune stage of the same run folder wrote
        classifier = where.parent / "finetune" / FINETUNED_BACKBONES["finetune"]
        extra = [*p.robustness_flags, "--seed", str(seed)]
        head = [*p.python, "-m", "classification.robustness", "--checkpoint", str(classifier)]
        return head + ["--output", str(where), *extra], ROBUSTNESS, extra
    if name == "finetuned_probe":  # position awareness, pretrained vs fine-tuned (the paper's §4.3)
        pairs = [f"{task}={where.parent / task / ckpt}" for task, ckpt in FINETUNED_BACKBONES.items()]
        extra = [*(a for pair in pairs for a in ("--finetuned", pair)), "--sweep", "0.75", *p.probe_flags]
        head = [*p.python, "-m", "analysis.probes.finetuned_probe", "--pretrained", ckpt, "--data", p.probe_data]
        return head + ["--output", str(where), *extra, "--seed", str(seed)], None, extra
    extra = [*p.probe_flags, "--seed", str(seed)]
    if backbone is None:  # random init: the probe builds the profile's ViT itself
        extra += ["--random-arch", p.random_arch]
    head = [*p.python, "-m", "analysis.position_probe", "--checkpoint", ckpt, "--data", p.probe_data]
    return head + ["--sweep", p.probe_sweep, "--output", str(where), "--label", init, *extra], None, extra


def _stage(
    p: Profile,
    out: Path,
    folder: str,
    name: str,
    built: tuple[list[str], Path | None, list[str]],
    backbone: Path | None,
    seeds: tuple[int, int | None],
) -> Stage:
    """One stage of the run folder ``out / folder``: its availability, needs and protocol."""
    init = folder.split("/")[0]
    command, recipe, extra = built
    if name in FEATURE_STAGES:  # one exact feature pass per backbone and split, shared by these stages
        command = [*command, f"feature_cache={out / FEATURE_CACHE}"]
    available = NO_RANDOM_INIT.get(name, "") if init == SCRATCH else ""
    if not available and p.check:
        available = stage_availability(name, init, recipe)
    protocol = {
        "recipe": str(recipe) if recipe is not None else "analysis/position_probe.py",
        "seed": seeds[0],
        "pretrain_seed": seeds[1],
        "checkpoint": str(backbone) if backbone else None if name == "pretrain" else "none (random initialisation)",
        "image_size": p.image_sizes.get(name),
        "overrides": extra,
    }
    return Stage(
        folder,
        name,
        command,
        out / folder / name / METRICS[name],
        needs=_needs(out / folder, name, backbone),
        available=available,
        env=dict(p.env.get(name, {})),
        init=init,
        seed=seeds[0],
        pretrain_seed=seeds[1],
        protocol=protocol,
    )


def _needs(folder: Path, name: str, backbone: Path | None) -> list[Path]:
    """What a stage reads: the pretrained backbone; the §4.3 probe also the fine-tuned models' metrics."""
    if name == "robustness":  # the finished fine-tuning's classifier, scratch's included
        return [folder / "finetune" / METRICS["finetune"], folder / "finetune" / FINETUNED_BACKBONES["finetune"]]
    if backbone is None or name == "pretrain":
        return []
    if name == "finetuned_probe":
        return [backbone, *(folder / task / METRICS[task] for task in FINETUNED_BACKBONES)]
    return [backbone]


def build_stage_table(
    profile: Profile,
    out: Path,
    methods: list[str],
    seeds: int = 1,
    pretrain_seeds: int = 1,
    files: Sequence[tuple[str, Path, str]] = (),
) -> list[Stage]:
    """Every stage of every initialisation, as ``profile`` launches them.

    ``methods`` may name ``scratch``; each transfer stage runs under seeds ``0 .. seeds-1``
    on each pretraining run (seeds ``0 .. pretrain_seeds-1``; scratch has none). ``files``:
    (name, weights file, whose recipes apply) of each ``--init NAME=PATH`` (``analysis.reproduce.inits``),
    after the methods: every transfer and probe stage on that file, no pretraining.
    """
    if seeds < 1 or pretrain_seeds < 1:
        raise ValueError(f"seeds and pretrain_seeds must be at least 1, got {seeds} and {pretrain_seeds}")
    p = profile
    stages: list[Stage] = []

    def transfers(init: str, j: int | None, backbone: Path | None, method: str | None = None) -> None:
        for k in range(seeds):
            folder = run_folder(init, j, k)
            for name in STAGES[1:]:
                if backbone is None and name == "finetuned_probe":
                    continue  # nothing pretrained to compare with
                built = _transfer_command(p, name, init, backbone, out / folder / name, k, method=method)
                stages.append(_stage(p, out, folder, name, built, backbone, (k, j)))

    for init in methods:
        for j in [None] if init == SCRATCH else range(pretrain_seeds):
            backbone = None
            if init != SCRATCH:
                pre = out / run_folder(init, j, 0) / "pretrain"
                backbone = pre / "backbone.pth"
                built = _pretrain_command(p, init, pre, j)
                stages.append(_stage(p, out, run_folder(init, j, 0), "pretrain", built, None, (j, j)))
            transfers(init, j, backbone)
    for name, path, method in files:
        transfers(name, None, path, method)
    return stages
