#!/usr/bin/env bash
# One CUDA wheel for one torch release: scripts/build_wheels.sh for a single
# version (same steps: release flags, manylinux repair, SASS/PTX listing,
# smoke test, find-links pages).
#
#   bash scripts/build_wheel.sh                          # torch 2.13.0, setup.py's default architectures
#   TORCH_CUDA_ARCH_LIST="9.0" bash scripts/build_wheel.sh
#   TORCH_VERSION=2.15.0 bash scripts/build_wheel.sh
#
# The torch venv is .venvs/torch-VERSION (scripts/torch_venv.sh), which
# benchmarks/gpu_counts.py --compiler can use too (VENV=.venvs/torch-2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
exec bash scripts/build_wheels.sh --torch "${TORCH_VERSION:-2.13.0}" \
    ${TORCH_CUDA_ARCH_LIST:+--arch "$TORCH_CUDA_ARCH_LIST"} "$@"
