"""What the GPU check runs: its parts, at GPU sizes or at the dry run's tiny CPU sizes.

One list of parts serves both modes and only the sizes differ (``GPU`` / ``DRY``), so
the CPU dry run drives the code paths that the GPU run drives. Every part is one
subprocess with its own time limit (``runner``). Parts run in two lanes: the main lane
holds every measurement, one at a time; the side lane holds CPU-heavy work that hardly
touches the GPU: writing the built-in data, and compiling each ``torch.compile`` row
once ahead ("prewarm", 2 steps), so that the measured compile row finds Inductor's
caches warm and the compile cost overlaps the eager rows instead of adding to them.
The dry run, where nothing is measured and nothing compiles, has no prewarms and runs
its compile rows in the side lane.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_ROWS: tuple[tuple[str, str], ...] = (  # (method, precision), eager
    ("droppos", "bf16"), ("mae", "bf16"), ("adpe", "bf16"), ("finetune", "bf16"),
    ("droppos", "fp32"), ("droppos", "fp16"),
)
COMPILED = ("droppos", "mae", "adpe", "finetune")  # also run with --compile (bf16)
PRETRAIN_METHODS = ("droppos", "mae", "adpe")
ADPE_OPTS = ("adpe.pos=rel", "adpe.adversary=coord")  # the paper's best AdPE variant
SEGMENTATION_NOTE = ("segmentation: not run here. MMCV 2.1 (MMSegmentation's ops) builds only against "
                     "torch <= 2.9's C++17 headers and this check's GPU machine has a newer torch; "
                     "the segmentation stage is covered by the CPU suite (tests/test_segmentation.py).")


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU dry run."""

    device: str
    bench: tuple[str, ...]  # tools.benchmark arguments shared by every row
    timing: tuple[str, ...]  # --steps / --warmup of an eager row
    compile_timing: tuple[str, ...]
    adpe_img: int  # AdPE's crop size (4 crops per image on the GPU)
    bench_opts: dict[str, tuple[str, ...]]  # config overrides of a method's rows
    profile_steps: int  # profiled steps of each eager bf16 row (names the attention kernels)
    data: dict[str, Any]  # pretrain.data.synthetic.make_builtin_dataset sizes
    recipes: dict[str, str]  # pretraining recipe per method
    pretrain_img: dict[str, int]
    pretrain: tuple[str, ...]  # overrides of every pretraining run
    steps: int  # pretraining steps in all ...
    resume_at: int  # ... stopped here, checkpointed, resumed
    finetune_recipe: str
    finetune: tuple[str, ...]
    finetune_steps: int
    detection_config: str
    detection: tuple[str, ...]  # overrides of the detection run
    limits: dict[str, float]  # seconds per part kind
    budget_s: float  # wall seconds for all parts together
    prewarm: bool = True  # compile each compile row once ahead in the side lane
    compile_lane: str = "main"
    env: dict[str, str] = field(default_factory=dict)  # every part
    compile_env: dict[str, str] = field(default_factory=dict)  # compile rows and prewarms
    prewarm_env: dict[str, str] = field(default_factory=dict)


GPU = Sizes(
    device="cuda",
    bench=("--size", "base", "--img-size", "224", "--patch-size", "16", "--batch", "256", "--device", "cuda"),
    timing=("--steps", "20", "--warmup", "5"),
    compile_timing=("--steps", "20", "--warmup", "3"),
    adpe_img=112,
    bench_opts={"adpe": ADPE_OPTS},
    profile_steps=2,
    data={},  # the built-in defaults: 1000 + 200 ImageFolder images, 200 + 50 COCO images
    recipes={"droppos": "droppos_vit_base_200ep.yaml", "mae": "mae_vit_base_800ep.yaml",
             "adpe": "adpe_rel_coord_vit_base_400ep.yaml"},
    pretrain_img={"droppos": 224, "mae": 224, "adpe": 112},  # AdPE: its recipe's 4 crops of 112 px
    # batch 64 without accumulation (15 steps per epoch on the built-in data); the tiny recipes'
    # blr 1.5e-3 and a 1-epoch warmup so that the loss visibly falls within 50 steps
    pretrain=("train.batch_size=64", "train.accum_iter=1", "train.epochs=4", "optim.blr=1.5e-3",
              "optim.warmup_epochs=1", "data.num_workers=8", "train.log_every=5"),
    steps=50,
    resume_at=25,
    finetune_recipe="finetune_vit_base_100ep.yaml",
    finetune=("train.batch_size=64", "train.epochs=1", "train.eval_batch_size=100", "data.num_workers=8",
              "train.log_every=5"),
    finetune_steps=10,
    detection_config="detection/configs/mask_rcnn_vitdet_b_100ep.py",
    # the recipe's 8 images per GPU at 1024 px with AMP; 25 iterations, the median of the last 20 reported
    detection=("train.max_iter=25", "dataloader.train.total_batch_size=8", "dataloader.train.num_workers=8",
               "dataloader.test.num_workers=4", "train.eval_period=25", "train.log_period=1",
               "train.checkpointer.period=100000", "train.device=cuda"),
    limits={"data": 120, "bench": 90, "bench-fp32": 150, "compile": 150, "prewarm": 240, "pretrain": 150,
            "finetune": 120, "detection": 240},
    budget_s=345,
    prewarm_env={"TORCHINDUCTOR_COMPILE_THREADS": "8"},  # leave half the cores to the measured lane
)

