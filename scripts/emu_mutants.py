"""Break the CUDA source on purpose, one planted bug at a time, and check that
the emulated tests catch each one (mutation testing of the emulator's tests).

    python scripts/emu_mutants.py            # every mutant (about a minute each)
    python scripts/emu_mutants.py walker-r   # by name

Each mutant is one textual change to a copy of csrc/ (build/emu-mutants/src:
the checkout is never touched): a loop's second pass broken (a carry of the
weights kernel's grid-stride walker, a grid-stride increment), a barrier
before shared memory is reused deleted, a stride of the planner doubled.
The copy is built as the emulator module (incrementally: only the changed
unit recompiles) and the tests named for the mutant are run against it; the
mutant is "caught" when one of them fails, and the script prints how. It
exits non-zero if any mutant survives, or if the unbroken copy fails.
Not part of CI (it rebuilds once per mutant); tests/README.md records a run.
"""

import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "build", "emu-mutants")
SRC = os.path.join(WORK, "src")

EMU = "tests/test_cuda_emulated.py"
LOOPS = EMU + "::test_loop_later_passes"

# name: (file under csrc/, original text, planted text, tests that must catch it)
MUTANTS = {
    # the weights kernel's walker (RunWalker::advance), each digit's carry
    "walker-j": ("cuda/kernels_cuda.cu", "    j -= carry * vecs;\n", "",
                 [LOOPS + "[weights-rows-all-digits-torch.float32-xyz]"]),
    "walker-r": ("cuda/kernels_cuda.cu", "    r -= carry * R;\n", "",
                 [LOOPS + "[weights-rows-all-digits-torch.float32-xyz]",
                  LOOPS + "[weights-cols-all-digits-torch.float32-xyz]",
                  EMU + "::test_full_size_shapes[eval-rows-1024x5000]"]),
    "walker-o": ("cuda/kernels_cuda.cu", "    o += dout + carry;\n", "    o += dout;\n",
                 [LOOPS + "[weights-rows-run-carry-torch.float32-xyz]"]),
    # the flat weights kernel's digits within a vector (a vector spans runs)
    "flat-j": ("cuda/kernels_cuda.cu", "      j -= cj * fast;\n", "",
               [EMU + "::test_weights_flat_kernel[torch.float32-log_q-rows]",
                EMU + "::test_weights_flat_kernel[torch.float32-log_q-cols]"]),
    "flat-r": ("cuda/kernels_cuda.cu", "      r += cj;\n", "",
               [EMU + "::test_weights_flat_kernel[torch.float32-log_q-cols]",
                LOOPS + "[weights-flat-rows-inner-torch.float32-xyz]"]),
    "flat-o": ("cuda/kernels_cuda.cu", "      o += cr;\n", "",
               [EMU + "::test_weights_flat_kernel[torch.float32-log_q-rows]",
                LOOPS + "[weights-flat-cols-torch.float32-xyz]"]),
    # barriers before shared memory is reused by the loop's next pass
    "rows-barrier": ("cuda/kernels_cuda.cu", "      __syncthreads(); // sm_* are rewritten by the next row\n",
                     "", [LOOPS + "[rows-block-rows-torch.float32-xyz]"]),
    "cols-barrier": ("cuda/kernels_cuda.cu", "    __syncthreads(); // sm_* are rewritten for the next o\n",
                     "", [LOOPS + "[cols-outer-torch.float32-xyz]"]),
    "tiles-barrier": ("cuda/kernels_cuda.cu", "    __syncthreads(); // the next tile overwrites this one\n",
                      "", [LOOPS + "[tiles-rows-torch.float32-xyz]"]),
    "vimco-tiles-barrier": ("cuda/vimco_cuda.cu",
                            "    __syncthreads(); // the next tile overwrites this one\n", "",
                            [LOOPS + "[vimco-tiles-torch.float32-xyz]"]),
    # grid-stride and tile loops: the second pass starts in the wrong place
    "rows-stride": ("cuda/kernels_cuda.cu", "       r += (int64_t)gridDim.x * kGroups) {",
                    "       r += (int64_t)gridDim.x * kGroups + 1) {",
                    [LOOPS + "[rows-warp-rows-torch.float32-xyz]"]),
    "tiles-stride": ("cuda/kernels_cuda.cu",
                     "  for (int64_t tl = blockIdx.x; tl < tiles; tl += gridDim.x) {\n    const int64_t o0",
                     "  for (int64_t tl = blockIdx.x; tl < tiles; tl += gridDim.x + 1) {\n    const int64_t o0",
                     [LOOPS + "[tiles-rows-torch.float32-xyz]"]),
    "merge-stride": ("cuda/kernels_cuda.cu", "       idx += (int64_t)gridDim.x * blockDim.x) {",
                     "       idx += (int64_t)gridDim.x * blockDim.x + 1) {",
                     [LOOPS + "[merge-outputs-torch.float32-xyz]"]),
    "vimco-rows-stride": ("cuda/vimco_cuda.cu",
                          "  for (int64_t r = (int64_t)blockIdx.x * kVimcoWarps + warp; r < n;\n"
                          "       r += (int64_t)gridDim.x * kVimcoWarps) {\n    const int64_t o",
                          "  for (int64_t r = (int64_t)blockIdx.x * kVimcoWarps + warp; r < n;\n"
                          "       r += (int64_t)gridDim.x * kVimcoWarps + 1) {\n    const int64_t o",
                          [LOOPS + "[vimco-rows-torch.float32-xyz]"]),
    "vimco-merge-pieces": ("cuda/vimco_cuda.cu", "p < pieces; p += 32)", "p < pieces; p += 64)",
                           [LOOPS + "[vimco-merge-pieces-torch.float32-xyz]"]),
    "vimco-cols-stride": ("cuda/vimco_cuda.cu", "       r += (int64_t)gridDim.x * blockDim.x) {\n"
                          "    vimco_math::forward_example",
                          "       r += (int64_t)gridDim.x * blockDim.x + 1) {\n"
                          "    vimco_math::forward_example",
                          [LOOPS + "[vimco-cols-torch.float32-xyz]"]),
    # the planner: an outer stride doubled (the storage bound catches it)
    "planner-outer-stride": ("plan.cpp", "    op.so = *so;\n", "    op.so = *so * 2;\n",
                             [EMU + "::test_reduction_path[rows-warp-torch.float32-log_q]",
                              EMU + "::test_odd_sizes_and_broadcasts[cols-middle-dim-odd-torch.float32-log_q]"]),
}


