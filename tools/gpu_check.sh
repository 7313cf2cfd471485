#!/usr/bin/env bash
# The GPU check (docs/gpu_check.md): install the carried wheels, then run python -m tools.gpu_check.
#
#   tools/gpu_check.sh                 # on a CUDA machine: every part, within about 6 minutes
#   tools/gpu_check.sh --dry-run       # the same parts at tiny sizes on the CPU
#   tools/gpu_check.sh --parts 'bench-*' --budget 200    # any python -m tools.gpu_check arguments
#
# The GPU machine has torch but not the suite's other dependencies and no package index:
# tools/prepare_gpu_wheels.py gathers them here into gpu_wheels/, which travels with the
# working tree (the device tool's `carry`). They are installed into a private folder
# ($GPU_CHECK_SITE, default $TMPDIR/droppos_gpu_site) that goes first on PYTHONPATH; nothing
# is installed into the machine's own Python. Without gpu_wheels/ (here, with the project's
# .venv) the Python that runs already has everything.
# Python: $PYTHON, else the repository's .venv, else python3. Exit code: tools.gpu_check's.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WHEELS="${GPU_WHEELS:-$REPO/gpu_wheels}"
SITE="${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/droppos_gpu_site}"
NEEDS="omegaconf, fvcore, iopath, yacs, termcolor, pycocotools, detectron2"  # what the wheels bring

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if (( ${#wheels[@]} )) && ! "$PYTHON" -c "import $NEEDS" 2>/dev/null; then
  stamp="$(cat "${wheels[@]}" | sha256sum | cut -c1-16)"
  if [[ "$(cat "$SITE/.stamp" 2>/dev/null || true)" != "$stamp" ]]; then
    echo "[gpu_check.sh] installing ${#wheels[@]} wheels from $WHEELS into $SITE"
    rm -rf "$SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
      --target "$SITE" "${wheels[@]}"
    echo "$stamp" >"$SITE/.stamp"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export GPU_CHECK_COMMAND="tools/gpu_check.sh${*:+ $*}" PYTHONUNBUFFERED=1  # progress shows as it happens
exec "$PYTHON" -m tools.gpu_check "$@"
