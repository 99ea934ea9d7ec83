"""The compiler's report on every CUDA kernel, for each GPU architecture.

Compiles csrc/cuda/kernels_cuda.cu and vimco_cuda.cu with nvcc for device
code only (``-cubin``, ``IWAE_CUDA_DEVICE_ONLY``: no CUDA build of torch is
needed, the CPU wheel's headers suffice) and records, per kernel
instantiation and architecture, what ptxas reports (``-Xptxas -v``):
registers per thread, spill stores/loads, stack frame, static shared memory
and barriers. Where cuobjdump and nvdisasm are found (the CUDA toolkit, or
the pip packages nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm:
``pip install -r requirements/gpu-model.txt``), also from
the SASS: the global-load bytes one thread issues together in its hot loop
(the largest run of LDGs between branches inside a loop: the bytes in
flight per thread that Little's law needs), the loop's MUFU.EX2/LG2 count,
and local-memory instructions (LDL/STL: spills or arrays in local memory).

benchmarks/gpu_model.py reads the JSON this writes to size occupancy
(registers, shared memory) and bytes in flight.

    python benchmarks/gpu_resources.py                   # all archs -> benchmarks/gpu_resources.json
    python benchmarks/gpu_resources.py --check           # CI: also fail on a float32/16 spill
    python benchmarks/gpu_resources.py --archs 90 --out /tmp/r.json
"""

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = ("kernels_cuda.cu", "vimco_cuda.cu")
ARCHS = ("80", "90", "100", "120")
# The dtypes whose kernels must not spill (issue 22): a double kernel may
# (double arithmetic and a 64-bit state per lane are register-hungry, and
# float64 is not the GPU's fast path).
NO_SPILL_TYPES = ("float", "Half", "BFloat16")


def nvcc_path():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    path = os.path.join(home, "bin", "nvcc")
    return path if os.path.exists(path) else shutil.which("nvcc")


def torch_includes():
    from torch.utils import cpp_extension

    return cpp_extension.include_paths(), list(cpp_extension.COMMON_NVCC_FLAGS)


def sass_tools():
    """(cuobjdump, PATH with nvdisasm) or None."""
    dirs = [os.path.join(os.environ.get("CUDA_HOME") or "/usr/local/cuda", "bin")]
    try:
        import nvidia

        for root in nvidia.__path__:
            dirs += glob.glob(os.path.join(root, "*", "bin"))
    except ImportError:
        pass
    cuobjdump = nvdisasm = None
    for d in dirs:
        if not cuobjdump and os.path.exists(os.path.join(d, "cuobjdump")):
            cuobjdump = os.path.join(d, "cuobjdump")
        if not nvdisasm and os.path.exists(os.path.join(d, "nvdisasm")):
            nvdisasm = d
    if not (cuobjdump and nvdisasm):
        return None
    return cuobjdump, nvdisasm + os.pathsep + os.environ.get("PATH", "")


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    result = {}
    for m, d in zip(names, out.splitlines()):
        d = re.sub(r"\(anonymous namespace\)::|_GLOBAL__N__[0-9a-f_]+::", "", d)
        d = d.split("(")[0]
        for junk in ("void ", "iwae_fused::", "cuda::", "c10::", "at::"):
            d = d.replace(junk, "")
        result[m] = d
    return result


def parse_ptxas(text):
    """ptxas -v output -> {mangled name: resources}."""
    funcs, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"(?:Compiling entry function|Function properties for) '?(_Z\w+)'?", line)
        if m:
            cur = funcs.setdefault(m.group(1), {})
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
            b = re.search(r"used (\d+) barriers", line)
            cur["barriers"] = int(b.group(1)) if b else 0
            s = re.search(r"(\d+) bytes smem", line)
            cur["shared_bytes"] = int(s.group(1)) if s else 0
    return funcs


_LDG_BYTES = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


def ldg_bytes(ins):
    m = re.match(r"(?:@!?U?P\w+\s+)?LDG\.([\w.]+)", ins)
    if not m:
        return 0
    for part in m.group(1).split("."):
        if part in _LDG_BYTES:
            return _LDG_BYTES[part]
    return 4


