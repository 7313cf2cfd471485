"""The rules a method's options must follow, one function per kind of rule.

Each method's ``check_config`` applies them to its own config section; pretraining
(``pretrain.engine.config.validate``) and the ablation sweeps both reach them through
the registry, so one option has one rule wherever it is set. A broken value raises
:class:`OptionError` naming the key, the value and why.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from .masking import num_kept


class OptionError(ValueError):
    """A method option outside its rule; the message names the config key."""


def grid_patches(cfg: Any) -> int:
    """Patches of the run's grid (``model.img_size / model.patch_size`` squared)."""
    side = int(cfg.model.img_size) // int(cfg.model.patch_size)
    return side * side


def number(key: str, value: Any) -> float:
    """``value`` as a finite number (bools and text refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise OptionError(f"config key '{key}' must be a finite number, got {value!r}")
    return float(value)


def ratio_keeping(key: str, value: Any, total: int, what: str) -> int:
    """A ratio in (0, 1) that keeps at least one of ``total`` ``what`` and drops at least one; returns the kept count."""
    r = number(key, value)
    if not 0.0 < r < 1.0:
        raise OptionError(f"config key '{key}' must lie strictly between 0 and 1, got {value}")
    kept = num_kept(total, r)
    if kept < 1 or kept == total:
        raise OptionError(
            f"config key '{key}'={value} keeps {kept} of the {total} {what}: it must keep at least one and drop at least one"
        )
    return kept


def at_least(key: str, value: Any, low: float, why: str = "", strict: bool = False) -> None:
    """``value >= low`` (``> low`` when strict); nan refused."""
    v = number(key, value)
    if not (v > low if strict else v >= low):
        raise OptionError(f"config key '{key}' must be {'>' if strict else '>='} {low:g}{why}, got {value}")


def one_of(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise OptionError(f"config key '{key}' must be one of {tuple(choices)}, got {value!r}")


def flag(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise OptionError(f"config key '{key}' must be true or false, got {value!r}")


def optional_number(key: str, value: Any, low: float = 0.0) -> None:
    """null, or a finite number > ``low`` (an absolute lr, a clipping norm)."""
    if value is not None:
        at_least(key, value, low, strict=True)
