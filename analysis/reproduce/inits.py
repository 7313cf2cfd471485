"""``--init NAME=PATH``: any backbone file beside the suite's own methods, under the profile's recipes.

Each ``--init`` skips pretraining: the file is read (never downloaded), identified
(``pretrain.weights.identify``: sha256, layout, method, architecture, position embedding,
card), matched to a recipe of the profile by its architecture (ViT size and patch size read
off the weights) and loaded once into the profile's classifier as a trial, all before any
stage starts; anything that does not fit is one line naming the file and what was found.
Then it gets every transfer and probe stage the suite's methods get (fine-tuning, linear
probe, k-NN, attentive probe, detection, segmentation, position probe, the §4.3 probe),
under ``--seeds``, in its own run folder ``<out>/<NAME>/`` (``seed<k>/`` below it), whose
``init.json`` holds the provenance the tables show (``analysis.tables.provenance``).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.atomic import atomic_write_json
from pretrain.weights import CheckpointError
from pretrain.weights.identify import CheckpointIdentity, identify_checkpoint

from ..layout import INIT_FILE, METHODS, OUTPUT_ROOT_ENTRIES, SCRATCH
from ..tables.runs import arch_label
from .stages import Profile, Stage, build_stage_table, run_folder

# what an --init NAME (its run folder below the output root) may not be: what the run writes there itself,
# and the names of a run folder's own and the report's subfolders
RESERVED = {*OUTPUT_ROOT_ENTRIES, "logs", "pictures"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class InitError(ValueError):
    """An ``--init`` that cannot run: one line naming the option or the file and what is wrong."""


@dataclass
class Init:
    """One ``--init`` once checked: its file, what it is, which recipes it gets and how it loaded."""

    name: str
    path: Path
    identity: CheckpointIdentity
    size: str  # the recipe set it runs under (tiny / base / large)
    method: str  # whose recipes apply where methods differ (droppos, mae, adpe, or external)
    load: dict[str, Any]
    same_as: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """What ``init.json`` holds (the provenance of the row)."""
        return {"name": self.name, "kind": "file", "source": str(self.path), **self.identity.to_dict(),
                "recipes": {"size": self.size, "method": self.method}, "load_report": self.load,
                "same_weights_as": self.same_as}


def parse_inits(specs: list[str] | None, methods: list[str]) -> list[tuple[str, str]]:
    """(NAME, PATH) of each ``--init``; InitError for a malformed one, a repeated NAME or one taken by a method."""
    out: list[tuple[str, str]] = []
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise InitError(f"--init {spec!r}: expected NAME=PATH (NAME: the row's label; PATH: a weights file)")
        if not _NAME.match(name) or name in RESERVED:
            raise InitError(f"--init {spec!r}: NAME must be a plain folder name (letters, digits, _ . + -), "
                            f"not one of {', '.join(sorted(RESERVED))}")
        if name in (n for n, _ in out):
            raise InitError(f"--init {name}= is given twice: each initialisation needs its own NAME")
        if name in methods:
            raise InitError(f"--init {name}= collides with the method {name!r} of this run (--methods "
                            f"{','.join(methods) or 'none'}): pick another NAME, or leave the method out")
        out.append((name, path))
    return out


def _recipe_method(identity: CheckpointIdentity) -> str:
    """Whose recipes the weights get: AdPE's for contextual relative tables, else the method the file shows."""
    if "contextual (iRPE, AdPE)" in (identity.position_embedding.get("relative_position") or []):
        return "adpe"
    return identity.method if identity.method in METHODS else "external"


def _one_line(text: str, most: int = 400) -> str:
    line = "; ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= most else line[: most - 3] + "..."


def trial_load(identity: CheckpointIdentity, size: str, img_size: int) -> dict[str, Any]:
    """Load the encoder into the recipe's classifier once, by the classification stages' rules: the report.

    ``identity``: read with ``keep_encoder=True`` (its encoder tensors are loaded).
    """
    from classification.load import classifier_rules
    from classification.model import build_classifier, needs_rel_pos
    from pretrain.weights.loading import load_encoder_into

    encoder = identity.encoder
    model = build_classifier(size, num_classes=2, img_size=img_size, patch_size=identity.patch_size,
                             global_pool="token", rel_pos=needs_rel_pos(encoder))
    report = load_encoder_into(model, encoder, classifier_rules(model), identity.file)
    return {"loaded": len(report.loaded), "left_at_initialisation": report.new, "skipped": report.skipped,
            "resized": report.resized, "unused": report.unused, "into": f"vit_{size}_patch{identity.patch_size}_{img_size}"}


