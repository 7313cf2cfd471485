"""DropPos ablation sweeps: axes over the pretraining config, their values checked, the sweep's stage list.

    python -m analysis.reproduce --ablation droppos.mask_ratio=0.5,0.75,0.9
    python -m analysis.reproduce --ablation droppos.mask_ratio --ablation droppos.tau      (default grids)
    python -m analysis.reproduce --ablation droppos.sigma=0,1 --ablation droppos.sigma_decay --ablation-grid

An *axis* is any leaf key of the resolved DropPos pretraining config (the profile's recipe
with its overrides), so options added to ``pretrain/configs/default.yaml`` become axes as
they appear. One axis at a time by default: each value is a *point* that differs from the
recipe in that key alone; ``--ablation-grid`` crosses the axes. The recipe's own point
(``recipe``) is always run, once, and shared by every axis: it is each table's reference
row. A point whose values all equal the recipe's is the recipe point, so a grid reuses
the one-axis runs it contains and a sweep is extended by running it again with more values.

Layout below the output root: one folder per point, named by the keys it changes, holding
the usual run folder of ``analysis.stages`` (seeds as there)::

    <out>/recipe/droppos/pretrain/, .../finetune/, .../seed<k>/...
    <out>/droppos.mask_ratio=0.5/droppos/pretrain/, ...
    <out>/droppos.mask_ratio=0.9+droppos.tau=0.5/droppos/...     (a grid point)
    <out>/ablation_plan.json                                      axes, recipe values, points

Bad input (an unknown key, a value of the wrong type or outside its range, an axis or a
value given twice, a grid over more than ``GRID_CONFIRM_RUNS`` pretraining runs without
``--yes``) raises ``AblationError`` naming the key and value, before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pretrain.atomic import atomic_write_json
from pretrain.engine.config import ConfigError, load_config
from pretrain.models.droppos_variants import DROP_POS_TYPES, MASK_TOKEN_TYPES

from ..reproduce.stages import ROOT, STAGES, Profile, Stage, build_stage_table, stage_availability

METHOD = "droppos"
RECIPE = "recipe"
PLAN_FILE = "ablation_plan.json"
# the stages of a sweep: pretraining, then fine-tuning, linear probing, k-NN and the position probe
ABLATION_STAGES = ("pretrain", "finetune", "linear_probe", "knn", "position_probe")
GRID_CONFIRM_RUNS = 8  # a grid over more pretraining runs than this needs --yes
# keys the sweep itself sets (or that would move the runs elsewhere): never an axis
FIXED_KEYS = {
    "method": "the sweep is of DropPos",
    "train.output_dir": "each point has its own run folder",
    "train.seed": "seeds come from --seeds / --pretrain-seeds",
    "train.resume": "each point resumes its own run",
    "data.path": "the data come from the profile",
}
# Default grids. The DropPos paper's exact ablation grids (its §4.1 tables) could not be read
# through the search tool (its pages corpus holds only the paper's opening pages); these
# bracket the recipe value (default.yaml: gamma 0.75, pos_drop 0.75, sigma 1 with decay,
# attentive on, tau 0.1) on both sides, or switch a flag both ways; the released options
# (mask_token_type, drop_pos_type, conf_ignore, shuffle) take each of their choices. A key
# without a grid here (e.g. droppos.pos_weight, which acts under multi_task only: sweep it
# with --ablation-grid and droppos.drop_pos_type=multi_task) needs its values given.
DEFAULT_GRIDS: dict[str, tuple[str, ...]] = {
    "droppos.mask_ratio": ("0.5", "0.75", "0.9"),
    "droppos.pos_drop_ratio": ("0.5", "0.75", "0.9"),
    "droppos.sigma": ("0", "0.5", "1.0", "2.0"),
    "droppos.sigma_decay": ("true", "false"),
    "droppos.attentive": ("true", "false"),
    "droppos.tau": ("0.05", "0.1", "0.5"),
    "droppos.mask_token_type": MASK_TOKEN_TYPES,
    "droppos.drop_pos_type": DROP_POS_TYPES,
    "droppos.conf_ignore": ("false", "true"),
    "droppos.shuffle": ("false", "true"),
}
GRID_SOURCE = (
    "grids chosen to bracket the recipe value on both sides (the paper's exact ablation grids were not "
    "found through the search tool)"
)


class AblationError(ValueError):
    """A sweep that cannot run: names the key and value at fault."""


@dataclass(frozen=True)
class Axis:
    """One swept key: its values (typed, in the order given) and the recipe's value."""

    key: str
    values: tuple[Any, ...]
    recipe: Any
    default_grid: bool = False


@dataclass(frozen=True)
class Point:
    """One pretraining configuration of the sweep: the keys it changes from the recipe, in axis order."""

    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """Its folder below the output root: ``recipe`` or ``key=value[+key=value]``."""
        return "+".join(f"{k}={format_value(v)}" for k, v in self.settings) or RECIPE

    @property
    def overrides(self) -> list[str]:
        """The ``key=value`` pretraining overrides of this point."""
        return [f"{k}={format_value(v)}" for k, v in self.settings]

    def value(self, key: str, recipe: Any) -> Any:
        """This point's value of ``key`` (the recipe's when it does not change it)."""
        return dict(self.settings).get(key, recipe)


