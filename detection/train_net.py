"""Train / evaluate a ViTDet Mask R-CNN LazyConfig with Detectron2 (COCO detection transfer).

    python -m detection.train_net --config-file detection/configs/mask_rcnn_vitdet_b_100ep.py \
        --num-gpus 8 train.init_checkpoint=/path/to/pretrain.pth
    python -m detection.train_net --config-file ... --eval-only train.init_checkpoint=model_final.pth
    python -m detection.train_net --config-file ... --resume            # continue from output_dir

Multi-machine: ``--num-machines M --machine-rank R --dist-url tcp://host:port`` (Detectron2's
``launch``). Trailing ``key=value`` pairs override the config (values are Python literals,
true/false/null, or plain strings). The resolved config is saved as ``config.yaml`` in
``train.output_dir``; Detectron2 logs progress there (``log.txt``, ``metrics.json``) and the
final COCO box / mask AP go to ``detection_metrics.json``. AMP runs only on CUDA; without a
GPU the run falls back to the CPU.
"""
from __future__ import annotations

import ast
import logging
import math
import os
from typing import Any

import detection  # noqa: F401  (Detectron2 shims first)
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import OmegaConf

from detection.checkpointer import ViTDetCheckpointer
from detection.compat import apply_detectron2_shims, has_compiled_ops, name_unreadable_images
from detection.datasets import check_num_classes
from pretrain.atomic import atomic_write_json
from pretrain.engine.cli import run_guarded

logger = logging.getLogger("detectron2")

METRICS_FILE = "detection_metrics.json"
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ------------------------------------------------------------------ config
def parse_override_value(text: str) -> Any:
    """'1e-4' -> 1e-4, '[0, 1]' -> [0, 1], 'true' -> True, 'null' -> None, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    return text


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply ``a.b.c=value`` overrides in place (no hydra needed); returns ``cfg``."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        parts = key.split(".")
        for idx in range(1, len(parts)):
            prefix = ".".join(parts[:idx])
            node = OmegaConf.select(cfg, prefix, default=None)
            if node is None:
                break
            if not OmegaConf.is_config(node):
                raise KeyError(f"cannot override {key}: {prefix} is a {type(node).__name__}, not a config")
        OmegaConf.update(cfg, key, parse_override_value(text), merge=True)
    return cfg


def resolve_device(cfg: Any) -> None:
    """CUDA when asked and present, else CPU; AMP only on CUDA (Detectron2's AMPTrainer needs it)."""
    if str(cfg.train.device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU")
        cfg.train.device = "cpu"
    if cfg.train.device == "cpu" and cfg.train.amp.enabled:
        logger.warning("AMP needs CUDA: disabled on the CPU")
        cfg.train.amp.enabled = False
    if not has_compiled_ops() and "evaluator" in cfg.dataloader:
        cfg.dataloader.evaluator.use_fast_impl = False  # the fast evaluator is compiled code


def plain_hyperparameters(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Replace OmegaConf containers (e.g. ``betas``) in the optimizer's settings by tuples.

    Instantiated LazyConfig values keep their OmegaConf types; pickled into a checkpoint they
    would make it unreadable by weights-only loading (and so break ``--resume``).
    """
    def plain(value: Any) -> Any:
        if OmegaConf.is_config(value):
            value = OmegaConf.to_object(value)
        return tuple(value) if isinstance(value, list) else value

    for group in [optimizer.defaults, *optimizer.param_groups]:
        for key, value in list(group.items()):
            if key != "params":
                group[key] = plain(value)
    return optimizer


# --------------------------------------------------------------- test / train
def do_test(cfg: Any, model: torch.nn.Module) -> dict[str, Any]:
    """COCO evaluation of ``model`` on ``cfg.dataloader.test``; {"bbox": {...}, "segm": {...}}."""
    if "evaluator" not in cfg.dataloader:
        return {}
    evaluator = cfg.dataloader.evaluator
    if "output_dir" not in evaluator or evaluator.output_dir is None:
        evaluator.output_dir = os.path.join(cfg.train.output_dir, "inference")
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(args: Any, cfg: Any) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any] | None]:
    """Detectron2's LazyConfig training loop; returns (model, last evaluation, load report)."""
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optim = plain_hyperparameters(instantiate(cfg.optimizer))
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = ViTDetCheckpointer(model, cfg.train.output_dir, trainer=trainer)

    last_eval: dict[str, Any] = {}

    def evaluate() -> dict[str, Any]:
        last_eval.clear()
        last_eval.update(do_test(cfg, model))
        return last_eval

    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, evaluate),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period
            )
            if comm.is_main_process()
            else None,
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)  # logs key counts
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)  # EvalHook also evaluates after the last iteration
    return model, last_eval, checkpointer.load_report


