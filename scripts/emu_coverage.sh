#!/usr/bin/env bash
# Line and branch coverage of the CUDA device code under the emulated tests.
#
#   bash scripts/emu_coverage.sh [pytest args...]
#
# Builds iwae_fused._cuda_emu a second time, instrumented for gcov
# (IWAE_FUSED_EMU_COVERAGE=1, into build/emu-coverage: the installed build is
# left alone), runs tests/test_cuda_emulated.py,
# tests/test_cuda_emulator_checks.py, tests/test_launch_plans.py (the launch
# planner's split rules) and tests/test_extremes_vimco.py (VIMCO at gaps past
# the exponent range, +inf log-weights) against it, and reports with gcovr the
# line and branch coverage of kernels_cuda.cu, vimco_cuda.cu, tiles.h and of
# what the emulated build compiles of online_lse.h, vimco_math.h and
# global_memory.h (every template instantiation counted). Fails below 100%
# of lines or branches; the exclusions, each with its reason, are listed in
# tests/README.md. Needs iwae_fused installed (scripts/run.sh test does it);
# uses the Python environment run.sh uses (PYTHON, or the active virtual
# environment, or the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != base ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
  PY="$CONDA_PREFIX/bin/python"
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  echo "emu_coverage: no Python environment with iwae_fused: run bash scripts/run.sh test first" >&2
  exit 1
fi
if ! "$PY" -c "import iwae_fused" 2>/dev/null; then
  echo "emu_coverage: iwae_fused is not installed in $PY's environment: run bash scripts/run.sh test first" >&2
  exit 1
fi
out=build/emu-coverage

"$PY" -m pip install -q --disable-pip-version-check "gcovr==8.8"

mkdir -p "$out/html"
start=$(date +%s)
IWAE_FUSED_EMU_COVERAGE=1 MAX_JOBS="${MAX_JOBS:-2}" "$PY" setup.py -q build_ext \
    --build-lib "$out/lib" --build-temp "$out/temp" >"$out.build.log" 2>&1 \
    || { tail -50 "$out.build.log"; exit 1; }
lib=$(ls "$out"/lib/iwae_fused/_cuda_emu*.so)
built=$(date +%s)

# Counts of this run only.
find "$out/temp" -name '*.gcda' -delete
# (The emulator runs on one thread; one OpenMP thread for the ATen ops the
# tests compare with keeps them from waiting on a busy second core.)
OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" IWAE_FUSED_CUDA_EMU_LIB="$PWD/$lib" "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_cuda_emulated.py tests/test_cuda_emulator_checks.py tests/test_launch_plans.py \
    tests/test_extremes_vimco.py "$@"
tested=$(date +%s)

# Branches: those of the source, not the ones the compiler adds for C++
# exceptions (a throw, or a call that may throw: every emulated access can)
# or for code it proves unreachable, nor those of ATen's dtype dispatch
# macro (its cases for dtypes the op glue rejects before any launch).
"$PY" -m gcovr --root . --object-directory "$out/temp" "$out/temp" \
    --filter 'csrc/cuda/kernels_cuda\.cu' --filter 'csrc/cuda/vimco_cuda\.cu' \
    --filter 'csrc/cuda/tiles\.h' --filter 'csrc/online_lse\.h' \
    --filter 'csrc/vimco_math\.h' --filter 'csrc/global_memory\.h' \
    --exclude-throw-branches --exclude-unreachable-branches \
    --exclude-branches-by-pattern '\s*AT_DISPATCH_FLOATING_TYPES_AND2\(' \
    --txt "$out/coverage.txt" --txt-metric branch --txt-summary \
    --html-details "$out/html/index.html" \
    --fail-under-line 100 --fail-under-branch 100 \
    || { echo "emu_coverage: below 100% (per file: $out/coverage.txt, lines: $out/html/index.html)"; \
         cat "$out/coverage.txt"; exit 1; }
echo "emu_coverage: build $((built - start)) s, tests $((tested - built)) s;" \
     "per file: $out/coverage.txt, annotated source: $out/html/index.html"