# --------------------------------------------------------------------------- values
def format_value(value: Any) -> str:
    """A value as a folder name and an override: true/false, exact plain decimals (no exponent), text.

    Floats print their shortest exact digits (``1e-13`` -> ``0.0000000000001``, ``1.0`` -> ``1.0``),
    so two different values never share a folder.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return np.format_float_positional(value, trim="0")
    return str(value)


def parse_value(key: str, text: str, recipe: Any) -> Any:
    """``text`` as a value of ``key``, typed like the recipe's value (an int is a float for a float key)."""
    where = f"--ablation {key}={text}"
    if text == "":
        raise AblationError(f"{where}: empty value")
    if isinstance(recipe, bool):
        if text.lower() not in ("true", "false"):
            raise AblationError(f"{where}: '{text}' is not true or false ({key} is a flag)")
        return text.lower() == "true"
    if isinstance(recipe, (int, float)):
        try:
            value = int(text) if isinstance(recipe, int) else float(text)
        except ValueError:
            kind = "an integer" if isinstance(recipe, int) else "a number"
            raise AblationError(f"{where}: '{text}' is not {kind} ({key} is {recipe!r} in the recipe)") from None
        if not math.isfinite(value):
            raise AblationError(f"{where}: '{text}' is not a finite number")
        return value
    if isinstance(recipe, (list, tuple)) or OmegaConf.is_list(recipe):
        raise AblationError(f"{where}: {key} holds a list, which cannot be swept")
    if recipe is None:  # a key whose default is null: read as the command line would, checked by load_config
        try:
            value = OmegaConf.from_dotlist([f"v={text}"]).v
        except Exception:
            raise AblationError(f"{where}: '{text}' is not a value (lists cannot be swept)") from None
        if not isinstance(value, (bool, int, float, str)):
            raise AblationError(f"{where}: '{text}' is not a single value")
        return value
    return text


# --------------------------------------------------------------------------- the recipe
def recipe_overrides(profile: Profile) -> tuple[Path, list[str]]:
    """(recipe file, overrides) of the profile's DropPos pretraining, as its stages run it (seed aside)."""
    recipe_file, overrides = profile.pretrain[METHOD]
    return ROOT / "pretrain" / "configs" / recipe_file, [*profile.data_flags, *profile.train_flags, *overrides]


def recipe_config(profile: Profile) -> DictConfig:
    """The resolved DropPos pretraining config of ``profile`` (what an axis key must name)."""
    recipe, overrides = recipe_overrides(profile)
    return load_config(recipe, overrides)


