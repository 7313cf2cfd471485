#!/usr/bin/env bash
# Install the OpenMMLab stack the ADE20K segmentation transfer needs:
# full mmcv 2.1.0 (with compiled ops; mmseg imports mmcv.ops), mmengine,
# mmsegmentation and its import-time extras.
#
# mmcv 2.1.0 publishes no wheel for torch 2.9, so pip builds it from the
# source distribution (CPU ops, ~15-20 min on 2 cores). The built wheel is
# kept in a cache folder so later installs take seconds. Idempotent.
#
# Usage:  PY=/path/to/venv/bin/python tools/install_mmcv.sh
# Env:    PY               python of the target venv (default /work/main/.venv/bin/python)
#         MMCV_WHEEL_DIR   wheel cache (default ${XDG_CACHE_HOME:-$HOME/.cache}/droppos/wheels)
#         MAX_JOBS         parallel compile jobs (default 2)
set -euo pipefail

PY="${PY:-/work/main/.venv/bin/python}"
WHEEL_DIR="${MMCV_WHEEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/droppos/wheels}"
MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMSEG_VERSION=1.2.2

pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

log() { echo "[install_mmcv] $*"; }

have_mmcv_ops() {
    "$PY" - <<EOF 2>/dev/null
import mmcv, mmcv.ops
assert mmcv.__version__ == "$MMCV_VERSION", mmcv.__version__
EOF
}

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[install_mmcv] torch is not importable with $PY; install torch 2.9.x first" >&2
    exit 1
fi

if have_mmcv_ops; then
    log "mmcv $MMCV_VERSION with ops already installed"
else
    mkdir -p "$WHEEL_DIR"
    wheel=$(ls -1 "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)
    if [[ -z "$wheel" ]]; then
        log "no cached wheel in $WHEEL_DIR: building mmcv $MMCV_VERSION from source (CPU ops)"
        # mmcv's setup.py imports pkg_resources (gone in setuptools>=70) and
        # torch.utils.cpp_extension (hence --no-build-isolation).
        pip_install "setuptools<70" ninja wheel
        start=$(date +%s)
        # CPU-only build: never try nvcc, even if a CUDA toolkit is around.
        env -u FORCE_CUDA -u TORCH_CUDA_ARCH_LIST FORCE_CUDA=0 MMCV_WITH_OPS=1 \
            MAX_JOBS="${MAX_JOBS:-2}" \
            "$PY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps \
            "mmcv==$MMCV_VERSION" -w "$WHEEL_DIR"
        log "mmcv build took $(( $(date +%s) - start )) s"
        wheel=$(ls -1 "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)
    fi
    log "installing $wheel"
    # --no-deps: mmcv's own requirements are listed explicitly below.
    pip_install --no-deps --force-reinstall "$wheel"
fi

# mmcv runtime deps, mmengine, mmseg and what mmseg needs at import time.
pip_install addict "yapf<=0.40.1" opencv-python \
    "mmengine==$MMENGINE_VERSION" "mmsegmentation==$MMSEG_VERSION" \
    ftfy regex prettytable scipy matplotlib

"$PY" -c "import mmcv.ops, mmseg.models, mmengine; print('mmcv', mmcv.__version__, 'mmengine', mmengine.__version__)"
log "done"
