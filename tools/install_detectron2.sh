#!/usr/bin/env bash
# Install Detectron2 into the project's Python environment (idempotent).
#
# Detectron2 publishes no wheels. Routes, in order:
#   1. `import detectron2` already works -> nothing to do.
#   2. The official source repository is reachable -> the official source install
#      (builds the C++ ops; needs a compiler and a few minutes).
#   3. Otherwise (no network beyond the package index, as in CI): the index's v0.6
#      Python sources `pb1-detectron2==0.6` (an sdist whose Python files equal
#      Detectron2 v0.6 but without the C++ sources, so pip cannot build it). We fetch the
#      sdist once into a cache, verify its sha256, and copy the `detectron2` package into
#      site-packages WITHOUT building. The missing compiled ops are covered at run time by
#      detection/compat.py (ROIAlign/NMS come from torchvision).
# Then the pure-Python dependencies that the import paths we use need are installed.
#
# Usage: tools/install_detectron2.sh            (uses $PY, else the repository's .venv python,
#                                              else /work/main/.venv/bin/python)
#        D2_ROUTE=registry tools/install_detectron2.sh   (force route 3; D2_ROUTE=official forces 2)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PY:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY=/work/main/.venv/bin/python; fi
fi
CACHE="${DROPPOS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/droppos}"
D2_ROUTE="${D2_ROUTE:-auto}"
OFFICIAL_REPO="https://github.com/facebookresearch/detectron2.git"
SDIST_NAME="pb1-detectron2"
SDIST_VERSION="0.6"
SDIST_FILE="${SDIST_NAME}-${SDIST_VERSION}.tar.gz"
SDIST_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

# Pure-Python runtime dependencies of the Detectron2 modules the suite imports.
# fvcore/iopath pinned as Detectron2 v0.6 pins them; hydra-core and black are NOT needed
# (the suite parses key=value overrides itself and never calls LazyConfig.to_py).
D2_DEPS=(
  "fvcore==0.1.5.post20221221"
  "iopath>=0.1.7,<0.1.10"
  "pycocotools>=2.0.2"
  "omegaconf>=2.1"
  "cloudpickle"
  "tabulate"
  "termcolor>=1.1"
  "yacs>=0.1.8"
  "shapely"
)

log() { echo "[install_detectron2] $*" >&2; }

deps_ok() {
  "$PY" - <<'EOF' >/dev/null 2>&1
import fvcore, iopath, pycocotools, omegaconf, cloudpickle, tabulate, termcolor, yacs, shapely
EOF
}

install_deps() {
  if deps_ok; then
    log "python dependencies already present"
  else
    log "installing python dependencies: ${D2_DEPS[*]}"
    "$PY" -m pip install -q "${D2_DEPS[@]}"
  fi
}

official_reachable() {
  command -v git >/dev/null 2>&1 || return 1
  timeout 10 git ls-remote --exit-code "$OFFICIAL_REPO" HEAD >/dev/null 2>&1
}

install_official() {
  # --no-deps: the same dependency set as route 3 (Detectron2's own list would add hydra-core,
  # which caps omegaconf below 2.4, and black 21.4b2; neither is needed here).
  log "official source install from $OFFICIAL_REPO (builds C++ ops)"
  "$PY" -m pip install --no-build-isolation --no-deps "git+${OFFICIAL_REPO}"
}

# Fetch the sdist into $CACHE. pip is tried first; recent pip refuses to finish a
# download of this sdist (its metadata declares a direct-URL extra), so the fallback reads
# the file's address from the configured index's JSON page (PEP 691) and checks sha256.
fetch_sdist() {
  local dest="$CACHE/$SDIST_FILE"
  if [[ -f "$dest" ]] && echo "$SDIST_SHA256  $dest" | sha256sum -c --status; then
    return 0
  fi
  mkdir -p "$CACHE"
  log "fetching $SDIST_NAME==$SDIST_VERSION sources into $CACHE"
  "$PY" -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
    "${SDIST_NAME}==${SDIST_VERSION}" -d "$CACHE" >/dev/null 2>&1 || true
  if [[ ! -f "$dest" ]]; then
    "$PY" - "$SDIST_NAME" "$SDIST_FILE" "$dest" <<'EOF'
import json, subprocess, sys, urllib.request
name, filename, dest = sys.argv[1:4]
try:
    index = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                           capture_output=True, text=True).stdout.strip()
except Exception:
    index = ""
if not index:
    from pip._internal.models.index import PyPI  # pip's own default index
    index = PyPI.simple_url
req = urllib.request.Request(f"{index.rstrip('/')}/{name}/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
url = next(f["url"] for f in files if f["filename"] == filename)
urllib.request.urlretrieve(url, dest)
EOF
  fi
  if ! echo "$SDIST_SHA256  $dest" | sha256sum -c --status; then
    log "sha256 mismatch for $dest"; rm -f "$dest"; return 1
  fi
}

install_registry_sources() {
  fetch_sdist
  local src="$CACHE/${SDIST_NAME}-${SDIST_VERSION}"
  if [[ ! -d "$src/detectron2" ]]; then
    tar -xzf "$CACHE/$SDIST_FILE" -C "$CACHE"
  fi
  local site
  site="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  log "copying detectron2 v$SDIST_VERSION python package into $site (no build)"
  rm -rf "$site/detectron2" "$site"/detectron2-*.dist-info
  cp -r "$src/detectron2" "$site/detectron2"
  find "$site/detectron2" -name '__pycache__' -prune -exec rm -rf {} +
  # A minimal dist-info so that pip lists (and can uninstall) it.
  local info="$site/detectron2-${SDIST_VERSION}.dist-info"
  mkdir -p "$info"
  printf 'Metadata-Version: 2.1\nName: detectron2\nVersion: %s\nSummary: Detectron2 v%s python sources (from %s, C++ ops not built)\n' \
    "$SDIST_VERSION" "$SDIST_VERSION" "$SDIST_NAME" >"$info/METADATA"
  echo "droppos-tools-install_detectron2" >"$info/INSTALLER"
  (cd "$site" && { find detectron2 -type f; echo "${info##*/}/METADATA"; echo "${info##*/}/INSTALLER"; \
    echo "${info##*/}/RECORD"; } | sed 's/$/,,/' >"$info/RECORD")
}

main() {
  local info
  if info="$("$PY" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))' 2>/dev/null)"; then
    log "detectron2 already importable: $info"
    install_deps
    return 0
  fi
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    log "torch is not importable with $PY: install torch/torchvision first"; exit 1
  fi
  case "$D2_ROUTE" in
    official) install_official ;;
    registry) install_deps; install_registry_sources ;;
    auto)
      if official_reachable; then
        install_official
      else
        log "official source host unreachable: using the index's v0.6 python sources"
        install_deps
        install_registry_sources
      fi ;;
    *) log "unknown D2_ROUTE=$D2_ROUTE"; exit 2 ;;
  esac
  install_deps
  "$PY" -c "import detectron2; print('[install_detectron2] detectron2', detectron2.__version__, 'at', detectron2.__file__)"
}

main "$@"
