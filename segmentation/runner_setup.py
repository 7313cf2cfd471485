"""Command-line options, config loading and Runner construction shared by ``train.py`` and ``test.py``.

What it adds to plain MMEngine: the work dir default, ``--cfg-options``, the
launcher, a check of the ADE20K folders before the Runner starts, a CPU fallback for AMP configs (AmpOptimWrapper needs CUDA: plain
OptimWrapper is used and the log says so), a weights-only loader for
MMEngine's own checkpoints (resume, test) under torch>=2.6, a check that the heads'
class count is the data's, and the exit codes of the suite's other entry points
(``run_entry``: one ``error:`` line for a known failure, ``DROPPOS_DEBUG=1`` for tracebacks).
"""
from __future__ import annotations

import argparse
import itertools
import os
import os.path as osp
from typing import Any

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader, Runner


def add_runner_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options both entry points take: work dir, ``--cfg-options``, data check, launcher."""
    p.add_argument("--work-dir", help="output folder (default: work_dirs/<config name>)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE", help="override config entries")
    p.add_argument(
        "--check-data", choices=["quick", "full", "off"], default="quick",
        help="validate the ADE20K folders first: the first 200 pairs per split (quick), all, or not at all")
    p.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    p.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return p


def config_from_args(args: argparse.Namespace) -> Config:
    """``load_config`` with the options of ``add_runner_args`` (``LOCAL_RANK`` set for the launcher)."""
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return load_config(args.config, args.cfg_options, args.work_dir, args.launcher)


def load_config(
    path: str,
    cfg_options: dict | None = None,
    work_dir: str | None = None,
    launcher: str = "none",
) -> Config:
    """Read a config, apply ``--cfg-options`` (parsed by DictAction), set work_dir and launcher."""
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(path))[0])
    return cfg


def use_fp32_if_no_cuda(cfg: Config, force_fp32: bool = False) -> str | None:
    """Replace AmpOptimWrapper by OptimWrapper without CUDA (or when asked); returns the reason."""
    wrapper = cfg.get("optim_wrapper")
    if not wrapper or wrapper.get("type") != "AmpOptimWrapper":
        return None
    if torch.cuda.is_available() and not force_fp32:
        return None
    wrapper.type = "OptimWrapper"
    for key in ("loss_scale", "dtype", "use_fsdp"):
        wrapper.pop(key, None)
    return "--no-amp given" if force_fp32 else "CUDA is not available"


def _plain(value: Any) -> bool:
    """True for data a checkpoint may carry without pickled classes: tensors, numbers, text, containers."""
    if isinstance(value, (torch.Tensor, int, float, str, bool, type(None))):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    return False


def load_mmengine_checkpoint(filename: str, map_location: Any = None) -> dict[str, Any]:
    """Read an MMEngine checkpoint with torch's weights-only loader.

    MMEngine 0.10.7 calls ``torch.load`` without ``weights_only``, which torch>=2.6
    turns into weights-only loading, and its checkpoints pickle the message hub's
    ``HistoryBuffer`` (whose state needs ``builtins.getattr``) and numpy scalars.
    Instead of turning the safe loader off, ``pretrain.weights.load_checkpoint_file``
    replaces those objects by inert placeholders; they are then dropped here (only
    log smoothing history and the ETA are lost on resume).
    """
    from pretrain.weights import load_checkpoint_file

    ckpt = load_checkpoint_file(filename, map_location=map_location or "cpu")
    ignored = ckpt.pop("__ignored__", None)
    hub = ckpt.get("message_hub")
    if isinstance(hub, dict):
        for key in ("log_scalars", "runtime_info"):
            if isinstance(hub.get(key), dict):
                hub[key] = {k: v for k, v in hub[key].items() if _plain(v)}
    if ignored:
        print_log(f"{filename}: skipped pickled non-weight objects ({', '.join(ignored)})", "current")
    return ckpt


def use_safe_checkpoint_loader() -> None:
    """Route MMEngine's loading of local checkpoint files (resume, test) through ``load_mmengine_checkpoint``."""
    CheckpointLoader.register_scheme(prefixes="", loader=load_mmengine_checkpoint, force=True)


def refuse_unusable_images() -> bool:
    """Make MMCV's ``LoadImageFromFile`` (once) check every image it loads by the validator's shape
    rule (``pretrain.data.image_shape``): a 4000 x 1 image fails naming its file, not deep inside a
    resize. Returns whether it was installed now."""
    from mmcv.transforms import LoadImageFromFile

    from pretrain.data.image_shape import check_image_shape

    original = LoadImageFromFile.transform
    if getattr(original, "checks_image_shape", False):
        return False

    def transform(self, results: dict):
        results = original(self, results)
        if results is not None:
            height, width = results["img_shape"][:2]
            check_image_shape(results["img_path"], int(width), int(height))
        return results

    transform.checks_image_shape = True
    LoadImageFromFile.transform = transform
    return True


_RUNNERS = itertools.count()


def own_visualizer(cfg: Config) -> None:
    """Give this run's visualizer a name no earlier Runner in the process used.

    MMEngine keeps one visualizer per name for the whole process and hands the
    existing one to any later Runner asking for that name; MMSeg's configs all say
    ``name='visualizer'``. A second run in one process (train, then resume or test)
    would write its scalars into the first run's log folder, and fail once that
    folder is gone.
    """
    vis = cfg.get("visualizer")
    if isinstance(vis, dict):
        vis["name"] = f"{vis.get('name', 'visualizer')}_{next(_RUNNERS)}"


