#!/usr/bin/env bash
# From a fresh machine to a result in one command: install what is missing,
# build the extension against the installed torch, then run the job.
#
#   bash scripts/run.sh bench   # the benchmark table (benchmarks/runs/; --publish: the committed one)
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
    scikit-learn pyro-ppl
# --no-build-isolation: build against the torch above, not a freshly fetched one.
# The tests also build the CUDA emulator (iwae_fused._cuda_emu: the CUDA kernels
# run on the CPU), so the suite's CUDA cases run on any machine.
emu=0
[ "$job" = test ] && emu=1
emu="${IWAE_FUSED_CUDA_EMU:-$emu}"
# Rebuild only when the sources, the build script or torch changed since the
# last build here (or the installed build is missing): a fingerprint of them
# is kept in build/stamp, with whether the emulator was built.
stamp=build/stamp
fingerprint="$( (find csrc -type f | sort | xargs cat; cat setup.py; "$PY" -c "import torch; print(torch.__version__)") \
    | "$PY" -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())")"
built=""
if [ -f "$stamp" ] && "$PY" -c "import iwae_fused" 2>/dev/null; then
  read -r old_fp old_emu < "$stamp" || true
  if [ "$old_fp" = "$fingerprint" ] && { [ "$emu" = 0 ] || [ "$old_emu" = 1 ]; } \
     && { [ "$emu" = 0 ] || "$PY" -c "import iwae_fused._cuda_emu" 2>/dev/null; }; then
    built=yes
  fi
fi
if [ -z "$built" ]; then
  what="the C++ extension"
  [ "$emu" = 1 ] && what="the C++ extension and the CUDA emulator"
  echo "iwae_fused: building $what against the installed torch (3-5 minutes on 2 cores)..." >&2
  start=$(date +%s)
  IWAE_FUSED_CUDA_EMU="$emu" MAX_JOBS="${MAX_JOBS:-2}" \
      "$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
  mkdir -p build && echo "$fingerprint $emu" > "$stamp"
  echo "iwae_fused: built in $(( $(date +%s) - start )) s" >&2
else
  echo "iwae_fused: the installed build is current (sources unchanged), not rebuilding" >&2
fi

case "$job" in
  test)
    exec "$PY" -m pytest -q tests "$@"
    ;;
  bench)
    # Runs go to benchmarks/runs/ (git ignores it); --publish refreshes the
    # committed table and plot on purpose.
    out=benchmarks/runs
    if [ "${1:-}" = "--publish" ]; then out=benchmarks; shift; fi
    mkdir -p "$out"
    exec "$PY" benchmarks/bench.py --markdown "$out/RESULTS.md" \
        --csv "$out/results.csv" --plot "$out/results.png" "$@"
    ;;
  *)
    echo "usage: bash scripts/run.sh {test|bench} [args...]" >&2
    exit 2
    ;;
esac