# ------------------------------------------------------------------ metrics
def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def metrics_record(
    results: dict[str, Any],
    cfg: Any,
    config_file: str,
    iterations: int | None,
    load_report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The suite's metrics record: bbox_AP, bbox_AP50, ..., segm_AP, ... plus provenance."""
    record: dict[str, Any] = {"task": "coco_detection"}
    for task in ("bbox", "segm"):
        for key in AP_KEYS:
            record[f"{task}_{key}"] = _finite(results.get(task, {}).get(key))
    record.update(
        config=config_file,
        init_checkpoint=cfg.train.init_checkpoint or None,
        iterations=iterations,
        output_dir=cfg.train.output_dir,
        device=str(cfg.train.device),
        world_size=comm.get_world_size(),
        total_batch_size=cfg.dataloader.train.get("total_batch_size"),
        shims=apply_detectron2_shims(),
    )
    if load_report:
        record["init_checkpoint_keys"] = {
            "format": load_report.get("format"),
            "loaded": len(load_report.get("loaded", [])),
            "new": len(load_report.get("new", [])),
            "unused": load_report.get("unused", []),
        }
    record["results"] = {task: {k: _finite(v) for k, v in vals.items()} for task, vals in results.items()}
    return record


def write_metrics(record: dict[str, Any], output_dir: str) -> str:
    """Write ``detection_metrics.json`` atomically (a reader never sees half a file); returns its path."""
    path = os.path.join(output_dir, METRICS_FILE)
    atomic_write_json(path, record)
    logger.info(f"Wrote {path}: bbox AP {record['bbox_AP']}, segm AP {record['segm_AP']}")
    return path


# -------------------------------------------------------------------- main
def main(args: Any) -> dict[str, Any]:
    cfg = LazyConfig.load(args.config_file)
    cfg = apply_overrides(cfg, args.opts)
    resolve_device(cfg)
    check_num_classes(cfg)  # before any output: a config that cannot fit the data
    name_unreadable_images()
    default_setup(cfg, args)  # logger, environment info, config.yaml in output_dir, seed

    if args.eval_only:
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        checkpointer = ViTDetCheckpointer(model)
        extra = checkpointer.load(cfg.train.init_checkpoint)
        results = do_test(cfg, model)
        iterations = extra.get("iteration") if isinstance(extra, dict) else None
        iterations = iterations + 1 if isinstance(iterations, int) else None
        load_report = checkpointer.load_report
    else:
        _, results, load_report = do_train(args, cfg)
        iterations = cfg.train.max_iter
    record = metrics_record(results, cfg, args.config_file, iterations, load_report)
    if comm.is_main_process():
        write_metrics(record, cfg.train.output_dir)
    return record


# Unreadable image: Detectron2's loader has no skip option, the file has to go from the json
BAD_IMAGE_HINT = ("fix the file or remove it and its annotations from the json; "
                  "python -m pretrain.data.validate imagefolder IMAGE_DIR decodes every image")


def invoke_main(argv: list[str] | None = None) -> int:
    """Command line: exit 0, 2 on a config that does not fit the data, 1 with one ``error:`` line on
    a known failure (unreadable image or checkpoint, broken annotations); ``DROPPOS_DEBUG=1``: tracebacks."""
    from pretrain.data.validate import DatasetError
    from pretrain.weights import CheckpointError

    args = default_argument_parser().parse_args(argv)
    return run_guarded(lambda: launch(
        main,
        args.num_gpus if torch.cuda.is_available() else 1,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    ), known=(DatasetError, CheckpointError), skip_hint=BAD_IMAGE_HINT)


if __name__ == "__main__":
    raise SystemExit(invoke_main())
