#!/usr/bin/env bash
# Build a CUDA wheel for chosen GPU architectures on a machine without a GPU,
# then list the architectures inside it.
#
#   bash scripts/build_wheel.sh                          # sm_80 + sm_90 -> dist/
#   TORCH_CUDA_ARCH_LIST="9.0" bash scripts/build_wheel.sh
#   VENV=/path/to/venv bash scripts/build_wheel.sh       # reuse a venv with CUDA torch
#
# Creates (or reuses) a venv holding the CUDA build of torch 2.13.0 (cu130,
# ~4.7 GB from the package registry), then runs the documented command:
#   FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" pip wheel --no-build-isolation --no-deps -w dist .
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="${VENV:-$ROOT/.venv-cuda}"
ARCHS="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# pip's configuration on these machines points at the local CPU wheel; the
# CUDA build comes from the registry itself.
PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= "$VENV/bin/python" -m pip install -q \
    --disable-pip-version-check "$TORCH_SPEC" ninja pybind11 setuptools wheel
"$VENV/bin/python" - <<'PY'
import torch, sys
if torch.version.cuda is None:
    sys.exit(f"the venv's torch {torch.__version__} is a CPU build; remove the venv or set VENV")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
PY

# Build from a clean copy of the tracked (and untracked, not ignored) files,
# so objects of an earlier CPU build in build/ are never mixed in.
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$SRC"
mkdir -p "$ROOT/dist"
(cd "$SRC" && FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCHS" MAX_JOBS="${MAX_JOBS:-2}" \
    "$VENV/bin/python" -m pip wheel --disable-pip-version-check --no-build-isolation \
    --no-deps -w "$ROOT/dist" .)

WHEEL="$(ls -t "$ROOT"/dist/iwae_fused-*.whl | head -n 1)"
CUOBJDUMP="$("$VENV/bin/python" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))')"
UNPACK="$(mktemp -d)"
trap 'rm -rf "$SRC" "$UNPACK"' EXIT
"$VENV/bin/python" -m zipfile -e "$WHEEL" "$UNPACK"
SO="$(find "$UNPACK" -name '_C*.so' | head -n 1)"
echo "wheel: $WHEEL"
echo "architectures in $(basename "$SO"):"
"$CUOBJDUMP" --list-elf "$SO" | sed -n 's/.*\.\(sm_[0-9a-z]*\)\..*/  SASS \1/p' | sort -u
PTX="$("$CUOBJDUMP" --list-ptx "$SO" 2>/dev/null | sed -n 's/.*\.\(sm_[0-9a-z]*\)\..*/  PTX  \1/p' | sort -u || true)"
echo "${PTX:-  PTX  none (append +PTX to an architecture, e.g. \"9.0+PTX\", for newer GPUs)}"