def _leaf_keys(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf keys of a config container -> value."""
    leaves: dict[str, Any] = {}
    for name, value in cfg.items():
        if isinstance(value, dict) and value:
            leaves.update(_leaf_keys(value, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = value
    return leaves


# --------------------------------------------------------------------------- axes and points
def parse_axes(specs: list[str], cfg: DictConfig) -> list[Axis]:
    """``KEY=V1,V2,...`` or ``KEY`` (its default grid) per ``--ablation`` -> axes, each checked against ``cfg``."""
    leaves = _leaf_keys(OmegaConf.to_container(cfg, resolve=True))
    axes: list[Axis] = []
    for spec in specs:
        key, sep, values_text = spec.partition("=")
        key = key.strip()
        if key not in leaves:
            close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise AblationError(f"--ablation {spec}: unknown key '{key}' (not a key of the pretraining config){hint}")
        if key in FIXED_KEYS:
            raise AblationError(f"--ablation {spec}: '{key}' is not an ablation axis ({FIXED_KEYS[key]})")
        if any(a.key == key for a in axes):
            raise AblationError(f"--ablation {key}: axis given twice (give all its values once: {key}=V1,V2,...)")
        default = not sep
        if default:
            if key not in DEFAULT_GRIDS:
                raise AblationError(f"--ablation {key}: no default grid for '{key}'; give its values ({key}=V1,V2,...)")
            texts = list(DEFAULT_GRIDS[key])
        else:
            texts = [t.strip() for t in values_text.split(",")]
        values: list[Any] = []
        for text in texts:
            value = parse_value(key, text, leaves[key])
            if value in values:
                raise AblationError(f"--ablation {key}: value {format_value(value)} given twice")
            values.append(value)
        axes.append(Axis(key, tuple(values), leaves[key], default))
    return axes


def sweep_points(axes: list[Axis], grid: bool = False) -> list[Point]:
    """The recipe point first, then each axis's values one at a time (or every combination with ``grid``)."""
    points: list[Point] = [Point()]
    if grid:
        combos = itertools.product(*[a.values for a in axes])
        candidates = [Point(tuple((a.key, v) for a, v in zip(axes, c) if not _same(v, a.recipe))) for c in combos]
    else:
        candidates = [Point(((a.key, v),)) for a in axes for v in a.values if not _same(v, a.recipe)]
    for p in candidates:
        if p not in points:
            points.append(p)
    return points


def _same(value: Any, recipe: Any) -> bool:
    """Whether a swept value is the recipe's (a flag equals only a flag)."""
    return value == recipe and isinstance(value, bool) == isinstance(recipe, bool)


def check_points(points: list[Point], profile: Profile) -> None:
    """Every point's config passes the pretraining config's checks (the engine's and the method's
    ``check_config``: the same rule as a direct pretraining run), and no two points share a folder."""
    recipe, overrides = recipe_overrides(profile)
    folders: dict[str, Point] = {}
    for point in points:
        if point.name in folders and folders[point.name] != point:
            raise AblationError(f"--ablation: two points print as the same folder '{point.name}'")
        folders[point.name] = point
        try:
            load_config(recipe, [*overrides, *point.overrides])
        except ConfigError as exc:
            raise AblationError(f"--ablation {point.name}: {exc}") from None


def check_budget(points: list[Point], grid: bool, pretrain_seeds: int, yes: bool) -> None:
    """A grid over more than GRID_CONFIRM_RUNS pretraining runs stops unless confirmed (``--yes``)."""
    runs = len(points) * pretrain_seeds
    if grid and runs > GRID_CONFIRM_RUNS and not yes:
        raise AblationError(
            f"--ablation-grid: {len(points)} points x {pretrain_seeds} pretraining seed(s) = {runs} pretraining runs "
            f"(each with its transfer stages), more than {GRID_CONFIRM_RUNS}: add --yes to run it"
        )


def plan_sweep(
    specs: list[str], profile: Profile, grid: bool = False, pretrain_seeds: int = 1, yes: bool = False
) -> tuple[list[Axis], list[Point]]:
    """Parse and check the ``--ablation`` options for ``profile``: (axes, points), or AblationError before any work."""
    try:
        cfg = recipe_config(profile)
    except ConfigError as exc:
        raise AblationError(f"the profile's DropPos recipe does not load: {exc}") from None
    if cfg.method != METHOD:
        raise AblationError(f"the profile's pretraining recipe is method '{cfg.method}', not DropPos")
    axes = parse_axes(specs, cfg)
    points = sweep_points(axes, grid)
    check_points(points, profile)
    check_budget(points, grid, pretrain_seeds, yes)
    return axes, points


# --------------------------------------------------------------------------- stages
def build_ablation_stages(
    profile: Profile,
    out: Path,
    points: list[Point],
    seeds: int = 1,
    pretrain_seeds: int = 1,
    stages: tuple[str, ...] = ABLATION_STAGES,
) -> list[Stage]:
    """Every point's stages (``analysis.stages``' builder, the point's overrides on its pretraining), stage by stage.

    Each stage's run folder is ``<point>/droppos[/seed<k>]`` below ``out``; its protocol records the point.
    Only the swept stages are checked for availability (a fresh interpreter imports MMSeg for segmentation).
    """
    recipe_file, overrides = profile.pretrain[METHOD]
    table: list[Stage] = []
    for point in points:
        p = dataclasses.replace(
            profile, pretrain={METHOD: (recipe_file, [*overrides, *point.overrides])}, check=False
        )
        for s in build_stage_table(p, out / point.name, [METHOD], seeds, pretrain_seeds):
            if s.name in stages:
                s.method = f"{point.name}/{s.method}"
                s.protocol = {**s.protocol, "ablation": {k: format_value(v) for k, v in point.settings}}
                if profile.check:
                    s.available = stage_availability(s.name, METHOD, Path(s.protocol["recipe"]))
                table.append(s)
    return [s for name in STAGES if name in stages for s in table if s.name == name]


# --------------------------------------------------------------------------- the plan file
def write_plan(out: Path, axes: list[Axis], points: list[Point], profile: str) -> dict:
    """Record the sweep in ``<out>/ablation_plan.json``, merged with earlier sweeps into the same folder."""
    path = out / PLAN_FILE
    plan = read_plan(out) if path.is_file() else {"profile": profile, "axes": {}, "recipe": {}, "points": {}}
    for a in axes:
        known = plan["axes"].setdefault(a.key, [])
        known += [format_value(v) for v in a.values if format_value(v) not in known]
        plan["recipe"][a.key] = format_value(a.recipe)
    for p in points:
        plan["points"][p.name] = {k: format_value(v) for k, v in p.settings}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan)
    return plan


def read_plan(out: Path) -> dict:
    """``<out>/ablation_plan.json`` (axes -> values, recipe values, point -> its settings)."""
    path = Path(out) / PLAN_FILE
    try:
        plan = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AblationError(f"{path}: not a sweep's plan ({type(exc).__name__}: {exc})") from None
    if not isinstance(plan, dict) or not all(isinstance(plan.get(k), dict) for k in ("axes", "recipe", "points")):
        raise AblationError(f"{path}: expected an object with 'axes', 'recipe' and 'points'")
    return plan
