#!/usr/bin/env bash
# droppos: one entry point that sets itself up.
#   ./run.sh demo [args]    the whole pipeline on the built-in data (CPU, minutes)
#   ./run.sh test [args]    the test suite (pytest args pass through)
#   ./run.sh setup          only create/refresh the virtual environment at .venv
#   ./run.sh python ...     run a command inside the environment
# The environment is created on first use and reused; it is refreshed when
# pyproject.toml or an install script changes. Slow builds (MMCV) are cached
# under ${XDG_CACHE_HOME:-$HOME/.cache}/droppos so a warm machine reinstalls in seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp_value() {
  cat "$ROOT/pyproject.toml" "$ROOT/run.sh" "$ROOT"/tools/install_*.sh 2>/dev/null | sha256sum | cut -d' ' -f1
}

setup() {
  if [ ! -x "$PY" ]; then
    echo "[setup] creating virtual environment at $VENV"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.droppos-stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(stamp_value)" ]; then
    return 0
  fi
  echo "[setup] installing dependencies (first run takes a while; later runs reuse .venv)"
  "$PY" -m pip install -q --upgrade pip "setuptools<70" wheel ninja
  "$PY" -m pip install -q "torch==2.9.1" "torchvision==0.24.1"
  "$PY" -m pip install -q --no-build-isolation -e "$ROOT[detection,segmentation,dev]"
  PY="$PY" bash "$ROOT/tools/install_mmcv.sh"
  PY="$PY" bash "$ROOT/tools/install_detectron2.sh"
  "$PY" -c "import torch, timm, detectron2, mmseg, mmcv.ops; print('[setup] ok: torch', torch.__version__, 'timm', timm.__version__)"
  stamp_value > "$stamp"
}

cmd="${1:-demo}"
[ $# -gt 0 ] && shift
cd "$ROOT"
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$PY" -m analysis.reproduce "$@" ;;
  test) setup; exec "$PY" -m pytest -q "$@" ;;
  python) setup; exec "$PY" "$@" ;;
  *) echo "usage: ./run.sh {demo|test|setup|python} [args]" >&2; exit 2 ;;
esac