DRY = Sizes(
    device="cpu",
    bench=("--size", "tiny", "--img-size", "32", "--patch-size", "8", "--batch", "8", "--device", "cpu",
           "--threads", "1", "--peak-sizes", "256"),
    timing=("--steps", "1", "--warmup", "1"),
    compile_timing=("--steps", "1", "--warmup", "1"),
    adpe_img=16,
    # the tiny recipes' small decoders (the default ones are ViT-B's, 512 wide and 8 deep for MAE)
    bench_opts={"droppos": ("droppos.decoder_dim=64", "droppos.decoder_heads=2"),
                "mae": ("mae.decoder_dim=64", "mae.decoder_depth=1", "mae.decoder_heads=2"),
                "adpe": (*ADPE_OPTS, "adpe.decoder_dim=64", "adpe.decoder_depth=1", "adpe.decoder_heads=2")},
    profile_steps=1,
    data=dict(imagefolder_train_per_class=8, imagefolder_val_per_class=2, imagefolder_size=48,
              coco_train=6, coco_val=3, coco_size=(64, 80)),
    recipes={m: f"{m}_vit_tiny_builtin.yaml" for m in PRETRAIN_METHODS},
    pretrain_img={"droppos": 32, "mae": 32, "adpe": 32},
    pretrain=("train.batch_size=8", "train.epochs=2", "data.num_workers=0", "train.log_every=2"),
    steps=10,
    resume_at=6,
    finetune_recipe="finetune_vit_tiny_builtin.yaml",
    finetune=("model.img_size=32", "train.batch_size=8", "train.epochs=1", "train.eval_batch_size=20",
              "data.num_workers=0", "train.log_every=1"),
    finetune_steps=3,
    detection_config="detection/configs/mask_rcnn_vitdet_tiny_builtin.py",
    detection=("train.max_iter=3", "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
               "dataloader.test.num_workers=0", "train.eval_period=3", "train.log_period=1",
               "train.checkpointer.period=100000", "train.device=cpu", "model.backbone.net.depth=3",
               "model.backbone.net.window_block_indexes=[0,1]", "model.backbone.net.img_size=64",
               "model.backbone.square_pad=64", "optimizer.params.num_layers=3"),
    limits={"data": 60, "bench": 60, "bench-fp32": 60, "compile": 60, "prewarm": 60, "pretrain": 90,
            "finetune": 60, "detection": 120},
    budget_s=400,
    # Inductor's C++ build of a 12-block ViT takes about a minute per row on a 2-core CPU: the dry
    # run passes --compile through the same code but with TorchDynamo switched off; nothing is then
    # worth prewarming, and as nothing is measured the compile rows share the CPU in the side lane
    prewarm=False,
    compile_lane="side",
    env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    compile_env={"TORCH_COMPILE_DISABLE": "1"},
)


@dataclass
class Part:
    """One subprocess of the check: ``python <argv>`` that writes ``json_path``."""

    name: str
    kind: str  # data | bench | compile | prewarm | pretrain | finetune | detection
    argv: list[str]
    limit_s: float
    json_path: Path
    lane: str = "main"
    needs: tuple[str, ...] = ()  # parts that must have succeeded first
    after: tuple[str, ...] = ()  # parts that must have finished first (any outcome)
    env: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def bench_name(method: str, precision: str, compiled: bool) -> str:
    return f"bench-{method}-{precision}" + ("-compile" if compiled else "")


def _bench_argv(s: Sizes, method: str, precision: str, compiled: bool, timing: tuple[str, ...], json_path: Path,
                flops: bool, profile: int) -> list[str]:
    argv = ["-m", "tools.benchmark", "--method", method, *s.bench, "--precision", precision, *timing]
    if method == "adpe":
        argv += ["--img-size", str(s.adpe_img)]  # argparse: the last --img-size wins
    if compiled:
        argv.append("--compile")
    if not flops:
        argv.append("--no-flops")  # a compiled row takes its FLOPs from its eager twin
    if profile:
        argv += ["--profile", str(profile)]  # names the attention kernels that ran
    argv += ["--json", str(json_path)]
    return argv + list(s.bench_opts.get(method, ()))


