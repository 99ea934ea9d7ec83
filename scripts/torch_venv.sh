#!/usr/bin/env bash
# Print the path of a cached virtual environment holding one torch release
# (plus the build and test requirements), creating it on first use.
#
#   bash scripts/torch_venv.sh 2.15.0          # -> .venvs/torch-2.15.0
#   bash scripts/torch_venv.sh 2.13.0+cpu      # a CPU-only build, where pip can find one
#
# Shared by scripts/check_torch_versions.sh and scripts/build_wheels.sh, so a
# torch release is downloaded and unpacked once (a CUDA build is ~5 GB).
#
# torch comes from the package registry, never from this machine's pip
# configuration (its constraints cap torch, its find-links hold a CPU wheel
# that would shadow the registry's build of the same version). There the
# Linux x86_64 wheel of a release is a CUDA build (the one a user gets from
# `pip install torch`); it runs on a CPU too.
#
# Environment:
#   VENVS_DIR         where the venvs live (default: .venvs in the checkout, git-ignored)
#   TORCH_FIND_LINKS  extra folders or pages with torch wheels, searched beside the
#                     registry (space-separated), e.g. a local mirror
#   PYTHON            the interpreter the venvs are made from (default: python3)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 TORCH_VERSION" >&2; exit 2; }
SPEC="$1"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENVS_DIR="${VENVS_DIR:-$ROOT/.venvs}"
VENV="$VENVS_DIR/torch-$SPEC"
# What the build (setup.py) and the test suite import; versions left to pip.
REQS=(setuptools wheel ninja pybind11 numpy pytest hypothesis pytest-benchmark tqdm
      matplotlib scikit-learn pyro-ppl mpmath packaging)

if [ -f "$VENV/.complete" ]; then
  echo "$VENV"
  exit 0
fi
# An interrupted earlier run is completed, not started over (the download
# is the slow part, and pip skips what is already installed).
mkdir -p "$VENVS_DIR"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV" >&2
if [[ "$SPEC" == *+cpu ]]; then
  # A CPU-only build is not on the registry; take it from pip's configured
  # sources (a find-links folder or the PyTorch CPU index).
  PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
  "${PIP[@]}" "torch==$SPEC" >&2
else
  PIP=(env PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS="${TORCH_FIND_LINKS:-}"
       "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-cache-dir)
  "${PIP[@]}" "torch==$SPEC" >&2
fi
# The rest with torch held at its version, so nothing replaces it.
# (The distribution's version: the registry's CUDA wheel says 2.15.0 there,
# while torch.__version__ says 2.15.0+cu132.)
"$VENV/bin/python" -c 'from importlib.metadata import version; print("torch==" + version("torch"))' \
    > "$VENV/torch-pin.txt"
"${PIP[@]}" -c "$VENV/torch-pin.txt" "${REQS[@]}" >&2
"$VENV/bin/python" -c 'import torch, sys; print(f"{sys.argv[1]}: torch {torch.__version__}, CUDA {torch.version.cuda}", file=sys.stderr)' "$VENV"
touch "$VENV/.complete"
echo "$VENV"
