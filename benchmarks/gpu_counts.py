"""What each CUDA kernel asks of an H100's memory, counted on the emulated GPU.

Nothing can time a GPU on this project's machines, and the kernels are
memory-bound by design, so their speed is decided by counts the emulator
makes exactly (iwae_fused.cuda_emulator, with request counting on):

- bytes: the distinct 32-byte sectors each launch touches, x 32, against
  the minimum (inputs read once, outputs written once): the DRAM traffic with
  a perfect cache; and the sectors of all requests (what L1 must serve);
- sectors per request: per warp-level access instruction, the sectors
  touched against the fewest those bytes could take (1.0 = ideal);
- lanes: the fraction of the 32 lanes active at each global access;
- shuffles, barriers (per thread, summed) and exponentials per element.

Shapes are the GPU benchmark preset's and the short-row ones, scaled down
(fewer outputs, the same K and layout) so the emulation takes seconds: the
per-element counts do not depend on the number of outputs once the grid
fills the device, and the launch decisions (split-K, vector width) are the
ones the host code takes for the scaled shape, printed beside it.

With --compiler, also the compiler's report from an nvcc build for sm_80 and
sm_90 (registers, spills, and whether the float32 kernels' SASS issues
128-bit global loads with no local-memory traffic); that needs a CUDA
toolkit and the CUDA build of torch (scripts/build_wheel.sh makes the venv).

    python benchmarks/gpu_counts.py                       # table to stdout
    python benchmarks/gpu_counts.py --markdown benchmarks/GPU-COUNTS.md --compiler
"""

import argparse
import datetime
import math
import os
import subprocess
import sys

import torch

import iwae_fused
from iwae_fused import cuda_emulator

OPS = torch.ops.iwae_fused

# (label, the preset's shape, the scaled shape, dim)
SHAPES = [
    ("training", (50, 128), (50, 128), 0),
    ("evaluation", (5000, 100), (5000, 100), 0),
    ("2^26 cols", (8192, 8192), (8192, 64), 0),
    ("2^26 rows", (8192, 8192), (64, 8192), 1),
    ("B=8, K=1e6 (split-K)", (1000000, 8), (65536, 8), 0),
    ("B=64, K=1e6, rows (split-K)", (64, 1000000), (64, 65536), 1),
    ("[2^26, 2] rows", (2**26, 2), (2**14, 2), 1),
    ("[2^20, 8] rows", (2**20, 8), (2**12, 8), 1),
    ("[2^20, 16] rows", (2**20, 16), (2**12, 16), 1),
    ("[2^20, 32] rows", (2**20, 32), (2**12, 32), 1),
    ("[2^20, 64] rows", (2**20, 64), (2**12, 64), 1),
    ("[1e6, 50, 2] small inner", (10**6, 50, 2), (2**11, 50, 2), 1),
]
VIMCO_SHAPES = [
    ("VIMCO [B, 50] rows", (2**20, 50), (2**11, 50), 1),
    ("VIMCO [50, B] cols", (50, 2**20), (50, 2**11), 0),
    ("VIMCO B=1, K=1e5", (1, 10**5), (1, 2**14), 1),
]


def _itemsize(dtype):
    return torch.empty((), dtype=dtype).element_size()


def _minimum(op, numel, outputs, dtype):
    es, om = _itemsize(dtype), 8 if dtype == torch.float64 else 4
    if op == "forward":  # read log_p, log_q; write the bound and the stats
        return 2 * numel * es + outputs * (es + 2 * om)
    if op == "backward":  # read log_p, log_q, g, stats; write both gradients
        return 4 * numel * es + outputs * (es + 2 * om)
    if op == "vimco forward":  # the bound and the 5-double state
        return 2 * numel * es + outputs * (es + 40)
    if op == "vimco backward":
        return 4 * numel * es + outputs * (es + 40)
    raise ValueError(op)


def _run(op, shape, dim, dtype):
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(shape, generator=gen).to(dtype)
    q = torch.randn(shape, generator=gen).to(dtype)
    outputs = p.numel() // shape[dim]
    g = torch.ones([s for i, s in enumerate(shape) if i != dim], dtype=dtype)
    if op.startswith("vimco"):
        out, state = OPS._vimco_forward(p, q, dim, False)
        if op == "vimco forward":
            fn = lambda: OPS._vimco_forward(p, q, dim, False)  # noqa: E731
        else:
            fn = lambda: OPS.vimco_backward(g, state, p, q, dim, False, [True, True])  # noqa: E731
    else:
        out, stats = OPS._iwelbo_forward(p, q, dim, False)
        if op == "forward":
            fn = lambda: OPS._iwelbo_forward(p, q, dim, False)  # noqa: E731
        else:
            fn = lambda: OPS.iwelbo_backward(g, stats, p, q, dim, False, 0.0, [True, True])  # noqa: E731
    cuda_emulator.clear_launches()
    with cuda_emulator.emulated(count_requests=True):
        fn()
    return cuda_emulator.launches(clear=True), p.numel(), outputs


