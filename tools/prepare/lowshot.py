"""Low-shot ImageNet subsets (1 % / 10 %) as file lists, so the subset a result used can be named.

    python -m tools.prepare_data imagenet-lowshot --from /data/imagenet --to /data/imagenet --percent 1 10
    python -m tools.prepare_data imagenet-lowshot --from /data/imagenet --to /data/imagenet \\
        --subset-file 1percent.txt 10percent.txt        # the published SimCLR lists

Writes ``TO/lowshot/<name>.txt``: one image per line, ``<wnid>/<file>`` relative to
``FROM/train`` (sorted), and ``TO/lowshot/lowshot.json`` saying where each list came from
and what it holds. A published list (``--subset-file``; SimCLR's lines are
``n01440764_10026.JPEG``, the class being the name's prefix, and ``<wnid>/<file>`` lines
are read too) is checked against the train folder and written in that form under its own
name. Without one, ``--percent P`` draws ``max(1, round(P / 100 * n))`` images of each
class of n images, without replacement, from a generator seeded by (``--seed``, P, wnid):
the same seed and train folder always give the same list.
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Callable, Sequence

from pretrain.atomic import atomic_write_text

from .errors import PrepareError
from .staging import read_json, write_json


def train_files(train: Path) -> dict[str, list[str]]:
    """{class: its image files} of a train folder, as the loaders scan it (``pretrain.data.imagefolder``:
    sorted class folders, image extensions only, sorted walk order; for ImageNet's flat class folders the
    sorted file names); a folder the loaders refuse (no classes, a class without images) is a PrepareError."""
    if not train.is_dir():
        raise PrepareError(f"{train}: no train folder (prepare ImageNet first: tools.prepare_data imagenet)")
    from pretrain.data.imagefolder import find_classes, scan_class_folders, split_problems

    try:
        classes = find_classes(train)
    except FileNotFoundError as exc:
        raise PrepareError(str(exc)) from None
    samples, empty, _ = scan_class_folders(train, classes)
    problems = split_problems(train, samples, empty)
    if problems:
        raise PrepareError(f"{problems[0]} (no low-shot lists from a train folder the loaders refuse)")
    out: dict[str, list[str]] = {c: [] for c in classes}
    for path, index in samples:
        out[classes[index]].append(Path(os.path.relpath(path, train / classes[index])).as_posix())
    return out


def draw(files: dict[str, list[str]], percent: float, seed: int) -> list[str]:
    """A seeded per-class draw of ``percent`` % of each class (at least one image), as ``<wnid>/<file>``."""
    if not 0 < percent <= 100:
        raise PrepareError(f"--percent {percent}: must be in (0, 100]")
    out = []
    for wnid, names in files.items():
        k = max(1, round(percent / 100 * len(names)))
        rng = random.Random(f"{seed}:{percent:g}:{wnid}")
        out += [f"{wnid}/{n}" for n in sorted(rng.sample(names, min(k, len(names))))]
    return out


def read_subset_file(path: Path, files: dict[str, list[str]]) -> list[str]:
    """A published list as ``<wnid>/<file>`` lines; every image must be in the train folder."""
    if not path.is_file():
        raise PrepareError(f"--subset-file {path}: no such file")
    present = {c: set(n) for c, n in files.items()}
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if "/" in name:
            wnid, _, base = name.rpartition("/")
            wnid = wnid.rsplit("/", 1)[-1]
        else:
            wnid, base = name.split("_", 1)[0], name
        if base not in present.get(wnid, ()):
            raise PrepareError(f"{path} line {lineno}: {name} is not in the train folder ({wnid}/{base} missing)")
        out.append(f"{wnid}/{base}")
    if not out:
        raise PrepareError(f"{path}: empty subset file")
    if len(set(out)) != len(out):
        raise PrepareError(f"{path}: lists an image twice")
    return sorted(out)


def write_lowshot(
    imagenet: Path,
    to: Path,
    percents: Sequence[float] = (),
    seed: int = 0,
    subset_files: Sequence[str | Path] = (),
    log: Callable[[str], object] = print,
) -> dict[str, dict]:
    """Write the subset lists under ``to/lowshot/``; returns {list name: record}."""
    train = imagenet / "train" if (imagenet / "train").is_dir() else imagenet
    files = train_files(train)
    folder = to / "lowshot"
    folder.mkdir(parents=True, exist_ok=True)
    index = read_json(folder / "lowshot.json")
    made: dict[str, dict] = {}
    for sub in subset_files:
        sub = Path(sub)
        lines = read_subset_file(sub, files)
        made[sub.stem] = {"source": str(sub.resolve()), "md5": hashlib.md5(sub.read_bytes()).hexdigest(),
                          "kind": "published list"}
        _write(folder / f"{sub.stem}.txt", lines, made[sub.stem])
    for p in percents:
        name = f"{p:g}percent"
        lines = draw(files, float(p), seed)
        made[name] = {"source": "seeded per-class draw", "percent": float(p), "seed": seed}
        _write(folder / f"{name}.txt", lines, made[name])
    for name, rec in made.items():
        rec["train"] = str(train.resolve())
        log(f"lowshot  wrote {folder / (name + '.txt')}  ({rec['images']} images, {rec['classes']} classes; "
            f"{rec['source']})")
    index.update(made)
    write_json(folder / "lowshot.json", index)
    return made


def _write(path: Path, lines: list[str], record: dict) -> None:
    record["images"] = len(lines)
    record["classes"] = len({line.split("/", 1)[0] for line in lines})
    atomic_write_text(path, "\n".join(lines) + "\n")
