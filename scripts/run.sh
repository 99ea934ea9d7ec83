#!/usr/bin/env bash
# From a fresh clone to a result in one command. Uses the active virtual
# environment, or else the project's own (.venv, created on first use; git
# ignores it); never installs into a system Python. Installs what is missing
# (torch, then the pinned tools of requirements/), builds the extension
# against that torch when the sources changed, then runs the job.
#
#   bash scripts/run.sh test    # the test suite (also builds the CUDA emulator)
#   bash scripts/run.sh bench   # the benchmark table -> benchmarks/runs/ (--publish: the committed one)
#   bash scripts/run.sh docs    # the docs site -> docs/_build/html, and every code block of it run
#
# Extra arguments go to the job (pytest, benchmarks/bench.py, or nothing).
# Environment: TORCH_VERSION (default 2.13.0) and TORCH_INDEX_URL choose the
# torch installed when none is; MAX_JOBS the parallel compile jobs (2).
set -euo pipefail
cd "$(dirname "$0")/.."

job="${1:-test}"
shift || true
case "$job" in
  test|bench|docs) ;;
  *) echo "usage: bash scripts/run.sh {test|bench|docs} [args...]" >&2; exit 2 ;;
esac
say() { echo "iwae_fused: $*" >&2; }

# ---- the Python environment -------------------------------------------------
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  PY="$VIRTUAL_ENV/bin/python"
elif [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != base ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
  PY="$CONDA_PREFIX/bin/python"
else
  if [ ! -x .venv/bin/python ]; then
    base="$(command -v python3 || true)"
    if [ -z "$base" ]; then say "python3 not found: install Python 3.10 or newer"; exit 1; fi
    if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      say "$("$base" --version) is too old: torch needs Python 3.10 or newer"; exit 1
    fi
    say "creating the project's virtual environment .venv ($("$base" --version))"
    if ! "$base" -m venv .venv; then
      rm -rf .venv
      say "python3 -m venv failed: on Debian/Ubuntu install it with 'apt-get install python3-venv'"
      exit 1
    fi
  fi
  PY=.venv/bin/python
fi
say "Python environment: $("$PY" -c 'import sys; print(sys.prefix)')"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

# ---- torch --------------------------------------------------------------------
# Kept as installed when present (the extension is built against it); else the
# pinned release, the CPU build on a machine without an NVIDIA driver
# (scripts/install_torch.sh says which and from where).
bash scripts/install_torch.sh "$PY"

# ---- the job's tools, at the versions the suite last passed with ------------
reqs=(-r requirements/test.txt)
[ "$job" = bench ] && reqs=(-r requirements/bench.txt)
[ "$job" = docs ] && reqs=(-r requirements/docs.txt)
# IWAE_FUSED_CONSTRAINTS=none installs the newest releases instead of the
# pins (scripts/check_newest.sh). Skip pip's resolution (several seconds) when
# the same files were installed into this environment already.
constraints="${IWAE_FUSED_CONSTRAINTS:-requirements/constraints.txt}"
pins=(-c "$constraints")
[ "$constraints" = none ] && pins=()
mkdir -p build
deps_stamp="build/deps-$job-$("$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.prefix.encode()).hexdigest()[:12])')"
deps_fp="$( (cat requirements/*.txt; echo "$constraints") | "$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ "$(cat "$deps_stamp" 2>/dev/null)" != "$deps_fp" ]; then
  say "installing the $job tools (requirements/$job.txt; versions: ${constraints})"
  pip_install "${pins[@]}" "${reqs[@]}"
  echo "$deps_fp" > "$deps_stamp"
fi

# ---- the build ------------------------------------------------------------------
# The tests also build the CUDA emulator (iwae_fused._cuda_emu: the CUDA kernels
# run on the CPU), so the suite's CUDA cases run on any machine; so do the docs
# (a page runs it). Objects are kept in build/obj-* (setup.py): building the
# emulator after the main extension compiles the emulator alone.
emu=1
[ "$job" = bench ] && emu=0
emu="${IWAE_FUSED_CUDA_EMU:-$emu}"
# Rebuild when the sources, the build script or torch changed since the last
# build into this environment, or the installed build lacks the emulator.
stamp="build/stamp-$("$PY" -c 'import hashlib, sys; print(hashlib.sha256(sys.prefix.encode()).hexdigest()[:12])')"
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
  jobs="${MAX_JOBS:-2}"
  # The estimates: both modules built in 100 s on an idle 2-core machine
  # (torch 2.13, g++ 12, release flags; a clean clone's CI run).
  what="the C++ extension"
  estimate="under 2 minutes"
  if [ "$emu" = 1 ]; then
    what="the C++ extension and the CUDA emulator"
    estimate="about 2 minutes"
  fi
  if compgen -G "build/obj-*" >/dev/null; then
    estimate="only what changed since the last build; at most $estimate"
  fi
  load="$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo '?')"
  say "building $what against torch $("$PY" -c 'import torch; print(torch.__version__)') with $jobs jobs:"
  say "  $estimate on an idle 2-core machine (load now $load; more when busy). Progress:"
  start=$(date +%s)
  # pip -v shows the build's output; of ninja's lines only '[n/N] file' is kept.
  set +e
  : > build/last-build.log
  IWAE_FUSED_CUDA_EMU="$emu" MAX_JOBS="$jobs" \
      "$PY" -m pip install -v --disable-pip-version-check --no-build-isolation --no-deps -e . \
      > build/last-build.log 2>&1 &
  pid=$!
  tail -n +1 -f build/last-build.log --pid="$pid" 2>/dev/null | "$PY" -u scripts/build_progress.py
  wait "$pid"
  rc=$?
  set -e
  if [ "$rc" != 0 ]; then
    tail -n 60 build/last-build.log >&2
    say "the build failed (the whole log: build/last-build.log)"
    exit "$rc"
  fi
  echo "$fingerprint $emu" > "$stamp"
  say "built in $(( $(date +%s) - start )) s"
else
  say "the installed build is current (sources unchanged), not rebuilding"
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
  docs)
    PATH="$(dirname "$PY"):$PATH" exec bash scripts/build_docs.sh "$@"
    ;;
esac