def inspect_init(name: str, path: str, size: str, patch: int, img_size: int, profile: str) -> Init:
    """Read, identify, match to the profile's recipes (ViT ``size`` at ``patch`` px patches) and trial-load one
    ``--init``; InitError in one line when it does not fit."""
    try:
        identity = identify_checkpoint(path, keep_encoder=True)
    except CheckpointError as exc:
        raise InitError(f"--init {name}={path}: {_one_line(exc)}") from None
    found = arch_label(identity.size, identity.patch_size, identity.img_size)
    if (identity.size, identity.patch_size) != (size, patch):
        width = f" (width {identity.embed_dim}, depth {identity.depth})" if identity.size is None else ""
        raise InitError(f"--init {name}={path}: the weights are {found}{width}; the {profile} profile has recipes "
                        f"for {arch_label(size, patch)} only (patch and image size read off the weights)")
    if img_size % identity.patch_size:
        raise InitError(f"--init {name}={path}: the recipe's {img_size} px images are no multiple of the weights' "
                        f"{identity.patch_size} px patches")
    try:
        load = trial_load(identity, size, img_size)
    except (CheckpointError, NotImplementedError) as exc:
        raise InitError(f"--init {name}={path}: does not load into the {profile} recipe's "
                        f"{arch_label(size, identity.patch_size, img_size)}: {_one_line(exc)}") from None
    finally:
        identity.encoder = None  # the tensors are not kept while the stages run
    return Init(name, Path(identity.file).resolve(), identity, size, _recipe_method(identity), load)


def plan_inits(specs: list[str] | None, methods: list[str], size: str, patch: int, img_size: int,
               profile: str) -> list[Init]:
    """Every ``--init`` checked (before any stage starts) against the profile's ``size`` / ``patch`` recipes;
    files with the same sha256 named as the same weights."""
    inits = [inspect_init(n, p, size, patch, img_size, profile) for n, p in parse_inits(specs, methods)]
    for init in inits:
        init.same_as = [o.name for o in inits if o is not init and o.identity.sha256 == init.identity.sha256]
    return inits


def describe(init: Init) -> str:
    """One line per init for the log: name, file, what it is, how it loaded."""
    i = init.identity
    same = f"; the same weights as {', '.join(init.same_as)}" if init.same_as else ""
    left = ", ".join(init.load["left_at_initialisation"]) or "nothing"
    return (f"[reproduce] --init {init.name}: {i.file} (sha256 {i.sha256[:12]}, {i.format}, "
            f"{arch_label(i.size, i.patch_size, i.img_size)}, {i.position_embedding['position_embedding']} position "
            f"embedding, method {i.method or 'unknown'}); loads {init.load['loaded']} tensors, left at "
            f"initialisation: {left}{same}")


def init_stages(profile: Profile, out: Path, inits: list[Init], seeds: int) -> list[Stage]:
    """Every transfer and probe stage of each init (no pretraining), seeds 0 .. seeds-1, under ``profile``."""
    return build_stage_table(profile, out, [], seeds, files=[(i.name, i.path, i.method) for i in inits])


def write_init_records(out: Path, inits: list[Init], seeds: int) -> None:
    """``init.json`` (the provenance) in every run folder of each init."""
    for init in inits:
        for k in range(seeds):
            atomic_write_json(out / run_folder(init.name, None, k) / INIT_FILE, init.record())


def run_methods(args: argparse.Namespace) -> list[str]:
    """The suite's methods (and scratch) a run names: ``--methods`` (``none``: none), else the profile's default."""
    from .profiles import PROFILES

    if PROFILES[args.profile].get("evaluation_only"):
        default: tuple[str, ...] = ()
    else:
        default = (*METHODS, SCRATCH) if args.profile == "demo" else METHODS
    return [m for m in (args.methods or ",".join(default)).split(",") if m and m != "none"]


def plan_from_args(args: argparse.Namespace, methods: list[str]) -> list[Init]:
    """The ``--init`` options of a run, checked against its profile's recipes; InitError in one line."""
    from .profiles import IMAGE_SIZES, PROFILES

    spec = PROFILES[args.profile]
    if spec.get("evaluation_only"):
        pretrained = [m for m in methods if m != SCRATCH]
        if pretrained:
            raise InitError(f"the {args.profile} profile runs no pretraining: --methods may name scratch only "
                            f"(got {','.join(pretrained)}); evaluate weights with --init NAME=PATH")
        if not args.init:
            raise InitError(f"the {args.profile} profile evaluates given weights: add --init NAME=PATH (repeatable)")
    if not methods and not args.init:
        raise InitError("nothing to run: --methods none and no --init NAME=PATH")
    size = spec["size"]
    return plan_inits(args.init, methods, size, spec["patch"], IMAGE_SIZES[size]["linear_probe"], args.profile)
