#!/usr/bin/env bash
# The package as a user gets it: build the sdist, check it is complete and
# torch-agnostic, build the CPU wheel from it, install that wheel into a fresh
# venv, check the metadata, and smoke-test every op from outside the checkout.
#
#   bash scripts/check_packaging.sh      # ~3-4 minutes on 2 cores (one build)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
# The project's environment (scripts/run.sh makes it): the active one, else .venv.
PY="${PYTHON:-${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}}"
PY="${PY:-$ROOT/.venv/bin/python}"
"$PY" -c "import torch" 2>/dev/null || {
  echo "check_packaging.sh: $PY has no torch; run bash scripts/run.sh test first (or set PYTHON)" >&2; exit 1; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PY" -m pip install -q --disable-pip-version-check build
echo "== sdist"
"$PY" -m build --sdist --no-isolation --outdir "$TMP/dist" . > "$TMP/sdist.log" 2>&1 || {
  tail -30 "$TMP/sdist.log"; exit 1; }
SDIST="$(ls "$TMP"/dist/*.tar.gz)"
echo "$(basename "$SDIST")"
"$PY" - "$SDIST" <<'PY'
import sys, tarfile
name = sys.argv[1]
assert "+" not in name.rsplit("/", 1)[-1], f"an sdist must carry no torch tag: {name}"
files = tarfile.open(name).getnames()
need = ["csrc/cpu/output_cache.h", "csrc/cuda/kernels_cuda.cu", "csrc/online_lse.h", "csrc/cuda/emu/simt.h",
        "LICENSE", "setup.py"]
missing = [f for f in need if not any(n.endswith("/" + f) for n in files)]
assert not missing, f"the sdist lacks {missing}"
print(f"  {len(files)} files, headers and CUDA sources included")
PY

echo "== CPU wheel from the sdist (compiles the extension)"
mkdir -p "$TMP/src" && tar -xzf "$SDIST" -C "$TMP/src"
(cd "$TMP"/src/iwae_fused-* && MAX_JOBS="${MAX_JOBS:-2}" "$PY" -m pip wheel -q --disable-pip-version-check \
    --no-build-isolation --no-deps -w "$TMP/wheels" . > "$TMP/wheel.log" 2>&1) || { tail -30 "$TMP/wheel.log"; exit 1; }
WHEEL="$(ls "$TMP"/wheels/*.whl)"
echo "$(basename "$WHEEL")"

echo "== fresh venv (torch as a user installs it), install the wheel, smoke test"
"$PY" -m venv "$TMP/venv"
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" \
    bash "$ROOT/scripts/install_torch.sh" "$TMP/venv/bin/python"
"$TMP/venv/bin/python" -m pip install -q --disable-pip-version-check packaging numpy  # numpy: torch warns without it
"$TMP/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$WHEEL"
cd "$TMP"  # not the checkout: the installed package must be the one imported
"$TMP/venv/bin/python" - "$TMP/venv" <<'PY'
import sys
from importlib import metadata
import torch
from packaging.requirements import Requirement
import iwae_fused
assert iwae_fused.__file__.startswith(sys.argv[1]), f"imported {iwae_fused.__file__}, not the venv's"
reqs = [Requirement(r) for r in metadata.requires("iwae_fused") if "extra ==" not in r]
torch_req = next(r for r in reqs if r.name == "torch")
# the tested versions (scripts/check_torch_versions.sh), the installed one, and a
# newer one: a source build is tied to whatever torch it is built against, so
# the requirement has no cap and no pin (release wheels pin theirs).
for v in ("2.13.0", "2.14.1", "2.15.0", "2.99.0", torch.__version__.split("+")[0]):
    assert torch_req.specifier.contains(v), f"{torch_req} excludes torch {v}"
assert not any(s.operator == "==" for s in torch_req.specifier), "torch must not be pinned"
meta = metadata.metadata("iwae_fused")
assert meta["License"] == "BSD-3-Clause" and meta["Version"] == iwae_fused.__version__, dict(meta)
print(f"  requires {torch_req}, license {meta['License']}, version {meta['Version']}")
PY
"$TMP/venv/bin/python" "$ROOT/scripts/smoke.py"
echo "packaging check passed"
