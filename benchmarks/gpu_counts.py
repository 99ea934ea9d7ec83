"""What each CUDA kernel asks of the GPU, counted on the emulated GPU.

The kernels are memory-bound by design, and what decides their speed that
can be counted exactly without a GPU is counted here by the emulator
(iwae_fused.cuda_emulator, with request counting on):

- bytes: the distinct 32-byte sectors each launch touches, x 32, against
  the minimum (inputs read once, outputs written once): the DRAM traffic with
  a perfect cache (a lower bound: the real cache is finite); and the sectors
  of all requests (what L1 must serve);
- sectors per request: per warp-level access instruction, the sectors
  touched against the fewest those bytes could take (1.0 = ideal);
- lanes: the fraction of the 32 lanes active at each global access;
- SIMT: per warp and barrier interval, the lanes' counted operations
  (memory accesses, shuffles, exponentials, logarithms) against 32 x the
  busiest lane's (what the warp issues in lockstep); block: the same against
  every thread of the block (a thread with nothing to do in an interval,
  as in a tile's serial reduction, counts as idle);
- shared memory: warp-level requests per element, and wavefronts per
  request against the fewest (bank conflicts: 32 banks of 4 bytes);
- per element: SHFL instructions (a 64-bit shuffle is two), barriers (per
  thread, summed), exponentials and logarithms (every one, VIMCO's included).

Shapes are the GPU benchmark preset's, scaled down (fewer outputs, the same
K and layout) so the emulation takes seconds: per-element counts do not
depend on the number of outputs once a block's work is the same. The launch
configurations of the scaled shapes differ from the full-size ones; those,
and the predicted time of every full-size launch, are in
benchmarks/GPU-MODEL.md (benchmarks/gpu_model.py). Blocks per SM below use
the registers and shared memory that nvcc reports for sm_90
(benchmarks/gpu_resources.json).

    python benchmarks/gpu_counts.py                       # table to stdout
    python benchmarks/gpu_counts.py --markdown benchmarks/GPU-COUNTS.md
"""

import argparse
import datetime
import json
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


def _minimum(op, numel, outputs, dtype, stats):
    es, om = _itemsize(dtype), 8 if dtype == torch.float64 else 4
    st = 2 * om if stats else 0  # the saved stats, where the training step keeps them
    if op == "forward":  # read log_p, log_q; write the bound (and the stats)
        return 2 * numel * es + outputs * (es + st)
    if op == "backward":  # read log_p, log_q, g (and the stats); write both gradients
        return 4 * numel * es + outputs * (es + st)
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
    else:  # the training step's halves, through autograd (which decides what is saved)
        p.requires_grad_()
        q.requires_grad_()
        cuda_emulator.clear_launches()
        with cuda_emulator.emulated(count_requests=True):
            out = iwae_fused.iwelbo(p, q, dim)
            fwd = cuda_emulator.launches(clear=True)
            out.backward(g)
            bwd = cuda_emulator.launches(clear=True)
        stats = not any(r["kernel"].startswith("weights_rows_kernel") for r in bwd)
        return (fwd if op == "forward" else bwd), p.numel(), outputs, stats
    cuda_emulator.clear_launches()
    with cuda_emulator.emulated(count_requests=True):
        fn()
    return cuda_emulator.launches(clear=True), p.numel(), outputs, False


def _resources():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_resources.json")
    try:
        with open(path) as f:
            return json.load(f)["archs"]["sm_90"]
    except (OSError, KeyError):
        return {}


RESOURCES = _resources()


