"""What a stage's output was made from, so that skip-if-done never skips a stage asked with other inputs.

When a stage starts, ``<stage folder>/stage_inputs.json`` records its inputs: the recipe
file and its sha256, the sha256 of every file it reads (the checkpoint, the fine-tuned
models of the §4.3 probe), its arguments (overrides, data paths, seed; launcher and
worker counts aside) and its environment. A later run compares the stage it would skip
(or resume) with that record: a different checkpoint, an edited recipe file, a changed
override is named, and the old folder is set aside (``<out>/.replaced/<run folder>/<stage>-<n>``,
nothing is deleted) so the stage runs again from the start, or, with ``--no-rerun``, the stage is
refused. A folder from before these records is skipped as before, saying it was not checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_json
from pretrain.weights.card import file_sha256 as weights_file_sha256

from ..layout import REPLACED_FOLDER
from .stages import ROOT, Stage

INPUTS_FILE = "stage_inputs.json"
# arguments that change how a stage runs, not what it computes
_IGNORED_PREFIXES = ("data.num_workers=", "train.progress=", "train.tensorboard=", "feature_cache=")
# (the robustness stage's --workers: data-loader processes; its --batch-size stays: a batch of another size
# may round its logits otherwise, so a top-1 could move)
_IGNORED_FLAGS = ("--num-workers", "--workers")


def file_sha256(path: str | Path) -> str | None:
    """sha256 of a file below the repository root or absolute (``pretrain.weights.card.file_sha256``); None when missing."""
    p = Path(path)
    if not p.is_absolute():
        p = ROOT / p
    if not p.is_file():
        return None
    return weights_file_sha256(p.resolve())


def _arguments(command: list[str]) -> list[str]:
    """The command from its module or script on, without the arguments that do not change its result."""
    start = next((i for i, a in enumerate(command) if a == "-m" or a.endswith(".py")), 0)
    return _without_ignored(command[start:])


def _without_ignored(arguments: list[str]) -> list[str]:
    """``arguments`` without those that do not change a stage's result (a record written before one was
    ignored compares as if it had been)."""
    args, skip = [], False
    for a in arguments:
        if skip:
            skip = False
            continue
        if a in _IGNORED_FLAGS:
            skip = True
            continue
        if not a.startswith(_IGNORED_PREFIXES):
            args.append(a)
    return args


def stage_inputs(stage: Stage) -> dict[str, Any]:
    """The inputs of ``stage`` now: recipe (+ sha256), files read (+ sha256), arguments, environment."""
    recipe = stage.protocol.get("recipe")
    reads = {str(p): file_sha256(p) for p in stage.needs}
    ckpt = stage.protocol.get("checkpoint")
    if isinstance(ckpt, str) and ckpt not in reads and Path(ckpt).is_file():
        reads[ckpt] = file_sha256(ckpt)
    return {
        "recipe": recipe,
        "recipe_sha256": file_sha256(recipe) if isinstance(recipe, str) else None,
        "reads": reads,
        "arguments": _arguments(stage.command),
        "env": dict(sorted(stage.env.items())),
    }


def inputs_path(stage: Stage) -> Path:
    return stage.metrics.parent / INPUTS_FILE


def recorded_inputs(stage: Stage) -> dict[str, Any] | None:
    """The inputs recorded when the stage's output was started (None: no record)."""
    try:
        data = json.loads(inputs_path(stage).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def record_inputs(stage: Stage, inputs: dict[str, Any] | None = None) -> None:
    """Write the stage's inputs into its folder as it starts."""
    atomic_write_json(inputs_path(stage), inputs if inputs is not None else stage_inputs(stage))


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two input records, one readable phrase each."""
    out = []
    if old.get("recipe") != new.get("recipe"):
        out.append(f"recipe {old.get('recipe')} -> {new.get('recipe')}")
    elif old.get("recipe_sha256") != new.get("recipe_sha256"):
        out.append(f"recipe file {new.get('recipe')} was edited (sha256 {str(old.get('recipe_sha256'))[:12]} -> "
                   f"{str(new.get('recipe_sha256'))[:12]})")
    before, now = old.get("reads", {}), new.get("reads", {})
    for path in sorted(set(before) | set(now)):
        if path not in now:
            out.append(f"no longer reads {path}")
        elif path not in before:
            out.append(f"now reads {path}")
        elif before[path] != now[path]:
            out.append(f"{path} holds other bytes (sha256 {str(before[path])[:12]} -> {str(now[path])[:12]})")
    a, b = _without_ignored(old.get("arguments", [])), new.get("arguments", [])
    if a != b:
        gone = [x for x in a if x not in b]
        added = [x for x in b if x not in a]
        if gone or added:
            out.append("arguments " + "; ".join([*(f"-{_short(x)}" for x in gone), *(f"+{_short(x)}" for x in added)]))
        else:
            out.append("arguments reordered")
    if old.get("env", {}) != new.get("env", {}):
        out.append(f"environment {_short(old.get('env'))} -> {_short(new.get('env'))}")
    return out


def input_changes(stage: Stage) -> tuple[list[str], dict[str, Any] | None]:
    """(what changed since the stage's output was started, its inputs now); ([], None) without a record."""
    old = recorded_inputs(stage)
    if old is None:
        return [], None
    new = stage_inputs(stage)
    return changes(old, new), new


def set_aside(stage: Stage, out: Path) -> Path:
    """Move the stage's folder to ``<out>/.replaced/<run folder>/<stage>-<n>`` (the first free n).

    Outside every run folder, so the tables never read the old metrics as a second result.
    """
    folder = stage.metrics.parent
    n = 1
    while (out / REPLACED_FOLDER / stage.method / f"{stage.name}-{n}").exists():
        n += 1
    target = out / REPLACED_FOLDER / stage.method / f"{stage.name}-{n}"
    target.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(target)
    return target
