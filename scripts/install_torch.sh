#!/usr/bin/env bash
# Installs torch into the Python environment given as $1 (its python), when
# that environment has none: the release TORCH_VERSION (default 2.13.0) from
#   1. TORCH_INDEX_URL, when set (e.g. https://download.pytorch.org/whl/cu130);
#   2. a wheel in pip's find-links (a local copy), its dependencies from the index;
#   3. PyPI's default build, a CUDA build of several GB, where nvidia-smi answers;
#   4. the CPU build (https://download.pytorch.org/whl/cpu, about 200 MB) elsewhere.
# Used by scripts/run.sh and scripts/check_newest.sh. With --newest: PyPI's
# newest release instead (a CUDA build).
set -euo pipefail
PY="$1"
newest="${2:-}"
say() { echo "iwae_fused: $*" >&2; }
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

if [ "$newest" = --newest ]; then
  say "installing the newest torch from PyPI (a CUDA build, several GB)"
  pip_install --upgrade torch
  exit 0
fi
"$PY" -c "import torch" 2>/dev/null && exit 0
tv="${TORCH_VERSION:-2.13.0}"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  say "installing torch==$tv from $TORCH_INDEX_URL"
  pip_install "torch==$tv" --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple
elif pip_install --no-index --no-deps "torch==$tv" 2>/dev/null; then
  pip_install "torch==$tv"
  say "installed torch==$tv from a local wheel"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  say "installing torch==$tv, CUDA build (several GB; an NVIDIA driver answered)"
  pip_install "torch==$tv"
else
  say "installing torch==$tv, CPU build (no NVIDIA driver found)"
  pip_install "torch==$tv" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple
fi
