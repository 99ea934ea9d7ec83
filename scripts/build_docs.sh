#!/usr/bin/env bash
# The documentation site, built with warnings as errors, and every Python code
# block of its pages and of README.md run as pasted (pytest-markdown-docs: each
# block on its own, or after the blocks it continues; no hidden prelude).
# Needs the docs tools (requirements/docs.txt) and an installed build with the
# CUDA emulator: `bash scripts/run.sh docs` provides both, then calls this.
#
#   bash scripts/build_docs.sh            # site -> docs/_build/html, then the code blocks
#   bash scripts/build_docs.sh --no-run   # the site only
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"

start=$(date +%s)
rm -rf docs/_build/html docs/_build/doctrees
"$PY" -m sphinx -W --keep-going -q -b html -d docs/_build/doctrees docs docs/_build/html
# Development-log references and notes to maintainers must not reach a page
# (the same words tests/test_docs_examples.py looks for in the sources).
if grep -r -l -i -E '\bissues?\b|\bsessions?\b|NOTES\.md (CPU|CUDA)|\bengineers?\b|\bTODO\b|\bFIXME\b|\bTBD\b|FOR THE COORDINATOR' \
    docs/_build/html --include='*.html'; then
  echo "docs: the pages above contain development-log words (see tests/test_docs_examples.py)" >&2
  exit 1
fi
echo "docs: site built in $(( $(date +%s) - start )) s -> docs/_build/html/index.html" >&2

if [ "${1:-}" != "--no-run" ]; then
  start=$(date +%s)
  # -p no:cacheprovider: no .pytest_cache beside the pages; one thread per
  # process keeps the blocks' small models quick on a loaded machine.
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "$PY" -m pytest -q -p no:cacheprovider \
      --markdown-docs -m markdown-docs README.md docs
  echo "docs: code blocks run in $(( $(date +%s) - start )) s" >&2
fi
