"""The profiles of the end-to-end run: which recipes, budgets and launchers each one uses.

- ``demo``: the built-in data, ViT-Tiny with 8 px patches, one CPU process per stage,
  the epochs and iterations of a quarter-hour budget; stages whose packages are missing
  are marked.
- ``vit_b_200ep``, ``vit_b_800ep``, ``vit_l_800ep``: the paper recipes on ImageNet-1K,
  COCO and ADE20K, torchrun for the data-parallel stages and Detectron2's launcher for
  detection (multi-node with ``--nnodes --node-rank --master-addr --master-port``).

Each becomes a ``analysis.stages.Profile``, which ``build_stage_table`` turns into stages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .cluster_batch import with_cluster_batch
from .stages import Profile

# Budget of the demo (2 CPU cores, ~15 min in all): epochs and iterations per stage. CPU minutes
# per method and stage (one thread, 2026-12-02, a machine about 30 % slower per stage than the
# one of the day before): pretraining 1.1 (MAE, AdPE) and 3.5 (DropPos at mask ratio 0.5),
# fine-tuning 1.5, linear probe 0.3, k-NN 0.3, attentive probe 0.4, detection 1.3 at 120
# iterations, segmentation 0.7, position probe 0.8-1.0 and the pretrained-vs-fine-tuned probe 0.7-0.8
# (600 training images, 5 drop ratios); 29.7 CPU min in all, 16.2 min wall. Hence 100 detection
# iterations, 400 probe training images and 3 drop ratios (0, the tables' 0.75, 1); the pictures,
# drawn after the last stage, get both cores. Two stages run at a time.
DEMO = {
    "finetune": ["train.epochs=3"],
    "linear_probe": ["train.epochs=30"],
    "detection_iters": 100,
    "segmentation_iters": 60,
    "probe_img_size": 64,
    "probe_train_images": 400,
    "probe_sweep": "0,0.75,1.0",
    # robustness (0.3-0.4 CPU min per initialisation, 2026-12-03, busy machine) and low-shot (0.15): the
    # fine-tuned classifier on 100 val images (evenly spread), clean and under the position rows, and on a
    # corrupted copy of the same images (4 ImageNet-C corruptions x 3 severities); 1 / 10 images per class
    "robustness_images": 100,
    "corruptions": ("gaussian_noise", "defocus_blur", "contrast", "jpeg_compression"),
    "severities": (1, 3, 5),
}
# The demo's online monitors during pretraining (pretrain/engine/monitors.py): after every 2nd epoch and the last,
# on 50 val and 50 train images of the built-in data, the position head 100 steps on 32 tokens per image; within
# 5 % of the epochs' time (tools/benchmark_monitors.py --part demo; 100 + 100 images every epoch cost 13-18 %)
DEMO_MONITORS = ["train.monitor.every_epochs=2", "train.monitor.images=50", "train.monitor.bank_images=50",
                 "train.monitor.probe_tokens_per_image=32", "train.monitor.probe_steps=100"]
# profile -> backbone size, the patch size of its recipes and, per method, (pretraining recipe in
# pretrain/configs, overrides)
PROFILES = {
    "demo": {
        "size": "tiny",
        "patch": 8,  # the demo's ViT-Tiny
        "pretrain": {
            "droppos": ("droppos_vit_tiny_builtin.yaml", [*DEMO_MONITORS, "train.epochs=6"]),
            "mae": ("mae_vit_tiny_builtin.yaml", [*DEMO_MONITORS, "train.epochs=6"]),
            "adpe": ("adpe_vit_tiny_builtin.yaml", [*DEMO_MONITORS, "train.epochs=3"]),
        },
    },
    "vit_b_200ep": {
        "size": "base",
        "patch": 16,
        "pretrain": {
            "droppos": ("droppos_vit_base_200ep.yaml", []),
            "mae": ("mae_vit_base_800ep.yaml", ["train.epochs=200"]),
            "adpe": ("adpe_rel_coord_vit_base_400ep.yaml", ["train.epochs=200"]),
        },
    },
    "vit_b_800ep": {
        "size": "base",
        "patch": 16,
        "pretrain": {
            "droppos": ("droppos_vit_base_800ep.yaml", []),
            "mae": ("mae_vit_base_800ep.yaml", []),
            "adpe": ("adpe_rel_coord_vit_base_1600ep.yaml", ["train.epochs=800"]),
        },
    },
    "vit_l_800ep": {
        "size": "large",
        "patch": 16,
        "pretrain": {
            "droppos": ("droppos_vit_large_800ep.yaml", []),
            "mae": ("mae_vit_base_800ep.yaml", ["model.size=large"]),
            "adpe": ("adpe_rel_coord_vit_large_1600ep.yaml", ["train.epochs=800"]),
        },
    },
    # evaluation only: no pretraining, the paper recipes on each --init (analysis.reproduce.inits)
    "vit_b_eval": {"size": "base", "patch": 16, "pretrain": {}, "evaluation_only": True},
    "vit_l_eval": {"size": "large", "patch": 16, "pretrain": {}, "evaluation_only": True},
}
# backbone size -> the transfer configs (finetune_rel: for AdPE's relative-position encoders;
# <stage>_<method>: that method's own recipe where it differs)
TRANSFER_CONFIGS = {
    "tiny": {
        "finetune": "finetune_vit_tiny_builtin.yaml",
        "finetune_rel": "finetune_vit_tiny_builtin.yaml",
        "linear_probe": "linear_probe_vit_tiny_builtin.yaml",
        "knn": "knn_vit_tiny_builtin.yaml",
        "attentive_probe": "attentive_probe_vit_tiny_builtin.yaml",
        "lowshot": "lowshot_vit_tiny_builtin.yaml",
        "detection": "mask_rcnn_vitdet_tiny_builtin.py",
        "segmentation": "upernet_vit-tiny-p8_1xb8-400it_builtin-ade-64x64.py",
    },
    "base": {
        "finetune": "finetune_vit_base_100ep.yaml",
        "finetune_rel": "finetune_vit_base_relpos.yaml",
        "linear_probe": "linear_probe_vit_base.yaml",
        "knn": "knn_default.yaml",
        "attentive_probe": "attentive_probe_default.yaml",
        "lowshot": "lowshot_default.yaml",
        "detection": "mask_rcnn_vitdet_b_100ep.py",
        "segmentation": "upernet_vit-b16_8xb2-amp-160k_ade20k-512x512.py",
    },
    "large": {
        "finetune": "finetune_vit_large_50ep.yaml",  # MAE's ViT-L recipe (drop path 0.2)
        "finetune_droppos": "finetune_droppos_vit_large_50ep.yaml",  # DropPos's ViT-L script: drop path 0.1
        "finetune_rel": "finetune_vit_large_50ep.yaml",
        "linear_probe": "linear_probe_vit_large.yaml",
        "knn": "knn_default.yaml",
        "attentive_probe": "attentive_probe_default.yaml",
        "lowshot": "lowshot_default.yaml",
        "detection": "mask_rcnn_vitdet_l_100ep.py",
        "segmentation": "upernet_vit-l16_8xb2-amp-160k_ade20k-512x512.py",
    },
}


# backbone size -> the input size of each stage's recipe (the protocol column of the tables)
_CLASSIFY = ("finetune", "linear_probe", "knn", "attentive_probe", "lowshot", "position_probe", "robustness")
IMAGE_SIZES = {
    "tiny": {**dict.fromkeys(_CLASSIFY, 64), "detection": 128, "segmentation": 64},
    "base": {**dict.fromkeys(_CLASSIFY, 224), "detection": 1024, "segmentation": 512},
    "large": {**dict.fromkeys(_CLASSIFY, 224), "detection": 1024, "segmentation": 512},
}
# overrides of the size-independent k-NN / attentive-probe recipes (their defaults are ViT-B/16)
SIZE_OVERRIDES = {"large": {k: ["model.size=large"] for k in ("knn", "attentive_probe", "lowshot")}}
# the robustness sets of the paper profiles (ImageNet variants as tools.prepare_data lays them out)
PAPER_ROBUSTNESS_SETS = "v2,r,a,sketch,c,real,position"
DEMO_VARIANTS = "variants"  # below the built-in data root: the corrupted copy of the val split


def prepare_demo_variants(data: Path) -> Path:
    """The demo's ImageNet-C-style copy of the built-in val split (``classification.builtin_corruptions``)."""
    from classification.builtin_corruptions import make_corrupted_copy

    return make_corrupted_copy(data / "imagenet", data / DEMO_VARIANTS, img_size=DEMO["probe_img_size"],
                               corruptions=DEMO["corruptions"], severities=DEMO["severities"],
                               limit=DEMO["robustness_images"])


