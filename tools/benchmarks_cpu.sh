#!/usr/bin/env bash
# The CPU figures of the README's Performance section, one JSON per row, then the table.
#   ./run.sh python -m tools.benchmark_table ...   (run by this script at the end)
# Usage: tools/benchmarks_cpu.sh [OUT_DIR]   (default outputs/bench/cpu). Run it on an idle
# machine: every row also records the load average before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/bench/cpu}
ONLY=${ONLY:-}   # e.g. ONLY="adpe_s16 finetune_s16": run just these rows
ROWS="droppos_s16 droppos_s16_foreach droppos_s16_compile mae_s16 adpe_s16 finetune_s16 droppos_tiny_recipe droppos_tiny_recipe_compile data_pipelines"
for row in $ONLY; do
    if [[ " $ROWS " != *" $row "* ]]; then echo "ONLY: unknown row '$row' (rows: $ROWS)" >&2; exit 2; fi
done
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
S16=(--size small --img-size 224 --patch-size 16 --batch 16 --steps 20 --warmup 3)
bench() {
    local name=$1; shift
    if [[ -n "$ONLY" && " $ONLY " != *" $name "* ]]; then return 0; fi
    "$PY" -m tools.benchmark "$@" --json "$OUT/$name.json" | tee "$OUT/$name.txt"
}
bench droppos_s16 --method droppos "${S16[@]}" --profile 2
bench droppos_s16_foreach --method droppos "${S16[@]}" --fused-adamw off
bench droppos_s16_compile --method droppos "${S16[@]}" --compile
bench mae_s16 --method mae "${S16[@]}"
# AdPE as the paper's best variant (relative positions, coordinate adversary) at its paper crop:
# 4 crops of 112 px per image (the same tokens per image as one 224 px view)
bench adpe_s16 --method adpe "${S16[@]}" --img-size 112 adpe.pos=rel adpe.adversary=coord
bench finetune_s16 --method finetune "${S16[@]}"
bench droppos_tiny_recipe --method droppos --config droppos_vit_tiny_builtin.yaml --steps 30 --warmup 5
bench droppos_tiny_recipe_compile --method droppos --config droppos_vit_tiny_builtin.yaml --steps 30 --warmup 5 --compile
[[ -z "$ONLY" || " $ONLY " == *" data_pipelines "* ]] || SKIP_DATA=1
# input pipelines on 500 ImageNet-sized JPEGs written from the built-in data: per core (in
# process, one thread) and through one DataLoader worker
if [[ -z "${SKIP_DATA:-}" ]]; then
    for w in 0 1; do
        "$PY" -m tools.benchmark_data --data data/builtin/imagenet --make-large 500 --workers $w --seconds 24 --rounds 4 \
            --json "$OUT/data_pipelines_w$w.json" | tee "$OUT/data_pipelines_w$w.txt"
    done
fi
"$PY" -m tools.benchmark_table "$OUT"/*.json | tee "$OUT/table.md"
