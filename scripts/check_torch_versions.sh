#!/usr/bin/env bash
# Build a clean copy of the package against each torch release and run the
# whole test suite there; print a table. Run it before each release, and record
# the table (benchmarks/NOTES.md; the docs give the supported versions).
#
#   bash scripts/check_torch_versions.sh                    # 2.13.0 2.14.1 2.15.0
#   bash scripts/check_torch_versions.sh 2.15.0             # one version
#   bash scripts/check_torch_versions.sh --cuda-arch 9.0 2.14.1
#                         # also compile the real CUDA kernels (one architecture)
#   bash scripts/check_torch_versions.sh --worktree ...     # the working tree, not HEAD
#
# Each version gets a cached venv (.venvs/torch-VERSION, scripts/torch_venv.sh:
# the registry's wheel, a CUDA build on Linux x86_64, ~5 GB; it runs on the
# CPU). The copy is built with the CPU kernels and the CUDA emulator (the suite's
# CUDA cases), as CI builds it. A maintainer script: minutes per version and
# gigabytes of downloads, so not a CI step.
#
# Environment: MAX_JOBS (default 2), VENVS_DIR and TORCH_FIND_LINKS (scripts/torch_venv.sh),
# PYTEST_ARGS (extra pytest arguments), OUT (also write the table to this file).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CUDA_ARCH=""
WORKTREE=""
VERSIONS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cuda-arch) CUDA_ARCH="$2"; shift 2 ;;
    --worktree) WORKTREE=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) VERSIONS+=("$1"); shift ;;
  esac
done
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(2.13.0 2.14.1 2.15.0)

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# One clean copy of the sources, never the build/ or .so of a developer build.
mkdir -p "$TMP/pristine"
if [ -n "$WORKTREE" ]; then
  WHAT="working tree of $(git rev-parse --short HEAD) (with uncommitted changes)"
  git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$TMP/pristine"
else
  WHAT="commit $(git rev-parse --short HEAD)"
  git archive HEAD | tar -xf - -C "$TMP/pristine"
fi
echo "checking $WHAT against torch ${VERSIONS[*]}" >&2

ROWS=()
STATUS=0
for v in "${VERSIONS[@]}"; do
  echo "== torch $v" >&2
  venv="$(bash "$ROOT/scripts/torch_venv.sh" "$v")"
  py="$venv/bin/python"
  torch_full="$("$py" -c 'import torch; print(torch.__version__)')"
  src="$TMP/src-$v"
  rm -rf "$src" && cp -a "$TMP/pristine" "$src"
  log="$TMP/build-$v.log"
  if [ -n "$CUDA_ARCH" ]; then
    build_env=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$CUDA_ARCH" CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}")
    kind="CPU + CUDA sm_${CUDA_ARCH//./} + emulator"
  else
    build_env=(FORCE_CPU=1)
    kind="CPU + emulator"
  fi
  start=$(date +%s)
  if ! (cd "$src" && env "${build_env[@]}" IWAE_FUSED_CUDA_EMU=1 MAX_JOBS="${MAX_JOBS:-2}" \
        "$py" setup.py build_ext --inplace > "$log" 2>&1); then
    tail -40 "$log" >&2
    ROWS+=("| $torch_full | $kind | build failed after $(( $(date +%s) - start )) s | | | | | |")
    STATUS=1
    continue
  fi
  build_s=$(( $(date +%s) - start ))
  echo "   built in $build_s s; running the suite" >&2
  start=$(date +%s)
  # From the copy's root: the package imported is the one just built in place.
  # shellcheck disable=SC2086
  (cd "$src" && "$py" -m pytest -q -p no:cacheprovider --junitxml="$TMP/junit-$v.xml" \
      tests ${PYTEST_ARGS:-} > "$TMP/test-$v.log" 2>&1) || true
  test_s=$(( $(date +%s) - start ))
  tail -3 "$TMP/test-$v.log" >&2
  counts="$("$py" - "$TMP/junit-$v.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except (OSError, ET.ParseError):
    print("0 0 0 0 -"); sys.exit()
suites = [root] if root.tag == "testsuite" else list(root)
n = lambda k: sum(int(s.get(k, 0)) for s in suites)
failed = []
for case in root.iter("testcase"):
    if case.find("failure") is not None or case.find("error") is not None:
        failed.append(case.get("classname", "").rsplit(".", 1)[-1] + "::" + case.get("name"))
passed = n("tests") - n("failures") - n("errors") - n("skipped")
print(passed, n("failures") + n("errors"), n("skipped"), n("tests"), ",".join(failed) or "-")
PY
)"
  read -r passed failed skipped total failed_ids <<< "$counts"
  [ "$total" -gt 0 ] && [ "$failed" -eq 0 ] || STATUS=1
  ROWS+=("| $torch_full | $kind | $build_s s | $passed | $failed | $skipped | $test_s s | $failed_ids |")
  echo "   ${ROWS[-1]}" >&2  # each row as soon as it is known: a version takes many minutes
done

{
  echo
  echo "iwae_fused $WHAT, $(date -u +%Y-%m-%d), $(uname -m), $(nproc) cores, MAX_JOBS=${MAX_JOBS:-2}, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| torch | built | build time | passed | failed | skipped | suite wall time | failures |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
} | tee ${OUT:+"$OUT"}
exit $STATUS