def _launch_text(r, sm_count=132):
    """The configuration and its occupancy on an H100: blocks per SM by
    registers (compiler report), shared memory, threads and blocks."""
    import gpu_model

    blocks = r["grid"][0] * r["grid"][1] * r["grid"][2]
    threads = r["block"][0] * r["block"][1] * r["block"][2]
    res = RESOURCES.get(r["kernel"])
    occ = ""
    if res:
        per_sm, limit = gpu_model.occupancy("sm_90", res["registers"], res.get("shared_bytes", 0), threads)
        resident = min(blocks, sm_count * per_sm) * ((threads + 31) // 32)
        occ = (f"; {res['registers']} registers, {per_sm} blocks/SM ({limit}), {resident} warps resident "
               f"of {sm_count * 64}")
    return (f"{r['kernel']} grid {r['grid'][0]}x{r['grid'][1]}x{r['grid'][2]} block "
            f"{r['block'][0]}x{r['block'][1]} ({blocks} blocks, {blocks * threads} threads, "
            f"{r['shared_bytes']} B shared{occ})")


def _row(label, preset, scaled, dim, op, dtype):
    launches, numel, outputs, stats = _run(op, scaled, dim, dtype)
    tot = {k: sum(r[k] for r in launches) for k in launches[0] if isinstance(launches[0][k], int)}
    moved = 32 * (tot["load_distinct_sectors"] + tot["store_distinct_sectors"])
    requested = 32 * (tot["load_sectors"] + tot["store_sectors"])
    minimum = _minimum(op, numel, outputs, dtype, stats)
    reqs = tot["load_requests"] + tot["store_requests"]
    sectors = tot["load_sectors"] + tot["store_sectors"]
    ideal = tot["load_ideal_sectors"] + tot["store_ideal_sectors"]
    sreqs = tot["shared_load_requests"] + tot["shared_store_requests"]
    kernels = "; ".join(_launch_text(r) for r in launches)
    return dict(
        shape=f"{label} {list(preset)}:{dim} (as {list(scaled)})",
        op=op, dtype=str(dtype).replace("torch.", ""),
        bytes_ratio=moved / minimum,
        l1_ratio=requested / minimum,
        sectors_per_request=sectors / max(reqs, 1),
        ideal_per_request=ideal / max(reqs, 1),
        lanes=tot["active_lanes"] / max(tot["lane_slots"], 1),
        simt=tot["warp_ops"] / max(tot["warp_op_slots"], 1),
        block=tot["block_ops"] / max(tot["block_op_slots"], 1),
        shared=sreqs / numel,
        wavefronts=tot["shared_wavefronts"] / max(sreqs, 1),
        ideal_wavefronts=tot["shared_ideal_wavefronts"] / max(sreqs, 1),
        shuffles=tot["shuffles"] / numel, barriers=tot["barriers"] / numel,
        exps=tot["exps"] / numel, logs=tot["logs"] / numel,
        kernels=kernels,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", default="float32,float16", help="comma-separated dtypes")
    ap.add_argument("--markdown", help="write the tables here")
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
            f"torch {torch.__version__}. Made by `python benchmarks/gpu_counts.py`; no GPU ran this. "
            "Shapes are scaled down (per-element counts); the full-size launch plans and the predicted "
            "time of each are in GPU-MODEL.md.\n\n"
            "bytes: distinct sectors x 32 per launch (DRAM with a perfect cache) / (inputs read once + "
            "outputs written once), and all requests' sectors x 32 (L1 traffic) / the same; "
            "sectors/request: touched / ideal for the same bytes; lanes: active / 32 at each global access; "
            "SIMT: per warp and barrier interval, the lanes' counted operations / (32 x the busiest lane's); "
            "block: the same over all threads of the block; shared: warp-level shared-memory requests per "
            "element, and wavefronts per request (ideal); per element: SHFL instructions (64-bit = 2), "
            "barriers (per thread, summed), exponentials and logarithms (every one, per thread, summed).\n\n"
            "| shape | op | dtype | bytes / min | L1 bytes / min | sectors/request (ideal) | lanes | SIMT | block "
            "| shared req/el | wavefronts/req (ideal) | shuffles/el | barriers/el | exps/el | logs/el |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['shape']} | {r['op']} | {r['dtype']} | {r['bytes_ratio']:.2f} | {r['l1_ratio']:.2f} | "
        f"{r['sectors_per_request']:.2f} ({r['ideal_per_request']:.2f}) | {r['lanes']:.0%} | "
        f"{r['simt']:.0%} | {r['block']:.0%} | {r['shared']:.3f} | "
        f"{r['wavefronts']:.2f} ({r['ideal_wavefronts']:.2f}) | "
        f"{r['shuffles']:.3f} | {r['barriers']:.3f} | {r['exps']:.2f} | {r['logs']:.3f} |\n" for r in rows)
    launches = "\n## Launches\n\n" + "".join(
        f"- {r['shape']}, {r['op']}, {r['dtype']}: {r['kernels']}\n" for r in rows)
    text = head + body + launches
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
