"""The ``train.monitor`` section of a pretraining config: which online monitors run, when, on what.

Checked before any work (``check_monitor_config``, called by ``engine.config.validate``): the
interval (``every_epochs``: null turns the monitors off, else >= 1), the monitor names,
the sizes. What needs the data (a slice larger than its split) is checked when the
monitor's images are opened, still before training starts (``pretrain.engine.monitors``).
"""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

SECTION = "train.monitor"
MONITORS = ("knn", "position", "rankme")  # weighted k-NN top-1, position-probe top-1, RankMe
DEFAULT_DROP_RATIO = 0.75  # the probe's drop ratio for methods without one (MAE, AdPE): DropPos's pos_drop


@dataclass(frozen=True)
class MonitorSettings:
    """What ``train.monitor`` asks for (see ``pretrain/configs/default.yaml``)."""

    every_epochs: int
    monitors: tuple[str, ...]
    split: str  # held-out split: k-NN queries, probe evaluation, RankMe
    images: int  # held-out images (evenly spread over the classes); 0 = the whole split
    bank_images: int  # training-split images: k-NN neighbours and probe training; 0 = all
    batch_size: int
    crop_pct: float
    knn_k: int
    knn_temperature: float
    drop_ratio: float
    probe_steps: int
    probe_lr: float
    probe_weight_decay: float
    probe_batch_size: int
    probe_tokens_per_image: int
    seed: int

    def due(self, epoch: int, total_epochs: int) -> bool:
        """Measure after epoch ``epoch`` (1-based): every ``every_epochs``-th one and the last."""
        return epoch % self.every_epochs == 0 or epoch == total_epochs


def _get(cfg: DictConfig, key: str, default=None):
    return OmegaConf.select(cfg, f"{SECTION}.{key}", default=default)


def recipe_drop_ratio(cfg: DictConfig) -> float:
    """The position probe's drop ratio: ``train.monitor.probe_drop_ratio``, else the recipe's
    (``droppos.pos_drop_ratio`` for DropPos; 0.75 for methods that drop no position)."""
    given = _get(cfg, "probe_drop_ratio")
    if given is not None:
        return float(given)
    if cfg.method == "droppos":
        return float(cfg.droppos.pos_drop_ratio)
    return DEFAULT_DROP_RATIO


def monitor_settings(cfg: DictConfig) -> MonitorSettings | None:
    """The monitors a run config asks for, or None when they are off (``every_epochs: null``)."""
    every = _get(cfg, "every_epochs")
    if every is None:
        return None
    return MonitorSettings(
        every_epochs=int(every),
        monitors=tuple(str(m) for m in _get(cfg, "monitors", MONITORS)),
        split=str(_get(cfg, "split", "val")),
        images=int(_get(cfg, "images", 0)),
        bank_images=int(_get(cfg, "bank_images", 0)),
        batch_size=int(_get(cfg, "batch_size", 256)),
        crop_pct=float(_get(cfg, "crop_pct", 0.875)),
        knn_k=int(_get(cfg, "knn_k", 20)),
        knn_temperature=float(_get(cfg, "knn_temperature", 0.07)),
        drop_ratio=recipe_drop_ratio(cfg),
        probe_steps=int(_get(cfg, "probe_steps", 300)),
        probe_lr=float(_get(cfg, "probe_lr", 3e-3)),
        probe_weight_decay=float(_get(cfg, "probe_weight_decay", 1e-4)),
        probe_batch_size=int(_get(cfg, "probe_batch_size", 1024)),
        probe_tokens_per_image=int(_get(cfg, "probe_tokens_per_image", 16)),
        seed=int(_get(cfg, "seed", 0)),
    )


def check_monitor_config(cfg: DictConfig) -> None:
    """One clear ValueError per bad ``train.monitor`` value (the config validation makes it a ConfigError)."""
    every = _get(cfg, "every_epochs")
    if every is None:
        return
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"config key '{SECTION}.every_epochs' must be a number of epochs >= 1 "
                          f"(null turns the monitors off), got {every!r}")
    names = _get(cfg, "monitors", MONITORS)
    if isinstance(names, str) or not names:
        raise ValueError(f"config key '{SECTION}.monitors' must be a non-empty list of {', '.join(MONITORS)}, "
                          f"got {names!r}")
    for name in names:
        if name not in MONITORS:
            raise ValueError(f"config key '{SECTION}.monitors' names an unknown monitor {name!r}; "
                              f"choose from {', '.join(MONITORS)}")
    for key in ("images", "bank_images"):
        if int(_get(cfg, key, 0)) < 0:
            raise ValueError(f"config key '{SECTION}.{key}' must be >= 0 (0 = the whole split), got {_get(cfg, key)}")
    for key in ("batch_size", "knn_k", "probe_steps", "probe_batch_size", "probe_tokens_per_image"):
        value = _get(cfg, key)
        if value is not None and int(value) < 1:
            raise ValueError(f"config key '{SECTION}.{key}' must be >= 1, got {value}")
    for key in ("knn_temperature", "probe_lr"):
        value = _get(cfg, key)
        if value is not None and not float(value) > 0:
            raise ValueError(f"config key '{SECTION}.{key}' must be > 0, got {value}")
    crop = _get(cfg, "crop_pct")
    if crop is not None and not 0.0 < float(crop) <= 1.0:
        raise ValueError(f"config key '{SECTION}.crop_pct' must lie in (0, 1], got {crop}")
    ratio = recipe_drop_ratio(cfg)
    if "position" in names:
        patches = (int(cfg.model.img_size) // int(cfg.model.patch_size)) ** 2
        if not 0.0 < ratio <= 1.0 or round(ratio * patches) < 1:
            raise ValueError(f"the position monitor's drop ratio {ratio} drops no position of the {patches} patches "
                              f"(set '{SECTION}.probe_drop_ratio' in (0, 1])")
