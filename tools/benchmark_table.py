"""Collect ``tools.benchmark`` / ``tools.benchmark_data`` JSON results into Markdown tables.

    python -m tools.benchmark_table outputs/bench/cpu/*.json > outputs/bench/cpu/table.md

Training results and data-pipeline results go into separate tables; each row keeps
the command that produced it, so every figure in the README can be re-measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def load_result(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: not a readable benchmark JSON ({exc})") from exc
    if not isinstance(result, dict) or not ({"images_per_s", "results"} & result.keys()):
        raise SystemExit(f"{path}: neither a training benchmark (images_per_s) nor a data benchmark (results)")
    return result


def training_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        share = f"{100 * r['share_of_peak']:.1f} %" if r.get("share_of_peak") else "n/a"
        rows.append([
            f"{r['method']} ViT-{r['size']}/{r['patch_size']} {r['img_size']} px",
            str(r["batch"]),
            f"{r['precision']}, compile {'on' if r['compile'] else 'off'}, AdamW {r['adamw']}",
            f"{r['images_per_s']:.2f}",
            f"{r['step_s_median'] * 1e3:.0f}",
            f"{r['peak_memory_mib']:.0f}",
            f"{r['train_flops_per_image'] / 1e9:.2f}" if "train_flops_per_image" in r else "n/a",
            f"{r['achieved_tflops']:.3f} / {r['peak_tflops']:.3f}" if r.get("peak_tflops") else "n/a",
            share,
            f"`{r['command']}`",
        ])
    return rows


def torchvision_speeds(result: dict[str, Any]) -> dict[str, float]:
    """images/s of each recipe's torchvision pipeline in a data benchmark, by recipe ("pretrain", ...)."""
    return {p["pipeline"].split("/")[0]: p["images_per_s"] for p in result["results"] if "torchvision" in p["pipeline"]}


def pipeline_cells(p: dict[str, Any], speeds: dict[str, float]) -> list[str]:
    """One pipeline's figures: images/s, per worker, speed vs torchvision, output mean, its s.e., std."""
    base = speeds.get(p["pipeline"].split("/")[0])
    return [
        f"{p['images_per_s']:.1f}",
        f"{p['images_per_s_per_worker']:.1f}",
        f"{p['images_per_s'] / base:.2f}x" if base else "",
        " ".join(f"{m:+.3f}" for m in p["mean"]),
        " ".join(f"{e:.3f}" for e in p["mean_se"]) if "mean_se" in p else "n/a",
        " ".join(f"{s:.3f}" for s in p["std"]),
    ]


def data_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in results:
        speeds = torchvision_speeds(r)
        f = r.get("folder", {})
        for p in r["results"]:
            rows.append([
                p["pipeline"],
                f"{f.get('images', '?')} JPEGs, {'x'.join(map(str, f.get('first_size_wh', ['?'])))}",
                str(r.get("workers", "")),
                *pipeline_cells(p, speeds),
                f"`{r['command']}`" if "command" in r else "",
            ])
    return rows


def markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("Benchmark JSON -> Markdown tables")
    p.add_argument("files", nargs="+", type=Path)
    args = p.parse_args(argv)
    results = [load_result(f) for f in args.files]
    train = [r for r in results if "images_per_s" in r]
    data = [r for r in results if "results" in r]
    machine = next((r["machine"] for r in train if "machine" in r), None)
    if machine:
        print(f"Machine: {machine.get('device_name', '?')}, {machine.get('threads', '?')} torch threads, "
              f"torch {machine.get('torch', '?')}\n")
    if train:
        print(markdown(["run", "batch", "precision / compile / optimizer", "images/s", "step ms (median)",
                        "peak memory MiB", "train GFLOPs/img", "achieved / peak TFLOP/s", "share of peak",
                        "command"], training_rows(train)))
    if data:
        print()
        print(markdown(["pipeline", "data", "workers", "images/s", "images/s per worker", "vs torchvision",
                        "output mean (RGB)", "s.e. of mean", "output std (RGB)", "command"], data_rows(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