def run(cmd, **kw):
    return subprocess.run(cmd, cwd=kw.pop("cwd", ROOT), capture_output=True, text=True, **kw)


def build(py):
    env = dict(os.environ, IWAE_FUSED_EMU_COVERAGE="1", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    r = run([py, "setup.py", "-q", "build_ext", "--build-lib", os.path.join(WORK, "lib"),
             "--build-temp", os.path.join(WORK, "temp")], cwd=SRC, env=env)
    if r.returncode:
        sys.exit("emu_mutants: build failed:\n" + (r.stdout + r.stderr)[-3000:])
    lib = os.path.join(WORK, "lib", "iwae_fused")
    return os.path.join(lib, next(f for f in os.listdir(lib) if f.startswith("_cuda_emu")))


def test(py, lib, tests):
    env = dict(os.environ, IWAE_FUSED_CUDA_EMU_LIB=lib, OMP_NUM_THREADS="1")
    r = run([py, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests], env=env)
    first = next((line for line in r.stdout.splitlines() if line.startswith("E ")), "")
    return r.returncode, first


def main(names):
    py = sys.executable
    os.makedirs(WORK, exist_ok=True)
    # a copy of what the emulator build reads (sources keep their mtimes)
    for d in ("csrc", "requirements"):
        dst = os.path.join(SRC, d)
        if os.path.exists(dst):
            shutil.rmtree(dst)
        shutil.copytree(os.path.join(ROOT, d), dst, copy_function=shutil.copy2)
    for f in ("setup.py", "README.md"):
        shutil.copy2(os.path.join(ROOT, f), SRC)
    names = names or list(MUTANTS)
    every = sorted({t for n in names for t in MUTANTS[n][3]})
    lib = build(py)
    rc, first = test(py, lib, every)
    if rc:
        sys.exit(f"emu_mutants: the unbroken copy fails its tests: {first}")
    survived = []
    for name in names:
        path, old, new, tests = MUTANTS[name]
        target = os.path.join(SRC, "csrc", path)
        text = open(target).read()
        assert text.count(old) == 1, f"{name}: the text to break is not found once in {path}"
        start = time.time()
        with open(target, "w") as f:
            f.write(text.replace(old, new))
        try:
            lib = build(py)
            rc, first = test(py, lib, tests)
        finally:
            with open(target, "w") as f:
                f.write(text)
        verdict = "caught" if rc else "SURVIVED"
        print(f"{name:22s} {verdict:8s} ({time.time() - start:.0f} s) {first[:160]}", flush=True)
        if not rc:
            survived.append(name)
    if survived:
        sys.exit(f"emu_mutants: {len(survived)} mutant(s) survived: {', '.join(survived)}")


if __name__ == "__main__":
    main(sys.argv[1:])
