"""Run configuration: one default YAML with every key, recipe files with diffs, CLI overrides.

``load_config(recipe, overrides)`` merges default <- recipe(s) <- ``key=value``
overrides (OmegaConf dot-list syntax). Unknown keys are rejected with the
closest valid name; values must keep the default's type; method-specific
ranges are checked before any work starts: the engine's keys here, each method's own
section by its ``check_config`` (through the registry). ``save_config`` writes the resolved
config next to a run's outputs.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..atomic import atomic_write_text
from ..models.option_checks import optional_number
from ..models.registry import method_class, method_names
from .keep_checkpoints import check_keep_every
from .monitor_config import check_monitor_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class ConfigError(ValueError):
    """A configuration that cannot run, with the offending key and file."""


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of a config (interpolations kept as strings)."""
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and len(v) > 0:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_keys(default: DictConfig, other: DictConfig, source: str) -> None:
    valid = _flatten(default)
    sections = {k.rsplit(".", 1)[0] for k in valid if "." in k}
    for key in _flatten(other):
        if key in valid:
            continue
        # allow a whole sub-dict whose default is an empty mapping (free-form sections)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        if parent and parent in valid and isinstance(OmegaConf.select(default, parent), DictConfig):
            continue
        candidates = list(valid) + list(sections)
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
        if not close:
            leaf = key.rsplit(".", 1)[-1]
            close = [c for c in valid if c.rsplit(".", 1)[-1] == leaf][:1]
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown config key '{key}' in {source}{hint}")


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (list, tuple, ListConfig)):
        return "list"
    return type(v).__name__


def _check_types(default: DictConfig, cfg: DictConfig) -> None:
    dflt = _flatten(default)
    for key, value in _flatten(cfg).items():
        if key not in dflt or dflt[key] is None or value is None:
            continue
        want, got = _type_name(dflt[key]), _type_name(value)
        if isinstance(value, str) and value.startswith("${"):
            continue
        if want == got or (want == "float" and got == "int"):
            continue
        raise ConfigError(f"config key '{key}' must be {want}, got {got} ({value!r})")


def _read_yaml(path: str | os.PathLike, search: Path = CONFIG_DIR) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        alt = search / path
        if alt.is_file():
            path = alt
        elif (search / f"{path}.yaml").is_file():
            path = search / f"{path}.yaml"
        else:
            raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping")
    return cfg


def load_config(
    recipes: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    overrides: Sequence[str] = (),
    default: str | os.PathLike = DEFAULT_CONFIG,
    validator: Callable[[DictConfig], None] | None = None,
) -> DictConfig:
    """Merge the default config, recipe files (in order) and ``key=value`` overrides.

    ``default`` names the YAML holding every valid key (the pretraining one unless
    given); ``validator`` runs range checks (the pretraining ``validate`` by default).
    Recipe paths are looked up as given, then beside ``default``.
    """
    base = _read_yaml(default)
    search = Path(default).resolve().parent
    cfg = base
    if recipes is None:
        recipes = []
    elif isinstance(recipes, (str, os.PathLike)):
        recipes = [recipes]
    for recipe in recipes:
        part = _read_yaml(recipe, search)
        part = OmegaConf.masked_copy(part, [k for k in part.keys() if k != "_base_"]) if "_base_" in part else part
        _check_keys(base, part, str(recipe))
        cfg = OmegaConf.merge(cfg, part)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
    try:
        cli = OmegaConf.from_dotlist(list(overrides))
    except Exception as exc:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {exc}") from exc
    _check_keys(base, cli, "command-line overrides")
    cfg = OmegaConf.merge(cfg, cli)
    _check_types(base, cfg)
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:
        raise ConfigError(f"cannot resolve config: {exc}") from exc
    (validator or (validate if Path(default).resolve() == DEFAULT_CONFIG else (lambda c: None)))(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """The engine's range checks, then the method's own (``check_config`` via the registry), before any work."""
    if cfg.method not in method_names():
        raise ConfigError(f"config key 'method' must be one of {method_names()}, got {cfg.method!r}")
    img, patch = int(cfg.model.img_size), int(cfg.model.patch_size)
    if img <= 0 or patch <= 0 or img % patch != 0:
        raise ConfigError(f"model.img_size ({img}) must be a positive multiple of model.patch_size ({patch})")
    for key in ("train.epochs", "train.batch_size", "train.accum_iter"):
        if int(OmegaConf.select(cfg, key)) < 1:
            raise ConfigError(f"config key '{key}' must be >= 1, got {OmegaConf.select(cfg, key)}")
    if cfg.train.precision not in ("auto", "bf16", "fp16", "fp32"):
        raise ConfigError(f"train.precision must be auto, bf16, fp16 or fp32, got {cfg.train.precision!r}")
    if cfg.optim.clip_mode not in ("global", "per_tensor"):
        raise ConfigError(f"optim.clip_mode must be 'global' or 'per_tensor', got {cfg.optim.clip_mode!r}")
    try:
        for key in ("optim.lr", "optim.clip_grad"):  # null by default: their type is checked here
            optional_number(key, OmegaConf.select(cfg, key))
        check_monitor_config(cfg)  # train.monitor (pretrain.engine.monitor_config)
        check_keep_every(cfg)
        method_class(cfg.method).check_config(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config (YAML) next to a run's outputs."""
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))
