#!/usr/bin/env bash
# CI: compile the CUDA kernels' device code with nvcc for sm_80, sm_90,
# sm_100 and sm_120 (no CUDA build of torch: the CPU wheel's headers and
# IWAE_CUDA_DEVICE_ONLY suffice) and fail on a register spill in any
# float32/float16/bfloat16 kernel. The report (registers, spills, shared
# memory per kernel and architecture) is what benchmarks/gpu_model.py reads;
# the committed one is benchmarks/gpu_resources.json.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch's headers come from the environment run.sh uses (PYTHON, the active
# virtual environment, or the project's .venv).
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
start=$(date +%s)
mkdir -p build
"$PY" benchmarks/gpu_resources.py --check --no-sass --archs 80,90,100,120 --out build/gpu_resources_ci.json
echo "nvcc check: $(( $(date +%s) - start )) s"
