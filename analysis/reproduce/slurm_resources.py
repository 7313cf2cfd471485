"""What each stage's SLURM job asks for, per profile: GPUs, nodes, CPUs, memory, time, checkpoint interval.

A stage whose command holds a launcher (torchrun: pretraining, the classification stages,
segmentation; Detectron2's: detection) gets ``--gpus`` GPUs on each of ``--nnodes`` nodes
(one task per node that runs the stage's launcher); a one-process stage (the position
probes, the robustness evaluation) runs on one GPU of one node. Which of the two a stage is
comes from its launch (``parallel``: ``analysis.reproduce.slurm.launch_of``), so this table
cannot disagree with the command. CPUs and memory scale with the GPUs (data loading of
ImageNet-scale JPEGs). ``checkpoint_min`` is how much wall time a stage may lose when it is
stopped: the interval between two of its checkpoints (one epoch of pretraining or
fine-tuning; Detectron2's and MMEngine's checkpoint periods), or its whole run where it
keeps none (k-NN, the position probes). The paper figures are estimates for 8 A100-class
GPUs per node, stated here so that a time limit below them is refused before anything is
submitted. The demo runs each stage as one CPU process with the threads of ``--threads``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resources:
    """One stage's job: ``nodes`` nodes, one task each, with ``gpus`` GPUs, ``cpus`` CPUs and ``mem_gb`` each."""

    gpus: int
    nodes: int
    cpus: int
    mem_gb: int
    time_min: int
    checkpoint_min: float


# stage -> (CPUs per GPU, GB per GPU, time limit min, checkpoint interval min for ViT-B, for ViT-L)
PAPER: dict[str, tuple[int, int, int, float, float]] = {
    "pretrain": (10, 48, 24 * 60, 12, 30),  # a checkpoint each epoch
    "finetune": (10, 48, 24 * 60, 15, 35),
    "linear_probe": (10, 48, 12 * 60, 10, 20),
    "knn": (10, 48, 4 * 60, 45, 90),  # no checkpoint: the whole run
    "attentive_probe": (10, 48, 12 * 60, 10, 20),
    "detection": (10, 48, 24 * 60, 60, 120),  # Detectron2's checkpointer period
    "segmentation": (10, 48, 24 * 60, 60, 120),  # MMEngine's checkpoint interval
    "position_probe": (10, 48, 4 * 60, 60, 120),  # no checkpoint: the whole run
    "finetuned_probe": (10, 48, 4 * 60, 60, 120),
    "lowshot": (10, 48, 4 * 60, 60, 120),  # features then logistic regression: no checkpoint
    "robustness": (10, 48, 4 * 60, 60, 120),  # evaluation only: no checkpoint
}
PAPER_OTHER = (10, 48, 12 * 60, 60, 120)  # a stage this table does not list yet
# the demo: stage -> (time limit min, checkpoint interval min): one epoch of the DEMO budget, the whole run
# of the stages without checkpoints (k-NN, the probes, detection's and segmentation's few iterations)
DEMO: dict[str, tuple[int, float]] = {
    "pretrain": (30, 0.7),
    "finetune": (30, 0.5),
    "linear_probe": (30, 0.2),
    "knn": (30, 0.5),
    "attentive_probe": (30, 0.2),
    "detection": (30, 2.0),
    "segmentation": (30, 1.0),
    "position_probe": (30, 1.5),
    "finetuned_probe": (30, 1.5),
    "lowshot": (30, 0.5),
    "robustness": (30, 1.0),
}
DEMO_OTHER = (30, 2.0)
DEMO_MEM_GB = 4
REPORT = Resources(gpus=0, nodes=1, cpus=1, mem_gb=8, time_min=60, checkpoint_min=0)


def stage_resources(
    profile: str, stage: str, gpus: int, nnodes: int, threads: int | None, large: bool = False, *, parallel: bool
) -> Resources:
    """The job of ``stage`` in ``profile`` on ``gpus`` GPUs per node x ``nnodes`` nodes (demo: ``threads`` CPUs).

    ``parallel``: the stage's command holds a launcher that starts its processes on every GPU of
    every node (else it is one process: one GPU of one node).
    """
    if profile == "demo":
        time_min, ckpt = DEMO.get(stage, DEMO_OTHER)
        return Resources(0, 1, max(1, threads or 1), DEMO_MEM_GB, time_min, ckpt)
    cpus_per_gpu, gb_per_gpu, time_min, ckpt_b, ckpt_l = PAPER.get(stage, PAPER_OTHER)
    g, n = (gpus, nnodes) if parallel else (1, 1)
    return Resources(g, n, cpus_per_gpu * g, gb_per_gpu * g, time_min, ckpt_l if large else ckpt_b)