def build_runner(cfg: Config, train: bool, force_fp32: bool = False) -> Runner:
    """Runner from a resolved config, with its own visualizer; logs the AMP fallback in the run's log."""
    reason = use_fp32_if_no_cuda(cfg, force_fp32) if train else None
    own_visualizer(cfg)
    use_safe_checkpoint_loader()
    refuse_unusable_images()
    runner = Runner.from_cfg(cfg)
    if reason:
        print_log(f"AMP off ({reason}): training with OptimWrapper in fp32", "current")
    return runner


def checkpoint_iteration(path: str) -> int:
    """The training iteration an MMEngine checkpoint was saved at (0 if it does not say)."""
    meta = load_mmengine_checkpoint(path).get("meta", {})
    return int(meta.get("iter", 0) or 0)


def dataset_classes(dataset: dict) -> int | None:
    """Classes of a dataset config: its ``metainfo.classes``, else its type's ``METAINFO`` (None if unknown)."""
    classes = (dataset.get("metainfo") or {}).get("classes")
    if classes is None and dataset.get("type"):
        import mmseg.datasets  # noqa: F401  (registers the dataset types)
        from mmseg.registry import DATASETS

        cls = DATASETS.get(dataset["type"])
        classes = getattr(cls, "METAINFO", {}).get("classes") if cls is not None else None
    return len(classes) if classes else None


def check_class_count(cfg: Config, dataloaders: tuple[str, ...]) -> None:
    """Refuse heads whose ``num_classes`` differs from the data's class count (both named in the message)."""
    from pretrain.engine.config import ConfigError

    model = cfg.model if "decode_head" in cfg.model else cfg.model.module  # test-time-aug wrapper
    aux = model.get("auxiliary_head") or []
    heads = [("model.decode_head", model.decode_head)]
    heads += [(f"model.auxiliary_head[{i}]", h) for i, h in enumerate(aux)] if isinstance(aux, list) else [
        ("model.auxiliary_head", aux)]
    for name in dataloaders:
        dataset = (cfg.get(name) or {}).get("dataset") or {}
        found = dataset_classes(dataset)
        if found is None:
            continue
        for key, head in heads:
            if head and "num_classes" in head and int(head["num_classes"]) != found:
                raise ConfigError(f"{key}.num_classes={head['num_classes']} but the {name} data set "
                                  f"({dataset.get('type')}, {dataset.get('data_root', '')}) has {found} classes: "
                                  f"set num_classes={found} in the heads or the data set's metainfo.classes")


def check_data(cfg: Config, dataloaders: tuple[str, ...], mode: str = "quick") -> dict[str, Any]:
    """Before the Runner starts: the ADE20K folder check (:func:`check_ade20k_data`), then the
    heads' class count against the data's (:func:`check_class_count`)."""
    summary = check_ade20k_data(cfg, dataloaders, mode)
    check_class_count(cfg, dataloaders)
    return summary


def check_ade20k_data(cfg: Config, dataloaders: tuple[str, ...], mode: str = "quick") -> dict[str, Any]:
    """Validate the ADE20K-format folders the given dataloaders read, before the Runner starts.

    ``mode``: "quick" checks the first 200 image/label pairs per split, "full" all of
    them, "off" nothing. The class count comes from the decode head. A bad folder
    raises ``pretrain.data.validate.DatasetError`` naming each offending file, so a
    160k-iteration job fails in seconds instead of at its first bad batch.
    """
    from pretrain.data.validate import validate_ade20k

    if mode == "off":
        return {}
    if mode not in ("quick", "full"):
        raise ValueError(f"--check-data must be quick, full or off, got {mode!r}")
    model = cfg.model if "decode_head" in cfg.model else cfg.model.module  # test-time-aug wrapper
    num_classes = int(model.decode_head.num_classes)
    by_root: dict[str, list[str]] = {}
    for name in dataloaders:
        dataset = (cfg.get(name) or {}).get("dataset") or {}
        prefix = dataset.get("data_prefix") or {}
        img, ann = prefix.get("img_path", ""), prefix.get("seg_map_path", "")
        parts = img.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "images" or ann.strip("/") != f"annotations/{parts[1]}":
            print_log(f"{name}: data_prefix {dict(prefix)} is not the ADE20K layout; folder check skipped", "current")
            continue
        splits = by_root.setdefault(dataset.get("data_root", ""), [])
        if parts[1] not in splits:
            splits.append(parts[1])
    summary = {}
    for root, splits in by_root.items():
        summary[root] = validate_ade20k(
            root, num_classes=num_classes, splits=splits, max_files=None if mode == "full" else 200)
        counts = ", ".join(f"{s}: {summary[root][s]} pairs" for s in splits)
        print_log(f"data check ({mode}) passed for {root}: {counts}, label values "
                  f"{summary[root]['label_values'][:8]}{'...' if len(summary[root]['label_values']) > 8 else ''}",
                  "current")
    return summary


BAD_IMAGE_HINT = ("fix or remove the file and its label map; "
                  "python -m pretrain.data.validate imagefolder ROOT/images/SPLIT decodes every image")


def run_entry(main: Any, args: argparse.Namespace) -> int:
    """``main(args)`` with the suite's exit codes: 0, 2 for a config that does not fit the data,
    1 with one ``error:`` line for a bad data folder, an unreadable image or checkpoint."""
    import re

    from pretrain.data.decode import BadImageError
    from pretrain.data.validate import DatasetError
    from pretrain.engine.cli import run_guarded
    from pretrain.weights import CheckpointError

    def call() -> None:
        try:
            main(args)
        except Exception as exc:  # noqa: BLE001 - MMCV's "failed to load image" assertion names the file
            found = re.search(r"failed to load image: (\S+)", str(exc))
            if found is None:
                raise
            raise BadImageError(found.group(1), "MMCV could not decode it") from exc

    return run_guarded(call, known=(DatasetError, CheckpointError), skip_hint=BAD_IMAGE_HINT)