def parse_sass(text):
    """SASS -> {mangled name: loop statistics}. Per loop (a backward branch,
    outermost first): the global-load bytes of its largest straight-line run
    of LDGs (loads issued together before a branch; the compiler reuses
    registers across runs, so this is the bytes one thread has in flight),
    its exponentials/logarithms (MUFU.EX2/LG2) and its instructions. And
    per kernel: local-memory instructions (LDL/STL: spills or arrays that
    live in local memory)."""
    funcs, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2).strip()))
    stats = {}
    for name, ins in funcs.items():
        local = sum(1 for _, i in ins if re.search(r"\b(LDL|STL)\b", i))
        loops = []
        for addr, i in ins:
            m = re.search(r"\bBRA(?:\.\w+)*\s+(0x[0-9a-f]+)", i)
            if not m or int(m.group(1), 16) >= addr:
                continue
            lo = int(m.group(1), 16)
            body = [x for a, x in ins if lo <= a <= addr]
            run = runmax = 0
            for x in body:
                if re.search(r"\b(BRA|EXIT|RET|CALL)\b", x):
                    runmax, run = max(runmax, run), 0
                run += ldg_bytes(x)
            loops.append({
                "ldg_run_bytes": max(runmax, run),
                "ldg_bytes": sum(ldg_bytes(x) for x in body),
                "mufu": sum(1 for x in body if re.search(r"MUFU\.(EX2|LG2)", x)),
                "fp64": sum(1 for x in body if re.match(r"(?:@!?P\w+\s+)?D(FMA|ADD|MUL)\b", x)),
                "instructions": len(body),
                "span": [lo, addr],
            })
        for lp in loops:  # innermost: no other loop inside its span
            lp["innermost"] = not any(o is not lp and lp["span"][0] <= o["span"][0] and
                                      o["span"][1] <= lp["span"][1] and o["span"] != lp["span"]
                                      for o in loops)
        hot = max(loops, key=lambda l: l["ldg_run_bytes"], default={"ldg_run_bytes": 0})
        stats[name] = {"loops": loops, "loop_ldg_bytes": hot["ldg_run_bytes"],
                       "local_instructions": local}
    return stats


def compile_one(arch, src, nvcc, incs, flags, tools, workdir):
    """{demangled kernel: resources} of one source for one architecture."""
    cubin = os.path.join(workdir, f"{src}.sm_{arch}.cubin")
    cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++20", "-lineinfo",
           "-DIWAE_CUDA_DEVICE_ONLY", "-Xptxas", "-v", "-o", cubin,
           "-I" + os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "cuda", src)]
    cmd += flags + [f"-I{i}" for i in incs]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"nvcc failed for {src}, sm_{arch}:\n{res.stderr[-4000:]}")
    funcs = parse_ptxas(res.stderr)
    sass = {}
    if tools:
        cuobjdump, path = tools
        out = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True,
                             env=dict(os.environ, PATH=path))
        sass = parse_sass(out.stdout)
    names = demangle(list(funcs))
    result = {}
    for mangled, r in funcs.items():
        r = dict(r, source=src)
        r.update(sass.get(mangled, {}))
        result[names[mangled]] = r
    return result


def spills(report):
    """[(arch, kernel, stores, loads)] for the float32/float16/bfloat16 kernels."""
    bad = []
    for arch, kernels in report["archs"].items():
        for name, r in kernels.items():
            scalar = name.split("<", 1)[1].split(",")[0].strip(" >") if "<" in name else ""
            if scalar in NO_SPILL_TYPES and (r.get("spill_stores") or r.get("spill_loads")):
                bad.append((arch, name, r.get("spill_stores"), r.get("spill_loads")))
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "gpu_resources.json"))
    ap.add_argument("--check", action="store_true", help="exit 1 on a spill in a float32/16 kernel")
    ap.add_argument("--no-sass", action="store_true", help="skip the SASS statistics")
    ap.add_argument("--jobs", type=int, default=2, help="compilations at a time")
    args = ap.parse_args()
    nvcc = nvcc_path()
    if not nvcc:
        sys.exit("nvcc not found: set CUDA_HOME to a CUDA toolkit")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    incs, flags = torch_includes()
    tools = None if args.no_sass else sass_tools()
    report = {"nvcc": version, "sass": bool(tools), "archs": {}}
    start = time.time()
    jobs = [(arch, src) for arch in args.archs.split(",") for src in SOURCES]
    with tempfile.TemporaryDirectory() as work, ThreadPoolExecutor(args.jobs) as pool:
        futures = {job: pool.submit(compile_one, *job, nvcc, incs, flags, tools, work) for job in jobs}
        for (arch, src), fut in futures.items():
            try:
                kernels = fut.result()
            except RuntimeError as e:
                sys.exit(str(e))
            report["archs"].setdefault(f"sm_{arch}", {}).update(kernels)
    print(f"nvcc: {time.time() - start:.0f} s for sm_{args.archs} ({len(jobs)} compilations, "
          f"{args.jobs} at a time)", file=sys.stderr)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    bad = spills(report)
    for arch, name, st, ld in bad:
        print(f"SPILL {arch} {name}: {st} bytes stored, {ld} loaded", file=sys.stderr)
    if args.check and bad:
        sys.exit(f"{len(bad)} float32/float16/bfloat16 kernel instantiation(s) spill registers")
    print(f"wrote {args.out}; spills in float32/16 kernels: {len(bad)}", file=sys.stderr)


if __name__ == "__main__":
    main()
