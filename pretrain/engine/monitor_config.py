"""The ``train.monitor`` section of a pretraining config: which online monitors run, when, on what.

Checked before any work (``check_monitor_config``, called by ``engine.config.validate``): the
interval (``every_epochs``: null turns the monitors off, else >= 1), the monitor names,
the sizes. What needs the data (a slice larger than its split) is checked when the
monitor's images are opened, still before training starts (``pretrain.engine.monitors``).
"""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from ..models.option_checks import number

SECTION = "train.monitor"
MONITORS = ("knn", "position", "rankme")  # weighted k-NN top-1, position-probe top-1, RankMe
NULLABLE = ("every_epochs", "probe_drop_ratio")  # the keys of train.monitor whose null means something
DEFAULT_DROP_RATIO = 0.75  # the probe's drop ratio for methods without one (MAE, AdPE): DropPos's pos_drop


@dataclass(frozen=True)
class MonitorSettings:
    """What ``train.monitor`` asks for (every key and its default: ``pretrain/configs/default.yaml``)."""

    every_epochs: int
    monitors: tuple[str, ...]
    split: str  # held-out split: k-NN queries, probe evaluation, RankMe
    images: int  # held-out images (evenly spread over the classes); 0 = the whole split
    bank_images: int  # training-split images: k-NN neighbours and probe training; 0 = all
    batch_size: int
    crop_pct: float
    knn_k: int
    knn_temperature: float
    drop_ratio: float | None  # the position probe's (None when the position monitor is off)
    probe_steps: int
    probe_lr: float
    probe_weight_decay: float
    probe_batch_size: int
    probe_tokens_per_image: int
    seed: int

    def due(self, epoch: int, total_epochs: int) -> bool:
        """Measure after epoch ``epoch`` (1-based): every ``every_epochs``-th one and the last."""
        return epoch % self.every_epochs == 0 or epoch == total_epochs


def recipe_drop_ratio(cfg: DictConfig) -> float:
    """The position probe's drop ratio: ``train.monitor.probe_drop_ratio``, else the recipe's
    (``droppos.pos_drop_ratio`` for DropPos; 0.75 for methods that drop no position).
    OptionError (a ValueError) naming the key for a value that is no finite number."""
    given = cfg.train.monitor.probe_drop_ratio
    if given is not None:
        return number(f"{SECTION}.probe_drop_ratio", given)
    if cfg.method == "droppos":
        return float(cfg.droppos.pos_drop_ratio)
    return DEFAULT_DROP_RATIO


def monitor_settings(cfg: DictConfig) -> MonitorSettings | None:
    """The monitors a run config (``load_config``'s: every key present) asks for, or None when they are
    off (``every_epochs: null``)."""
    m = cfg.train.monitor
    if m.every_epochs is None:
        return None
    monitors = tuple(str(name) for name in m.monitors)
    return MonitorSettings(
        every_epochs=int(m.every_epochs),
        monitors=monitors,
        split=str(m.split),
        images=int(m.images),
        bank_images=int(m.bank_images),
        batch_size=int(m.batch_size),
        crop_pct=float(m.crop_pct),
        knn_k=int(m.knn_k),
        knn_temperature=float(m.knn_temperature),
        drop_ratio=recipe_drop_ratio(cfg) if "position" in monitors else None,
        probe_steps=int(m.probe_steps),
        probe_lr=float(m.probe_lr),
        probe_weight_decay=float(m.probe_weight_decay),
        probe_batch_size=int(m.probe_batch_size),
        probe_tokens_per_image=int(m.probe_tokens_per_image),
        seed=int(m.seed),
    )


def check_monitor_config(cfg: DictConfig) -> None:
    """One clear ValueError per bad ``train.monitor`` value (the config validation makes it a ConfigError).

    The types are the default config's (``load_config`` checks them); what is left are the ranges."""
    m = cfg.train.monitor
    every = m.every_epochs
    if every is None:
        return
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"config key '{SECTION}.every_epochs' must be a number of epochs >= 1 "
                          f"(null turns the monitors off), got {every!r}")
    names = m.monitors
    if isinstance(names, str) or not names:
        raise ValueError(f"config key '{SECTION}.monitors' must be a non-empty list of {', '.join(MONITORS)}, "
                          f"got {names!r}")
    for name in names:
        if name not in MONITORS:
            raise ValueError(f"config key '{SECTION}.monitors' names an unknown monitor {name!r}; "
                              f"choose from {', '.join(MONITORS)}")
    for key, value in m.items():
        if value is None and key not in NULLABLE:
            raise ValueError(f"config key '{SECTION}.{key}' must be set (only {' and '.join(NULLABLE)} may be null)")
    for key in ("images", "bank_images"):
        if int(m[key]) < 0:
            raise ValueError(f"config key '{SECTION}.{key}' must be >= 0 (0 = the whole split), got {m[key]}")
    for key in ("batch_size", "knn_k", "probe_steps", "probe_batch_size", "probe_tokens_per_image"):
        if int(m[key]) < 1:
            raise ValueError(f"config key '{SECTION}.{key}' must be >= 1, got {m[key]}")
    for key in ("knn_temperature", "probe_lr"):
        if not float(m[key]) > 0:
            raise ValueError(f"config key '{SECTION}.{key}' must be > 0, got {m[key]}")
    if not 0.0 < float(m.crop_pct) <= 1.0:
        raise ValueError(f"config key '{SECTION}.crop_pct' must lie in (0, 1], got {m.crop_pct}")
    if "position" in names:
        ratio = recipe_drop_ratio(cfg)
        patches = (int(cfg.model.img_size) // int(cfg.model.patch_size)) ** 2
        if not 0.0 < ratio <= 1.0 or round(ratio * patches) < 1:
            raise ValueError(f"the position monitor's drop ratio {ratio} drops no position of the {patches} patches "
                              f"(set '{SECTION}.probe_drop_ratio' in (0, 1])")
