#!/usr/bin/env bash
# From a fresh machine to a result in one command: install what is missing,
# build the extension against the installed torch, then run the job.
#
#   bash scripts/run.sh bench   # the benchmark table (benchmarks/RESULTS.md + results.png)
#   bash scripts/run.sh test    # the test suite
#
# Extra arguments go to the job (pytest, or benchmarks/bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."

job="${1:-test}"
shift || true
PY="${PYTHON:-python3}"

# torch first and pinned: on these machines 2.13.0 is a local CPU wheel, and a
# bare "torch" (asked for by anything else) would pull the newest CUDA build.
# An installed 2.13.0 (CPU or CUDA) satisfies the pin and nothing is fetched.
"$PY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
"$PY" -m pip install -q --disable-pip-version-check \
    setuptools wheel ninja pybind11 numpy pytest hypothesis pytest-benchmark tqdm matplotlib \
    scikit-learn
# --no-build-isolation: build against the torch above, not a freshly fetched one.
# The tests also build the CUDA emulator (iwae_fused._cuda_emu: the CUDA kernels
# run on the CPU), so the suite's CUDA cases run on any machine.
emu=0
[ "$job" = test ] && emu=1
IWAE_FUSED_CUDA_EMU="${IWAE_FUSED_CUDA_EMU:-$emu}" MAX_JOBS="${MAX_JOBS:-2}" \
    "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .

case "$job" in
  test)
    exec "$PY" -m pytest -q tests "$@"
    ;;
  bench)
    exec "$PY" benchmarks/bench.py --markdown benchmarks/RESULTS.md \
        --csv benchmarks/results.csv --plot benchmarks/results.png "$@"
    ;;
  *)
    echo "usage: bash scripts/run.sh {test|bench} [args...]" >&2
    exit 2
    ;;
esac
