"""Config loading and Runner construction shared by ``train.py`` and ``test.py``.

What it adds to plain MMEngine: the work dir default, ``--cfg-options``, the
launcher, a CPU fallback for AMP configs (AmpOptimWrapper needs CUDA: plain
OptimWrapper is used and the log says so), and the allow-list that lets
torch>=2.6's weights-only loader read MMEngine's own checkpoints (resume, test).
"""
from __future__ import annotations

import os.path as osp
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner


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


def allow_mmengine_checkpoints() -> None:
    """Let torch.load(weights_only=True) read what MMEngine saves beside the weights.

    MMEngine 0.10.7 calls torch.load without weights_only, which torch>=2.6 turns
    into weights-only loading; its checkpoints also hold the message hub's
    HistoryBuffer and numpy scalars. These types are data containers, so they
    are allow-listed instead of turning the safe loader off.
    """
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer

    allowed = [HistoryBuffer, np.dtype, np.ndarray, np.core.multiarray._reconstruct if hasattr(np, "core") else None]
    try:
        from numpy._core.multiarray import _reconstruct, scalar

        allowed += [_reconstruct, scalar]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar

        allowed += [_reconstruct, scalar]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    torch.serialization.add_safe_globals([a for a in allowed if a is not None])


def build_runner(cfg: Config, train: bool, force_fp32: bool = False) -> Runner:
    """Runner from a resolved config; logs the AMP fallback in the run's log."""
    reason = use_fp32_if_no_cuda(cfg, force_fp32) if train else None
    allow_mmengine_checkpoints()
    runner = Runner.from_cfg(cfg)
    if reason:
        print_log(f"AMP off ({reason}): training with OptimWrapper in fp32", "current")
    return runner


def checkpoint_iteration(path: str) -> int:
    """The training iteration an MMEngine checkpoint was saved at (0 if it does not say)."""
    allow_mmengine_checkpoints()
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    meta = ckpt.get("meta", {}) if isinstance(ckpt, dict) else {}
    return int(meta.get("iter", 0) or 0)