def detection_budget(iters: int, data: Path) -> list[str]:
    """Detectron2 overrides of the demo: ``iters`` iterations (schedule scaled to them) on the built-in COCO."""
    return [
        f"train.max_iter={iters}",
        f"train.eval_period={iters}",
        f"train.checkpointer.period={iters}",
        "train.log_period=10",
        f"lr_multiplier.scheduler.num_updates={iters}",
        f"lr_multiplier.scheduler.milestones=[{int(iters * 0.889)}, {int(iters * 0.963)}]",
        f"lr_multiplier.warmup_length={min(25, iters // 4) / iters:.4f}",
        f"dataloader.train.dataset.names.root={data}",
        f"dataloader.test.dataset.names.root={data}",
        f"dataloader.evaluator.dataset_name.root={data}",
        # a few dozen iterations leave most scores under Detectron2's 0.05 default:
        # keep them, so that AP is defined
        "model.roi_heads.box_predictor.test_score_thresh=0.001",
    ]


def segmentation_budget(iters: int) -> list[str]:
    """MMEngine ``--cfg-options`` of the demo: ``iters`` iterations, a tenth of them warm-up."""
    warmup = max(iters // 10, 1)
    return [
        f"train_cfg.max_iters={iters}",
        f"train_cfg.val_interval={iters}",
        f"param_scheduler.0.end={warmup}",
        f"param_scheduler.1.begin={warmup}",
        f"param_scheduler.1.end={iters}",
        f"default_hooks.checkpoint.interval={iters}",
        "default_hooks.logger.interval=10",
    ]


def demo_profile(
    data: Path, workers: int, detection_iters: int | None = None, segmentation_iters: int | None = None
) -> Profile:
    """The CPU demo on the built-in data at ``data`` (iterations: the DEMO budget unless given)."""
    spec = PROFILES["demo"]
    return Profile(
        name="demo",
        python=[sys.executable],
        parallel=[sys.executable],
        imagenet=str(data / "imagenet"),
        probe_data=str(data),
        ade=data / "ade20k" / "ADEChallengeData2016",
        pretrain=spec["pretrain"],
        configs=TRANSFER_CONFIGS[spec["size"]],
        image_sizes=IMAGE_SIZES[spec["size"]],
        data_flags=["data.builtin=true", f"data.num_workers={workers}"],
        train_flags=["train.progress=false", "train.tensorboard=false"],
        overrides={
            "finetune": DEMO["finetune"],
            "linear_probe": DEMO["linear_probe"],
            "detection": detection_budget(detection_iters or DEMO["detection_iters"], data),
            "segmentation": segmentation_budget(segmentation_iters or DEMO["segmentation_iters"]),
        },
        probe_flags=[
            "--img-size",
            str(DEMO["probe_img_size"]),
            "--num-workers",
            "0",
            "--train-images",
            str(DEMO["probe_train_images"]),
        ],
        probe_sweep=DEMO["probe_sweep"],
        random_arch=f"vit_{spec['size']}_patch{spec['patch']}_{DEMO['probe_img_size']}",
        robustness_flags=["--sets", "c,position", "--variants", str(data / DEMO_VARIANTS), "--imagenet",
                          str(data / "imagenet"), "--val-images", str(DEMO["robustness_images"]), "--workers",
                          str(workers), "--batch-size", "100"],
        check=True,
    )


def torchrun(args: argparse.Namespace) -> list[str]:
    """``torchrun`` with ``--gpus`` processes per node (and the rendezvous of a multi-node run)."""
    cmd = ["torchrun", f"--nproc_per_node={args.gpus}"]
    if args.nnodes > 1:
        cmd += [
            f"--nnodes={args.nnodes}",
            f"--node_rank={args.node_rank}",
            f"--master_addr={args.master_addr}",
            f"--master_port={args.master_port}",
        ]
    return cmd


def paper_profile(name: str, args: argparse.Namespace) -> Profile:
    """A paper-scale profile on ImageNet-1K (``--imagenet``), COCO (``--coco``) and ADE20K (``--ade20k``)."""
    spec = PROFILES[name]
    detection = ["--num-gpus", str(args.gpus)]
    if args.nnodes > 1:
        detection += [
            "--num-machines",
            str(args.nnodes),
            "--machine-rank",
            str(args.node_rank),
            "--dist-url",
            f"tcp://{args.master_addr}:{args.master_port}",
        ]
    ade = Path(args.ade20k)
    if not str(args.ade20k).endswith("ADEChallengeData2016"):
        ade = ade / "ADEChallengeData2016"
    return Profile(
        name=name,
        python=["python"],
        parallel=torchrun(args),
        imagenet=str(args.imagenet),
        probe_data=str(args.imagenet),
        ade=ade,
        pretrain=spec["pretrain"],
        configs=TRANSFER_CONFIGS[spec["size"]],
        image_sizes=IMAGE_SIZES[spec["size"]],
        overrides=SIZE_OVERRIDES.get(spec["size"], {}),
        detection_flags=detection,
        segmentation_flags=["--launcher", "pytorch"],
        probe_flags=["--img-size", "224"],
        random_arch=f"vit_{spec['size']}_patch{spec['patch']}_224",
        robustness_flags=["--sets", PAPER_ROBUSTNESS_SETS, "--variants", str(args.imagenet_variants), "--imagenet",
                          str(args.imagenet), "--workers", "10", "--batch-size", "256"],
        env={"detection": {"DETECTRON2_DATASETS": str(args.coco)}},
    )


def profile_from_args(args: argparse.Namespace) -> Profile:
    """The profile ``python -m analysis.reproduce`` was asked for."""
    if args.profile == "demo":
        return demo_profile(Path(args.data), args.workers, args.detection_iters, args.segmentation_iters)
    # each stage's per-GPU batch and accumulation for --gpus x --nnodes, so that the recipes' total batch holds
    return with_cluster_batch(paper_profile(args.profile, args), args.gpus, args.nnodes, args.allow_batch_change)