def bench_parts(s: Sizes, parts_dir: Path) -> list[Part]:
    """The eager rows, the compile rows and their prewarms."""
    out = []
    for method, precision in BENCH_ROWS:
        name = bench_name(method, precision, False)
        path = parts_dir / f"{name}.json"
        kind = "bench-fp32" if precision == "fp32" else "bench"
        out.append(Part(name, "bench", _bench_argv(s, method, precision, False, s.timing, path, True,
                                                   s.profile_steps if precision == "bf16" else 0),
                        s.limits[kind], path, info=dict(method=method, precision=precision, compile=False)))
    for method in COMPILED:
        name = bench_name(method, "bf16", True)
        warm = f"prewarm-{method}"
        path, warm_path = parts_dir / f"{name}.json", parts_dir / f"{warm}.json"
        if s.prewarm:
            out.append(Part(warm, "prewarm", _bench_argv(s, method, "bf16", True, ("--steps", "1", "--warmup", "1"),
                                                         warm_path, False, 0),
                            s.limits["prewarm"], warm_path, lane="side", env={**s.compile_env, **s.prewarm_env},
                            info=dict(method=method, precision="bf16", compile=True)))
        out.append(Part(name, "compile", _bench_argv(s, method, "bf16", True, s.compile_timing, path, False, 0),
                        s.limits["compile"], path, lane=s.compile_lane, after=(warm,) if s.prewarm else (),
                        env=dict(s.compile_env), info=dict(method=method, precision="bf16", compile=True,
                                                           **({"prewarm": warm} if s.prewarm else {}))))
    return out


def training_parts(s: Sizes, work: Path, parts_dir: Path) -> list[Part]:
    """Built-in data, pretraining with a resume per method, fine-tuning, detection."""
    data_root = work / "data"
    runs = work / "runs"
    module = ["-m", "tools.gpu_check.train_parts"]
    sizes = [f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v, separators=(',', ':'))}"
             for k, v in s.data.items()]
    out = [Part("data", "data", [*module, "data", "--root", str(data_root), "--json", str(parts_dir / "data.json"),
                                 *sizes], s.limits["data"], parts_dir / "data.json", lane="side")]
    for method in PRETRAIN_METHODS:
        name = f"pretrain-{method}"
        opts = [f"data.path={data_root / 'imagenet'}", "data.builtin=false", f"model.img_size={s.pretrain_img[method]}",
                "train.tensorboard=false", "train.progress=false", *s.pretrain]
        argv = [*module, "pretrain", "--recipe", s.recipes[method], "--out", str(runs / name),
                "--steps", str(s.steps), "--resume-at", str(s.resume_at), "--json", str(parts_dir / f"{name}.json"),
                *opts]
        out.append(Part(name, "pretrain", argv, s.limits["pretrain"], parts_dir / f"{name}.json", needs=("data",),
                        info=dict(method=method)))
    backbone = runs / "pretrain-droppos" / "backbone.pth"
    opts = [f"data.path={data_root / 'imagenet'}", "data.builtin=false", f"checkpoint={backbone}",
            "train.tensorboard=false", "train.progress=false", f"train.max_steps={s.finetune_steps}", *s.finetune]
    out.append(Part("finetune-droppos", "finetune",
                    [*module, "finetune", "--recipe", s.finetune_recipe, "--out", str(runs / "finetune-droppos"),
                     "--json", str(parts_dir / "finetune-droppos.json"), *opts],
                    s.limits["finetune"], parts_dir / "finetune-droppos.json", needs=("pretrain-droppos",),
                    info=dict(method="droppos")))
    out.append(Part("detection", "detection",
                    ["-m", "tools.gpu_check.detection_part", "--config-file", s.detection_config,
                     "--data-root", str(data_root), "--init", str(backbone), "--out", str(runs / "detection"),
                     "--json", str(parts_dir / "detection.json"), *s.detection],
                    s.limits["detection"], parts_dir / "detection.json", needs=("data",),
                    after=("pretrain-droppos",)))
    return out


def build_plan(s: Sizes, work: Path) -> list[Part]:
    """Every part in lane order: side (data, prewarms), then main (eager rows, training, detection, compile rows)."""
    parts_dir = work / "parts"
    bench = bench_parts(s, parts_dir)
    data, *train = training_parts(s, work, parts_dir)
    compiled = [p for p in bench if p.kind == "compile"]
    side = [data] + [p for p in bench if p.kind == "prewarm"]
    main = [p for p in bench if p.kind == "bench"] + train
    side, main = (side + compiled, main) if s.compile_lane == "side" else (side, main + compiled)
    plan = side + main
    for part in plan:
        part.env = {**s.env, **part.env}
    return plan


def with_limits(plan: list[Part], limits: dict[str, float]) -> list[Part]:
    """``plan`` with the time limits of the parts named in ``limits`` replaced (``--limit NAME=S``)."""
    unknown = set(limits) - {p.name for p in plan}
    if unknown:
        raise ValueError(f"--limit names unknown parts: {sorted(unknown)}")
    return [dataclasses.replace(p, limit_s=limits.get(p.name, p.limit_s)) for p in plan]