def _launch_text(r, sm_count=132, sm_warps=64, sm_blocks=32, sm_shared=228 * 1024):
    """The configuration and its occupancy on an H100: resident warps are the
    blocks that fit an SM at once (by warps, blocks and shared memory per SM;
    registers are in the compiler report) times their warps, over all SMs."""
    blocks = r["grid"][0] * r["grid"][1] * r["grid"][2]
    threads = r["block"][0] * r["block"][1] * r["block"][2]
    warps = (threads + 31) // 32
    per_sm = min(sm_blocks, sm_warps // warps, sm_shared // r["shared_bytes"] if r["shared_bytes"] else sm_blocks)
    resident = min(blocks, sm_count * per_sm) * warps
    return (f"{r['kernel']} grid {r['grid'][0]}x{r['grid'][1]}x{r['grid'][2]} block "
            f"{r['block'][0]}x{r['block'][1]} ({blocks} blocks, {blocks * threads} threads, "
            f"{r['shared_bytes']} B shared; {resident} warps resident of {sm_count * sm_warps})")


def _row(label, preset, scaled, dim, op, dtype):
    launches, numel, outputs = _run(op, scaled, dim, dtype)
    tot = {k: sum(r[k] for r in launches) for k in launches[0] if isinstance(launches[0][k], int)}
    moved = 32 * (tot["load_distinct_sectors"] + tot["store_distinct_sectors"])
    requested = 32 * (tot["load_sectors"] + tot["store_sectors"])
    minimum = _minimum(op, numel, outputs, dtype)
    reqs = tot["load_requests"] + tot["store_requests"]
    sectors = tot["load_sectors"] + tot["store_sectors"]
    ideal = tot["load_ideal_sectors"] + tot["store_ideal_sectors"]
    kernels = "; ".join(_launch_text(r) for r in launches)
    return dict(
        shape=f"{label} {list(preset)}:{dim} (as {list(scaled)})",
        op=op, dtype=str(dtype).replace("torch.", ""),
        bytes_ratio=moved / minimum,
        l1_ratio=requested / minimum,
        sectors_per_request=sectors / max(reqs, 1),
        ideal_per_request=ideal / max(reqs, 1),
        lanes=tot["active_lanes"] / max(tot["lane_slots"], 1),
        shuffles=tot["shuffles"] / numel, barriers=tot["barriers"] / numel, exps=tot["exps"] / numel,
        kernels=kernels,
    )


def _ptxas(report, props):
    """Registers and spill bytes per kernel from ptxas -v."""
    func = None
    for line in report.splitlines():
        if "Compiling entry function" in line or "Function properties for" in line:
            func = line.split("'")[1] if "'" in line else line.split("for")[-1].strip()
            props.setdefault(func, {})
        elif func and "spill stores" in line:
            parts = line.split(",")
            props[func]["spills"] = "/".join(p.split()[0] for p in parts[1:3])  # stores/loads
        elif func and "Used" in line and "registers" in line:
            props[func]["registers"] = line.split("Used")[1].split("registers")[0].strip()


def _demangle(mangled):
    """Mangled kernel names -> 'reduce_rows_kernel<float, 4, 32, true>'."""
    out = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True).stdout
    names = {}
    for m, d in zip(mangled, out.splitlines()):
        for junk in ("(anonymous namespace)::", "iwae_fused::", "cuda::", "c10::", "void "):
            d = d.replace(junk, "")
        d = d.split("(")[0]
        names[m] = d
    return names


