#!/usr/bin/env bash
# The scheduled check: the test suite, and the docs' build and code blocks, in
# a fresh virtual environment with the NEWEST releases of every tool the
# project uses (pytest, hypothesis, pyro-ppl, sphinx, ...: requirements/, no
# pins), so that a breaking release is found here and not by a user. torch
# stays at the pinned release unless --torch is given.
#
#   bash scripts/check_newest.sh           # newest tools, torch as run.sh installs it (2.13.0)
#   bash scripts/check_newest.sh --torch   # newest torch from PyPI too (a CUDA build, several GB)
#   bash scripts/check_newest.sh --lock    # if everything passes, rewrite requirements/constraints.txt
#
# Run it weekly and before a release. Exit status 0 when everything passed.
# The environment and a copy of the tree live in build/check-newest/ (git
# ignores build/); pytest
# arguments after -- are passed on (e.g. -- -x).
set -euo pipefail
cd "$(dirname "$0")/.."

newest_torch=""
lock=""
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) newest_torch=1 ;;
    --lock) lock=1 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "check_newest.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

dir="$PWD/build/check-newest"
rm -rf "$dir"
mkdir -p "$dir/src"
# A copy of the tree (tracked and new files, as they are now): its editable
# build and in-place extension never touch this checkout's.
git ls-files -z --cached --others --exclude-standard | xargs -0 tar -c --ignore-failed-read 2>/dev/null \
    | tar -x -C "$dir/src"
python3 -m venv "$dir/venv"
venv="$dir/venv"
py="$venv/bin/python"
start=$(date +%s)
cd "$dir/src"

# torch first, so that nothing below pulls in a torch of its own choosing.
if [ -n "$newest_torch" ]; then
  bash scripts/install_torch.sh "$py" --newest
else
  bash scripts/install_torch.sh "$py"
fi
# Every tool at its newest release: no constraints; --upgrade upgrades the
# tools named and leaves their dependencies (torch among them) alone unless
# a newer release of a tool needs a newer one.
"$py" -m pip install -q --disable-pip-version-check --upgrade pip
"$py" -m pip install -q --disable-pip-version-check --upgrade \
    -r requirements/docs.txt -r requirements/bench.txt

versions() {
  "$py" - <<'PY'
import importlib.metadata as m
names = ["torch", "pytest", "hypothesis", "pyro-ppl", "numpy", "mpmath", "scikit-learn", "sphinx",
         "myst-parser", "furo", "pytest-markdown-docs", "pytest-benchmark"]
print("  " + ", ".join(f"{n} {m.version(n)}" for n in names))
PY
}
echo "check_newest: versions under test:" >&2
versions >&2

status=0
VIRTUAL_ENV="$venv" IWAE_FUSED_CONSTRAINTS=none bash scripts/run.sh test "$@" \
    2>&1 | tee "$dir/test.log" || status=1
[ "${PIPESTATUS[0]}" = 0 ] || status=1
VIRTUAL_ENV="$venv" IWAE_FUSED_CONSTRAINTS=none bash scripts/run.sh docs \
    2>&1 | tee "$dir/docs.log" || status=1
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "check_newest: $(( $(date +%s) - start )) s; logs in $dir/" >&2
if [ "$status" != 0 ]; then
  echo "check_newest: FAILED with the newest releases above; requirements/constraints.txt keeps the last versions that passed" >&2
  exit 1
fi
echo "check_newest: passed with the newest releases above" >&2
if [ -n "$lock" ]; then
  {
    echo "# The versions the test suite and the docs last passed with (scripts/check_newest.sh --lock,"
    echo "# $(date -u +%Y-%m-%d), Python $("$py" -c 'import platform; print(platform.python_version())'),"
    echo "# torch $("$py" -c 'import torch; print(torch.__version__)')). torch is chosen when it is installed"
    echo "# (CPU or CUDA build) and is not pinned here, nor are the CUDA libraries it brings."
    "$py" -m pip freeze --exclude-editable --all \
      | grep -v -i -E '^(torch|triton|nvidia-[^=]*|cuda-[^=]*|pip|iwae[-_]fused)==' \
      | sort -f
  } > requirements/constraints.txt
  echo "check_newest: wrote requirements/constraints.txt" >&2
fi
