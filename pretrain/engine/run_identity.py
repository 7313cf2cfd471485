"""What makes two runs in one output folder the same run, so that auto-resume never continues another one.

A training command resumes from the newest checkpoint of its ``train.output_dir``. The
README's transfer commands set no output folder, so fine-tuning a second backbone (or
the same one with another recipe, or on other data) would otherwise resume the first
run: the new checkpoint would never be trained, and its metrics would name it.

A run's identity is its resolved config without the keys that may change between a run
and its resume (:data:`RESUMABLE_CHANGES`, :data:`RESUMABLE_PREFIXES`: where it writes, how often it saves or logs,
the per-process batch split, worker counts, ...), plus the total batch size and the
SHA-256 of the pretrained weights file (the same path may hold another backbone by now).
Every checkpoint carries it (``run_identity``; older ones their ``config``), so the run
that would be resumed is the one compared: a run that would auto-resume another is
refused before it writes anything, naming what differs, unless it is told to start
afresh (``train.resume=none``: the old checkpoints are moved aside) or to resume a named
file (``train.resume=PATH``: the differences are printed and it continues).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from ..weights.card import file_sha256

# keys a resumed run may set differently: they change neither the model nor the data it
# sees nor the schedule (the total batch is compared instead of batch_size / accum_iter)
RESUMABLE_CHANGES = frozenset({
    "train.output_dir", "train.resume", "train.max_steps", "train.save_every_steps", "train.keep_checkpoints",
    "train.log_every", "train.progress", "train.tensorboard", "train.compile", "train.deterministic",
    "train.batch_size", "train.accum_iter", "train.eval_batch_size", "train.eval_every", "train.fused",
    "optim.fused", "data.num_workers", "data.skip_bad", "probe.feature_batch_size", "train.keep_checkpoints_every",
    "feature_cache",  # where exact cached features live
})
RESUMABLE_PREFIXES = ("train.monitor.",)  # online monitors evaluate; they do not train
_PATH_KEYS = ("path", "checkpoint", "init_checkpoint")  # last part of a key whose value is a file or folder
_NO_FILE = (None, "", "none", "None")
_SHOWN = 6  # differences named in the message


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _normalise(key: str, value: Any, base: Path) -> Any:
    """Paths absolute (a relative one against ``base``), so ``data/x`` and ``/repo/data/x`` compare equal."""
    if key.rsplit(".", 1)[-1] in _PATH_KEYS and isinstance(value, str) and value not in _NO_FILE:
        return str((base / Path(value).expanduser()).resolve())
    return value


def config_identity(config: Mapping[str, Any], base: Path | None = None) -> dict[str, Any]:
    """The compared keys of a resolved config (a nested mapping), dotted, paths made absolute."""
    base = Path.cwd() if base is None else base
    return {k: _normalise(k, v, base) for k, v in sorted(_flatten(config).items())
            if k not in RESUMABLE_CHANGES and not k.startswith(RESUMABLE_PREFIXES)}


def run_identity(cfg: DictConfig, world: int) -> dict[str, Any]:
    """This run's identity: compared config keys, total batch, the pretrained file's SHA-256."""
    config = OmegaConf.to_container(cfg, resolve=True)
    identity: dict[str, Any] = {"config": config_identity(config)}
    train = config.get("train", {})
    if "batch_size" in train:
        identity["total_batch"] = int(train["batch_size"]) * int(train.get("accum_iter", 1)) * int(world)
    ckpt = config.get("checkpoint")
    if isinstance(ckpt, str) and ckpt not in _NO_FILE:
        identity["checkpoint_sha256"] = file_sha256(ckpt) if Path(ckpt).is_file() else None
    return identity


def checkpoint_identity(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The identity of the run that wrote a training checkpoint: its ``run_identity`` entry, else (older
    checkpoints) the compared keys of the config it carries; None when it carries neither."""
    stored = ckpt.get("run_identity")
    if isinstance(stored, Mapping) and isinstance(stored.get("config"), Mapping):
        return dict(stored)
    config = ckpt.get("config")
    return {"config": config_identity(config)} if isinstance(config, Mapping) else None


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every compared item that differs (an item one side lacks is not compared
    for the total batch and the file hash, which older folders do not record)."""
    out = []
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    for key in sorted(set(old_cfg) | set(new_cfg)):
        a, b = old_cfg.get(key, "(unset)"), new_cfg.get(key, "(unset)")
        if a != b:
            out.append(f"{key}: {a} -> {b}")
    for key, what in (("total_batch", "total batch (batch_size x accum_iter x processes)"),
                      ("checkpoint_sha256", "checkpoint file content (sha256)")):
        if key in old and key in new and old[key] != new[key]:
            a, b = (v[:12] if isinstance(v, str) else v for v in (old[key], new[key]))
            out.append(f"{what}: {a} -> {b}")
    return out


def describe(diffs: list[str]) -> str:
    shown = "; ".join(diffs[:_SHOWN])
    return shown + (f"; and {len(diffs) - _SHOWN} more" if len(diffs) > _SHOWN else "")


def refusal(folder: Path, diffs: list[str]) -> str:
    """The one-line reason a run does not auto-resume the run in ``folder``."""
    return (f"train.output_dir={folder} holds checkpoints of a different run ({describe(diffs)}): "
            "give this run its own train.output_dir, or set train.resume=none to start afresh there "
            "(its checkpoints are moved aside), or train.resume=PATH to continue that checkpoint anyway")


