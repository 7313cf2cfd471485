"""The end-to-end run: pretraining on the built-in data and a report.

    ./run.sh demo                 (= python -m analysis.reproduce --profile demo)

Each stage writes a metrics JSON; a stage whose metrics already exist is
skipped, so the command can be re-run after an interruption.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pretrain.engine.config import load_config
from pretrain.main import run as run_pretrain

DEMO_RECIPES = {"droppos": "droppos_vit_tiny_builtin.yaml"}


def stage_pretrain(method: str, recipe: str, out_root: Path, data_root: Path) -> dict:
    out = out_root / f"pretrain_{method}"
    metrics_file = out / "pretrain_metrics.json"
    if metrics_file.is_file():
        print(f"[reproduce] pretrain {method}: done before, skipping ({metrics_file})")
        return json.loads(metrics_file.read_text())
    cfg = load_config(recipe, [f"train.output_dir={out}", f"data.path={data_root / 'imagenet'}", "data.builtin=true"])
    return run_pretrain(cfg)


def write_report(out_root: Path, results: dict[str, dict], wall: float) -> Path:
    lines = ["# droppos demo report", "", "| method | epochs | final loss | position acc (dropped tokens) | chance | CPU min |", "|---|---|---|---|---|---|"]
    for method, m in results.items():
        final = m.get("final", {})
        n = 64
        lines.append(
            f"| {method} | {m.get('epochs')} | {final.get('loss', float('nan')):.4f} | "
            f"{final.get('pos_acc', float('nan')):.4f} | {1 / n:.4f} | {m.get('cost', {}).get('cpu_minutes', 0):.1f} |"
        )
    lines += ["", f"Wall time of this invocation: {wall / 60:.1f} min."]
    path = out_root / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser("droppos end-to-end run")
    p.add_argument("--profile", default="demo", choices=["demo"])
    p.add_argument("--output", default="outputs/demo")
    p.add_argument("--data", default="data/builtin")
    args = p.parse_args(argv)
    t0 = time.time()
    out_root, data_root = Path(args.output), Path(args.data)
    results = {m: stage_pretrain(m, r, out_root, data_root) for m, r in DEMO_RECIPES.items()}
    report = write_report(out_root, results, time.time() - t0)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
