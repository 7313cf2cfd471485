"""The check's training parts: built-in data, pretraining with a stop and resume, fine-tuning.

    python -m tools.gpu_check.train_parts data --root DIR --json OUT.json [size=value ...]
    python -m tools.gpu_check.train_parts pretrain --recipe R.yaml --out DIR --steps 50 --resume-at 25 \
        --json OUT.json key=value ...
    python -m tools.gpu_check.train_parts finetune --recipe R.yaml --out DIR --json OUT.json key=value ...

Each runs the suite's own entry functions (``pretrain.main.run``, ``classification.finetune.run``)
on the device they pick (CUDA where there is one), checks what a short run can show (the
loss is finite and falls, a checkpoint is written and the run resumes from it, the step
counts add up), writes the figures and checks as JSON and exits 1 if a check failed.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pretrain.atomic import atomic_write_json


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every 'train' record in the run's log.jsonl."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(int(r["step"]), float(r["loss"])) for r in records if r.get("phase") == "train" and "loss" in r]


def loss_checks(losses: list[tuple[int, float]]) -> dict[str, Any]:
    """Finite everywhere, and the mean of the last quarter of the log points below that of the first."""
    values = [v for _, v in losses]
    k = max(1, len(values) // 4)
    first = sum(values[:k]) / k if values else float("nan")
    last = sum(values[-k:]) / k if values else float("nan")
    return {"losses": [[s, v] for s, v in losses], "first_loss": first, "last_loss": last,
            "finite": bool(values) and all(math.isfinite(v) for v in values),
            "falling": len(values) >= 2 and last < first}


def peak_memory_mib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None


def fresh_dir(path: Path) -> Path:
    """An empty run folder: a run left by an earlier check would be resumed instead of trained."""
    shutil.rmtree(path, ignore_errors=True)
    return path


def make_data(root: Path, sizes: list[str]) -> dict[str, Any]:
    """The built-in ImageFolder and COCO data under ``root`` (idempotent)."""
    from pretrain.data.synthetic import make_builtin_dataset

    kwargs = {}
    for item in sizes:
        key, _, value = item.partition("=")
        kwargs[key] = ast.literal_eval(value)
    t0 = time.perf_counter()
    paths = make_builtin_dataset(root, formats=("imagefolder", "coco"), **kwargs)
    checks = {"imagefolder_written": (paths["imagefolder"] / "train").is_dir(),
              "coco_written": (paths["coco"] / "annotations" / "instances_train2017.json").is_file()}
    return {"root": str(root), "sizes": kwargs, "seconds": time.perf_counter() - t0, "checks": checks}


def pretrain(recipe: str, out: Path, steps: int, resume_at: int, overrides: list[str]) -> dict[str, Any]:
    """Train ``resume_at`` steps (checkpoint there), then resume the same folder up to ``steps``."""
    from pretrain.engine.config import load_config
    from pretrain.main import run

    fresh_dir(out)
    common = [*overrides, f"train.output_dir={out}", "train.resume=auto", f"train.save_every_steps={resume_at}"]
    t0 = time.perf_counter()
    first = run(load_config(recipe, [*common, f"train.max_steps={resume_at}"]))
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*.pth"))
    second = run(load_config(recipe, [*common, f"train.max_steps={steps}"]))
    seconds = time.perf_counter() - t0
    resumed = Path(second.get("resumed_from") or "").name
    losses = loss_checks(train_losses(out))
    history = second.get("history") or [{}]
    result = {
        "recipe": recipe, "device": second.get("device"), "arch": second.get("arch"), "steps": second.get("steps"),
        "steps_first_run": first.get("steps"), "checkpoints_first_run": checkpoints, "resumed_from": resumed,
        "images_per_s_last_epoch": history[-1].get("images_per_s"), "peak_memory_mib": peak_memory_mib(),
        "seconds": seconds, "backbone": second.get("backbone"), **losses,
    }
    result["checks"] = {
        "loss_finite": losses["finite"],
        "loss_falling": losses["falling"],
        "checkpoint_written": f"checkpoint-{resume_at:08d}.pth" in checkpoints,
        "resumed_from_it": resumed == f"checkpoint-{resume_at:08d}.pth",
        "steps_add_up": first.get("steps") == resume_at and second.get("steps") == steps,
        "backbone_written": bool(second.get("backbone")) and Path(second["backbone"]).is_file(),
    }
    return result


def finetune(recipe: str, out: Path, overrides: list[str]) -> dict[str, Any]:
    """A few fine-tuning steps from a pretrained backbone, then the evaluation."""
    from classification.finetune import load_finetune_config, run

    fresh_dir(out)
    cfg = load_finetune_config(recipe, [*overrides, f"train.output_dir={out}", "train.resume=none"])
    t0 = time.perf_counter()
    metrics = run(cfg)
    losses = loss_checks(train_losses(out))
    result = {"recipe": recipe, "device": metrics.get("device"), "arch": metrics.get("arch"),
              "checkpoint": metrics.get("checkpoint"), "steps": metrics.get("steps"), "top1": metrics.get("top1"),
              "peak_memory_mib": peak_memory_mib(), "seconds": time.perf_counter() - t0,
              **{k: losses[k] for k in ("losses", "first_loss", "last_loss", "finite")}}
    result["checks"] = {
        "loss_finite": losses["finite"],
        "steps_done": metrics.get("steps") == int(cfg.train.max_steps),
        "evaluated": isinstance(metrics.get("top1"), float) and math.isfinite(metrics["top1"]),
        "loaded_pretrained": metrics.get("pretrain_method") is not None,
    }
    return result


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("GPU check: training parts")
    p.add_argument("part", choices=("data", "pretrain", "finetune"))
    p.add_argument("--json", required=True, type=Path)
    p.add_argument("--root", type=Path, help="data: where to write the built-in data")
    p.add_argument("--recipe")
    p.add_argument("--out", type=Path, help="run folder (emptied first)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--resume-at", type=int, default=25)
    p.add_argument("opts", nargs="*", help="config overrides key=value (data: builtin sizes)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_intermixed_args(argv)  # the part first, overrides last
    if args.part == "data":
        result = make_data(args.root, args.opts)
    elif args.part == "pretrain":
        result = pretrain(args.recipe, args.out, args.steps, args.resume_at, args.opts)
    else:
        result = finetune(args.recipe, args.out, args.opts)
    result["ok"] = all(result["checks"].values())
    atomic_write_json(args.json, result)
    failed = [k for k, v in result["checks"].items() if not v]
    print(f"[gpu_check] {args.part}: " + ("all checks passed" if not failed else f"checks failed: {', '.join(failed)}"))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
