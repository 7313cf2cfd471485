"""What the end-to-end run's stages write, and where: the one table both the run and the tables read.

Each stage leaves one metrics JSON file in ``<run folder>/<stage>/`` holding one task
(``STAGE_OUTPUTS``); the run side builds commands from it, the table side checks and reads
the files by it. A run folder also holds ``stage_status.json`` (what ran, how long) and
``protocol.json`` (each stage's recipe, seed and checkpoint). A new stage is one row here.
"""

from __future__ import annotations

METHODS = ("droppos", "mae", "adpe")
SCRATCH = "scratch"  # the random-initialisation baseline: every stage but pretraining
INITS = (*METHODS, SCRATCH)

# stage -> (the task its metrics file holds, the metrics file), in the order the run goes
STAGE_OUTPUTS: dict[str, tuple[str, str]] = {
    "pretrain": ("pretrain", "pretrain_metrics.json"),
    "finetune": ("finetune", "classification_metrics.json"),
    "linear_probe": ("linear_probe", "classification_metrics.json"),
    "knn": ("knn", "knn_metrics.json"),
    "attentive_probe": ("attentive_probe", "classification_metrics.json"),
    "lowshot": ("lowshot", "lowshot_metrics.json"),
    "detection": ("coco_detection", "detection_metrics.json"),
    "segmentation": ("ade20k_segmentation", "segmentation_metrics.json"),
    "position_probe": ("position_probe", "position_probe_metrics.json"),
    "finetuned_probe": ("finetuned_probe", "finetuned_probe_metrics.json"),
    "robustness": ("robustness", "robustness_metrics.json"),  # of the fine-tuned classifier
}
# files the tables also accept, though no stage of the run writes them: file -> tasks
EXTRA_METRIC_FILES: dict[str, tuple[str, ...]] = {"attentive_probe_metrics.json": ("attentive_probe",)}

STAGES = tuple(STAGE_OUTPUTS)
METRICS = {stage: file for stage, (_, file) in STAGE_OUTPUTS.items()}  # stage -> metrics file
TASK_STAGES = {task: stage for stage, (task, _) in STAGE_OUTPUTS.items()}  # task -> stage


def _metric_files() -> dict[str, tuple[str, ...]]:
    files: dict[str, tuple[str, ...]] = {}
    for task, file in STAGE_OUTPUTS.values():
        files[file] = (*files.get(file, ()), task)
    return {**files, **EXTRA_METRIC_FILES}


METRIC_FILES = _metric_files()  # metrics file -> the tasks it may hold
STATUS_FILE = "stage_status.json"
PROTOCOL_FILE = "protocol.json"
INIT_FILE = "init.json"  # an ``--init`` run folder's provenance (written by the run, read by the tables)

# What the end-to-end run writes at its output root beside the run folders: the frozen-feature cache
# the feature stages share, the report (folder and Markdown), the SLURM launcher's submitit folder and
# job record, and the folder stage outputs made from other inputs are set aside in.
FEATURE_CACHE = "feature_cache"
REPORT_FOLDER = "report"
REPORT_FILE = "report.md"
SLURM_FOLDER = "slurm"
JOBS_FILE = "jobs.json"
REPLACED_FOLDER = ".replaced"
OUTPUT_ROOT_ENTRIES = frozenset({FEATURE_CACHE, REPORT_FOLDER, REPORT_FILE, SLURM_FOLDER, JOBS_FILE, REPLACED_FOLDER})