def _compiler_report(archs):
    """Registers/spills per kernel from ptxas -v, and the float32 kernels'
    SASS: 128-bit global loads present, local-memory traffic absent."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    venv = os.environ.get("VENV", os.path.join(root, ".venv-cuda"))
    py = os.path.join(venv, "bin", "python")
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if not os.path.exists(py) or not os.path.exists(os.path.join(cuda, "bin", "nvcc")):
        return "Compiler report skipped: needs the CUDA venv (bash scripts/build_wheel.sh) and a CUDA toolkit.\n"
    incs = subprocess.check_output([py, "-c", (
        "import glob, os, torch.utils.cpp_extension as c, nvidia\n"
        "d = [p for r in nvidia.__path__ for p in glob.glob(os.path.join(r, '*', 'include'))]\n"
        "print(' '.join(c.include_paths(device_type='cuda') + d))")], text=True).split()
    cuobjdump = subprocess.check_output([py, "-c", (
        "import os, triton; print(os.path.join(os.path.dirname(triton.__file__), "
        "'backends/nvidia/bin/cuobjdump'))")], text=True).strip()
    lines = []
    for arch in archs:
        props, sass = {}, ""  # mangled name -> registers, spills; the disassembly
        for src in ("kernels_cuda.cu", "vimco_cuda.cu"):
            cubin = f"/tmp/iwae_{src}_{arch}.cubin"
            cmd = [os.path.join(cuda, "bin", "nvcc"), "-cubin", f"-arch=sm_{arch}", "-O3", "-std=c++17",
                   "--expt-relaxed-constexpr", "-Xptxas", "-v", "-o", cubin,
                   "-I" + os.path.join(root, "csrc"), os.path.join(root, "csrc", "cuda", src)]
            cmd += [f"-I{i}" for i in incs]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode:
                return f"nvcc failed for {src}, sm_{arch}:\n{res.stderr[-2000:]}\n"
            _ptxas(res.stderr, props)
            sass += subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True).stdout
        per_func = {}
        current = None
        for line in sass.splitlines():
            if "Function :" in line:
                current = line.split("Function :")[1].strip()
                per_func[current] = {"ldg128": 0, "local": 0}
            elif current:
                if "LDG" in line and ".128" in line:
                    per_func[current]["ldg128"] += 1
                if "LDL" in line or "STL" in line:
                    per_func[current]["local"] += 1
        names = _demangle(list(props))
        lines.append(f"\n### sm_{arch}\n\n| kernel | registers | spill stores/loads (bytes) | 128-bit LDG | "
                     "local ld/st |\n|---|---|---|---|---|")
        for func in sorted(props, key=lambda f: names[f]):
            pr, sa = props[func], per_func.get(func, {})
            lines.append(f"| `{names[func]}` | {pr.get('registers', '?')} | {pr.get('spills', '?')} | "
                         f"{sa.get('ldg128', '?')} | {sa.get('local', '?')} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="float32,float16", help="comma-separated dtypes")
    ap.add_argument("--markdown", help="write the tables here")
    ap.add_argument("--compiler", action="store_true", help="also the nvcc/ptxas/SASS report")
    ap.add_argument("--archs", default="80,90")
    args = ap.parse_args()
    if not cuda_emulator.available():
        sys.exit("needs the CUDA emulator: IWAE_FUSED_CUDA_EMU=1 pip install --no-build-isolation -e .")
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    rows = []
    for dtype in dtypes:
        for label, preset, scaled, dim in SHAPES:
            for op in ("forward", "backward"):
                rows.append(_row(label, preset, scaled, dim, op, dtype))
        for label, preset, scaled, dim in VIMCO_SHAPES:
            for op in ("vimco forward", "vimco backward"):
                rows.append(_row(label, preset, scaled, dim, op, dtype))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    head = (f"# GPU efficiency, counted on the emulated GPU\n\n"
            f"Device: {cuda_emulator.H100['name']}; counted {datetime.date.today()}, commit {commit}, "
            f"torch {torch.__version__}. Made by `python benchmarks/gpu_counts.py`; no GPU ran this.\n\n"
            "bytes: distinct sectors x 32 per launch (DRAM with a perfect cache) / (inputs read once + "
            "outputs written once), and all requests' sectors x 32 (L1 traffic) / the same; "
            "sectors/request: touched / ideal for the same bytes; lanes: active / 32 at each global access; "
            "per element: shuffles, barriers, exponentials (per thread, summed).\n\n"
            "| shape | op | dtype | bytes / min | L1 bytes / min | sectors/request (ideal) | lanes | shuffles/el | barriers/el | exps/el |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['shape']} | {r['op']} | {r['dtype']} | {r['bytes_ratio']:.2f} | {r['l1_ratio']:.2f} | "
        f"{r['sectors_per_request']:.2f} ({r['ideal_per_request']:.2f}) | {r['lanes']:.0%} | "
        f"{r['shuffles']:.3f} | {r['barriers']:.3f} | {r['exps']:.2f} |\n" for r in rows)
    launches = "\n## Launches\n\n" + "".join(
        f"- {r['shape']}, {r['op']}, {r['dtype']}: {r['kernels']}\n" for r in rows)
    text = head + body + launches
    if args.compiler:
        text += "\n## Compiler report (nvcc -Xptxas -v, cuobjdump -sass)\n" + _compiler_report(args.archs.split(","))
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
