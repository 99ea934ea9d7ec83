#!/usr/bin/env bash
# The first run on a real GPU, in one command (target: under 8 minutes):
# build the CUDA kernels for this GPU only, run the test suite's CUDA cases,
# run the GPU benchmark preset, and print each shape's measured time beside
# the model's prediction (benchmarks/gpu_predictions.json, written by
# benchmarks/gpu_model.py), so the first measurement checks the model.
#
#   bash scripts/gpu_check.sh                 # needs a CUDA build of torch, nvcc, an NVIDIA GPU
#   OUT=/tmp/check bash scripts/gpu_check.sh  # where the logs and the CSV go (default: runs/gpu-check)
#
# Prints the time of each step; exits non-zero when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-runs/gpu-check}"
mkdir -p "$OUT"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

step "the GPU and torch"
"$PY" - <<'PY' | tee "$OUT/device.txt"
import sys, torch
if torch.version.cuda is None or not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU: install a CUDA build of torch on a GPU machine")
p = torch.cuda.get_device_properties(0)
print(f"{torch.cuda.get_device_name()} | sm_{p.major}{p.minor} | {p.multi_processor_count} SMs | "
      f"torch {torch.__version__} CUDA {torch.version.cuda}")
PY
ARCH="$("$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.major}.{p.minor}")')"
DEVICE="$("$PY" -c 'import torch; print(torch.cuda.get_device_name())')"

step "build for sm_${ARCH/./} only (FORCE_CUDA=1)"
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e . \
    > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
"$PY" -c "import iwae_fused, torch; print('smoke:', iwae_fused.iwelbo(torch.randn(50, 8, device='cuda')))"

step "the test suite's CUDA cases (device=cuda, every op and dtype against the float64 reference)"
"$PY" -m pytest -q -x -k "cuda and not emulat" tests -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests.txt"

step "the GPU benchmark preset (float32, fwd and fwd+bwd, no torch.compile)"
"$PY" benchmarks/bench.py --device cuda --preset gpu --no-compile --repeats 5 \
    --csv "$OUT/bench.csv" --markdown "$OUT/bench.md" > "$OUT/bench.log" 2>&1 \
    || { tail -40 "$OUT/bench.log"; exit 1; }

step "measured beside the model's prediction"
"$PY" benchmarks/gpu_check.py --measured "$OUT/bench.csv" --device "$DEVICE" | tee "$OUT/check.txt"
step "done: $OUT"
