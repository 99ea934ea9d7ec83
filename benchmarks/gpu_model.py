"""A predicted time for every CUDA launch of the GPU preset, on an H100 SXM
and a B200, from facts that can be counted without a GPU.

No GPU runs this project's code, so its GPU speed is a model. What is
COUNTED (exact, reproducible here):
  * the launch plan: kernel instantiation, grid, block and integer
    arguments of every launch, at full size, from the host launch code
    itself (the emulator's plan-only mode: csrc/cuda/emu, nothing executes);
  * per kernel instantiation and architecture, from the compiler
    (benchmarks/gpu_resources.json, by benchmarks/gpu_resources.py):
    registers, spills, static shared memory, and from the SASS the global
    load bytes one thread has in flight in its hot loop and the loop's
    MUFU (exp/log) instructions;
  * the bytes each launch must move (inputs read once, outputs and
    workspaces written once; the emulator's distinct-sector counts in
    benchmarks/GPU-COUNTS.md check that the kernels move no more).
What is PREDICTED, from public constants (each cited in CONSTANTS):
  * blocks per SM by the occupancy rules (registers with their allocation
    granularity, shared memory, threads, blocks per SM);
  * waves: blocks over resident slots; a last partial wave runs with fewer
    bytes in flight;
  * bandwidth by Little's law: bytes in flight / loaded latency, the
    latency rising with utilisation (fitted on a published copy benchmark),
    capped at the fraction of peak HBM that the best published
    memory-bound kernels reach on that GPU;
  * the SFU bound (MUFU at 16 per clock per SM), the launch-overhead floor;
  * a launch's time is the largest of these; the limiting factor is named.

    python benchmarks/gpu_model.py                                  # table to stdout
    python benchmarks/gpu_model.py --markdown benchmarks/GPU-MODEL.md
    python benchmarks/gpu_model.py --json predictions.json          # for scripts/gpu_check.sh

Needs the emulated build (IWAE_FUSED_CUDA_EMU=1) for the launch plans.
"""

import argparse
import datetime
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# ---- constants, each with its source -----------------------------------------

GPUBENCH = "te42kyfo/gpu-benches (GitHub)"
CONSTANTS = {
    "H100 SXM": {
        "arch": ("sm_90", "compute capability 9.0 (CUDA C++ Programming Guide, 'Compute Capabilities')"),
        "sms": (132, "NVIDIA H100 Tensor Core GPU Architecture whitepaper: H100 SXM5 has 132 SMs"),
        "clock_hz": (1.98e9, "NVIDIA H100 Tensor Core GPU Architecture whitepaper: H100 SXM5 boost "
                             "clock 1980 MHz (only the SFU bound uses it)"),
        "peak_bps": (3.35e12, "NVIDIA H100 datasheet: 3.35 TB/s HBM3 (SXM)"),
        "eta": (3.01e12 / 3.35e12, "QuACK (Dao-AILab/quack, media/2025-07-10-membound-sol.md): softmax "
                                   "[16384, 131072] fp32 at 3.01 TB/s = 89.7% of peak DRAM throughput on "
                                   "H100 SXM (Nsight Compute); ~3 TB/s for every reduction size above 4k"),
        "fp64_per_s": (34e12 / 2, "NVIDIA H100 datasheet: FP64 34 TFLOPS (SXM, non-tensor), i.e. "
                                  "17e12 FP64 FMA lane-operations per second"),
        "launch_s": (2.5e-6, GPUBENCH + " gpu-small-kernels/h200.txt (commit c35574e): 10,000 "
                             "back-to-back launches of a 4096-element SCALE kernel, 64 kB in 2.5 us each "
                             "on H200 (Hopper, same launch path as H100)"),
    },
    "B200": {
        "arch": ("sm_100", "compute capability 10.0 (CUDA C++ Programming Guide)"),
        "sms": (148, "Chips and Cheese, 'Nvidia's B200: Keeping the CUDA Juggernaut Rolling': 74 SMs per "
                     "die x 2 = 148; pytorch/ao PR #4002 device query: 148 SMs"),
        "clock_hz": (1.965e9, "Chips and Cheese (ibid.): clocks 'similar to the H100's SXM5 variant'; "
                              "1965 MHz assumed (NVIDIA publishes no B200 boost clock)"),
        "peak_bps": (8.0e12, "NVIDIA DGX B200 / HGX B200 datasheet: 8 TB/s HBM3e per GPU (pytorch/ao "
                             "PR #4002 derives 7.67 TB/s from the 7680-bit bus at 3996 MHz)"),
        "eta": (6.5167e12 / 8.0e12, "NVIDIA/cutlass PR #2917: CuTe DSL RMSNorm [32768, 16384] bf16 at "
                                    "6516.67 GB/s on B200 = 81.5% of 8 TB/s"),
        "fp64_per_s": (40e12 / 2, "NVIDIA HGX B200 datasheet: FP64 40 TFLOPS per GPU"),
        "launch_s": (2.5e-6, "as H100 (no B200 figure found): " + GPUBENCH + " gpu-small-kernels/h200.txt"),
    },
}
# The GPU this project is lent for checks (scripts/gpu_check.sh compares its
# measurements with these predictions); not in the GPU-MODEL.md table.
CONSTANTS["H200"] = dict(CONSTANTS["H100 SXM"], **{
    "peak_bps": (4.8e12, "NVIDIA H200 datasheet: 4.8 TB/s HBM3e, 132 SMs (GH100)"),
    "eta": (CONSTANTS["H100 SXM"]["eta"][0], "assumed as H100 SXM (same SM and memory system design)"),
    "launch_s": (2.5e-6, GPUBENCH + " gpu-small-kernels/h200.txt (commit c35574e), measured on H200"),
})
TABLE_GPUS = ("H100 SXM", "B200")

# Per-architecture occupancy limits: CUDA C++ Programming Guide, table
# 'Technical Specifications per Compute Capability' (max resident blocks,
# warps, registers and shared memory per SM, 1 KB of shared memory reserved
# per block from 8.0 on), and the CUDA Occupancy Calculator's allocation
# granularity (registers per warp in units of 256; shared memory in 128 B).
ARCH_LIMITS = {
    "sm_80": dict(blocks=32, warps=64, regs=65536, smem=167936, smem_reserved=1024),
    "sm_90": dict(blocks=32, warps=64, regs=65536, smem=233472, smem_reserved=1024),
    "sm_100": dict(blocks=32, warps=64, regs=65536, smem=233472, smem_reserved=1024),
    "sm_120": dict(blocks=24, warps=48, regs=65536, smem=102400, smem_reserved=1024),
}
REG_UNIT = 256  # registers per warp are allocated in units of 256 (8 per thread)
SMEM_UNIT = 128
MUFU_PER_CLK = 16  # CUDA Programming Guide, 'Arithmetic Instructions' throughput
                   # table: exp2/log2/rcp (MUFU) 16 results per clock per SM, cc 5.x-12.x

# Loaded DRAM latency, fitted on a published copy benchmark (calibrate()):
# gpu-benches' gpu-stream on H200 (gpu-stream/h200.txt, commit fd7091f),
# one 8-byte load per thread, two blocks per SM, blocks of 32 to 1024 threads.
# L(rho) = L0 + k rho^2 with rho the fraction of peak in use; separately for
# read-only traffic ("read") and half reads, half writes ("scale", a copy).
H200 = dict(sms=132, peak_bps=4.8e12)  # NVIDIA H200 datasheet: 132 SMs (GH100), 4.8 TB/s
H100_PCIE = dict(sms=114, peak_bps=2.0e12)  # NVIDIA H100 PCIe datasheet: 114 SMs, 2.0 TB/s
STREAM_BLOCKS = list(range(32, 1025, 32))
STREAM = {  # GB/s by block size (2 blocks per SM), columns read and scale
    "H200": {
        "read": [123, 244, 361, 485, 588, 702, 805, 935, 1009, 1116, 1208, 1314, 1395, 1488, 1571,
                 1707, 1739, 1821, 1901, 1996, 2057, 2141, 2205, 2297, 2336, 2408, 2463, 2539, 2587,
                 2655, 2708, 2756],
        "scale": [240, 463, 654, 852, 977, 1120, 1250, 1395, 1506, 1632, 1746, 1864, 1964, 2064, 2157,
                  2263, 2334, 2417, 2495, 2572, 2645, 2715, 2780, 2844, 2896, 2948, 2997, 3042, 3079,
                  3112, 3139, 3165],
    },
    "H100 PCIe": {
        "read": [96, 189, 277, 368, 449, 533, 612, 702, 764, 841, 908, 985, 1045, 1116, 1179, 1261,
                 1300, 1362, 1416, 1473, 1527, 1578, 1624, 1680, 1714, 1759, 1795, 1837, 1871, 1897,
                 1919, 1942],
        "scale": [183, 341, 472, 607, 704, 817, 925, 1037, 1124, 1213, 1295, 1378, 1439, 1497, 1544,
                  1583, 1591, 1607, 1619, 1639, 1638, 1644, 1651, 1666, 1663, 1668, 1673, 1686, 1684,
                  1688, 1693, 1704],
    },
}
STREAM_SOURCE = (GPUBENCH + " gpu-stream/h200.txt (commit fd7091f) and cuda-stream/h100_pcie.txt "
                 "(commit cdcc732): STREAM-like kernels, one double per thread, 2 blocks per SM")


def const(gpu, key):
    return CONSTANTS[gpu][key][0]


# ---- occupancy ---------------------------------------------------------------


def occupancy(arch, regs, smem, threads):
    """(blocks per SM, the limiting resource) by the CUDA occupancy rules."""
    lim = ARCH_LIMITS[arch]
    warps = (threads + 31) // 32
    per_warp = math.ceil(max(regs, 1) * 32 / REG_UNIT) * REG_UNIT
    by = {
        "blocks": lim["blocks"],
        "threads": lim["warps"] // warps,
        "registers": (lim["regs"] // per_warp) // warps,
    }
    if smem:
        per_block = math.ceil((smem + lim["smem_reserved"]) / SMEM_UNIT) * SMEM_UNIT
        by["shared memory"] = lim["smem"] // per_block
    limiter = min(by, key=lambda k: (by[k], k != "blocks"))
    return by[limiter], limiter


# ---- loaded latency and Little's law ------------------------------------------


def _fit_latency(sms, peak, blocks, gbps, loads_per_byte):
    """Least squares of L = L0 + k rho^2 over one stream column."""
    xs, ys = [], []
    for b, bw in zip(blocks, gbps):
        bw *= 1e9
        inflight = sms * 2 * b * 8  # load bytes in flight
        load_bw = bw * loads_per_byte
        xs.append((bw / peak) ** 2)
        ys.append(inflight / load_bw)
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - k * mx, k


LATENCY = {
    "read": _fit_latency(H200["sms"], H200["peak_bps"], STREAM_BLOCKS, STREAM["H200"]["read"], 1.0),
    "copy": _fit_latency(H200["sms"], H200["peak_bps"], STREAM_BLOCKS, STREAM["H200"]["scale"], 0.5),
}


def latency(rho, write_frac):
    """Loaded latency (s) at utilisation rho, for a traffic mix with this
    fraction of bytes written (0: reads only, 0.5: a copy)."""
    mix = min(max(write_frac / 0.5, 0.0), 1.0)
    l0 = (1 - mix) * LATENCY["read"][0] + mix * LATENCY["copy"][0]
    k = (1 - mix) * LATENCY["read"][1] + mix * LATENCY["copy"][1]
    return l0 + k * rho * rho


def bandwidth(inflight, peak, cap, write_frac):
    """Total bytes/s that `inflight` load bytes sustain (Little's law with
    the loaded latency), at most cap (a fraction of peak)."""
    if inflight <= 0:
        return 0.0
    lo, hi = 0.0, cap * peak
    per_load = 1.0 / max(1.0 - write_frac, 1e-9)  # total bytes per load byte
    if inflight / latency(cap, write_frac) * per_load >= hi:
        return hi
    for _ in range(60):  # the fixed point BW = F / L(BW) by bisection
        mid = (lo + hi) / 2
        if inflight / latency(mid / peak, write_frac) * per_load > mid:
            lo = mid
        else:
            hi = mid
    return lo


# ---- what each launch moves ---------------------------------------------------


def _targs(kernel):
    inner = kernel[kernel.index("<") + 1:kernel.rindex(">")]
    return [a.strip() for a in inner.split(",")]


ES = {"float": 4, "double": 8, "Half": 2, "BFloat16": 2}


def launch_work(rec, case):
    """DRAM bytes (read, written), elements through the hot loop, elements
    per loop iteration, and whether the kernel loops over its grid."""
    k = rec["kernel"]
    name = k.split("<")[0]
    ta = _targs(k)
    es = ES[ta[0]]
    om = 8 if ta[0] == "double" else 4
    numel, n_out, op = case["numel"], case["outputs"], case["op"]
    args = rec["int_args"]
    pieces = rec["grid"][1]
    # The training forward writes the stats unless the backward recomputes them.
    saves = op == "fwdbwd" and case.get("stats_saved", True)
    out_bytes = n_out * es + (n_out * 2 * om if saves else 0)
    if name in ("reduce_rows_kernel", "reduce_cols_kernel", "reduce_tiles_kernel"):
        vec, has_q = int(ta[1]), ta[-1] == "true"
        read = numel * es * (2 if has_q else 1)
        split = name != "reduce_tiles_kernel" and pieces > 1
        written = 3 * pieces * n_out * om if split else out_bytes
        per_iter = {"reduce_rows_kernel": vec, "reduce_cols_kernel": 4 * vec,
                    "reduce_tiles_kernel": 4}[name]
        return read, written, numel, per_iter
    if name == "merge_kernel":
        return 3 * args[0] * n_out * om, out_bytes, 0, 1
    if name == "weights_kernel":
        vec, has_q = int(ta[1]), ta[2] == "true"
        read = numel * es * (2 if has_q else 1) + n_out * (2 * om + es)
        return read, 2 * numel * es, numel, vec
    if name == "weights_flat_kernel":  # <scalar_t, HAS_Q, ROWS>: 16-byte vectors
        has_q = ta[1] == "true"
        read = numel * es * (2 if has_q else 1) + n_out * (2 * om + es)
        return read, 2 * numel * es, numel, 16 // es
    if name == "weights_rows_kernel":  # <scalar_t, HAS_Q>: no stats, g per row
        has_q = ta[1] == "true"
        read = numel * es * (2 if has_q else 1) + n_out * es
        return read, 2 * numel * es, numel, 2 * (16 // es)  # two vectors per pass
    if name in ("vimco_tiles_kernel", "vimco_rows_kernel", "vimco_cols_kernel"):
        split = name == "vimco_rows_kernel" and pieces > 1
        written = 40 * pieces * n_out if split else n_out * (es + 40)
        return 2 * numel * es, written, numel, 1
    if name == "vimco_merge_kernel":
        return 40 * args[0] * n_out, n_out * (es + 40), 0, 1
    if name == "vimco_backward_kernel":
        return 2 * numel * es + n_out * (40 + es), 2 * numel * es, numel, 1
    raise ValueError(f"no work model for {k}")


def hot_loop(res, name):
    """(bytes in flight per thread, MUFU and FP64 instructions per
    iteration) from the SASS loop statistics: the innermost loop issuing
    the most load bytes together; for the shared-memory tiles, whose loads
    and arithmetic are separate loops, the costs of the loop without loads
    that does the most arithmetic."""
    loops = [l for l in res.get("loops") or [] if l.get("innermost", True)] or res.get("loops") or []
    if not loops:
        return None, 0, 0
    hot = max(loops, key=lambda l: l["ldg_run_bytes"])
    work = hot
    if "tiles" in name:
        work = max((l for l in loops if l["ldg_bytes"] == 0), default=hot,
                   key=lambda l: l["mufu"] + l.get("fp64", 0))
    return hot["ldg_run_bytes"], work["mufu"], work.get("fp64", 0)


# ---- one launch -----------------------------------------------------------------


def predict_launch(rec, case, gpu, resources):
    """The predicted time of one launch on `gpu`, its bounds and limiter."""
    arch = const(gpu, "arch")
    sms, clock, peak = const(gpu, "sms"), const(gpu, "clock_hz"), const(gpu, "peak_bps")
    eta, t_launch = const(gpu, "eta"), const(gpu, "launch_s")
    res = resources["archs"][arch].get(rec["kernel"])
    if res is None:
        raise KeyError(f"{rec['kernel']} is not in the compiler report for {arch}: "
                       "rerun benchmarks/gpu_resources.py")
    threads = rec["block"][0] * rec["block"][1] * rec["block"][2]
    blocks = rec["grid"][0] * rec["grid"][1] * rec["grid"][2]
    bpsm, occ_limit = occupancy(arch, res["registers"], res.get("shared_bytes", 0), threads)
    slots = sms * bpsm
    read, written, elements, per_iter = launch_work(rec, case)
    total = read + written
    wfrac = written / total if total else 0.0
    inflight_thread, mufu, fp64 = hot_loop(res, rec["kernel"].split("<")[0])
    if not inflight_thread:  # no SASS statistics: the source's loads per iteration
        inflight_thread = 16
    # Waves: full waves of `slots` blocks, then the rest; every block moves
    # the same bytes (grid-stride kernels have at most one wave).
    per_block = total / blocks
    t_mem = t_full = 0.0
    left = blocks
    while left > 0:
        n = min(left, slots)
        bw = bandwidth(n * threads * inflight_thread, peak, eta, wfrac)
        t_mem += n * per_block / bw
        left -= n
    bw_full = bandwidth(min(blocks, slots) * threads * inflight_thread, peak, eta, wfrac)
    t_full = total / bw_full  # as if the last wave were full too
    t_peak = total / (eta * peak)
    iters = elements / per_iter  # thread-iterations of the hot loop
    t_sfu = iters * mufu / (MUFU_PER_CLK * sms * clock)
    t_fp64 = iters * fp64 / const(gpu, "fp64_per_s")
    t = max(t_mem, t_sfu, t_fp64, t_launch)
    bounds = {
        "HBM (attainable peak)": t_peak,
        "bytes in flight": t_full - t_peak,
        "tail wave": t_mem - t_full,
        "SFU (exp/log)": t_sfu,
        "FP64 arithmetic": t_fp64,
        "launch overhead": t_launch,
    }
    if t == t_launch:
        limiter = "launch overhead"
    elif t == t_sfu:
        limiter = "SFU (exp/log)"
    elif t == t_fp64:
        limiter = "FP64 arithmetic"
    else:  # the larger loss over the attainable peak, if it matters
        loss = max(["bytes in flight", "tail wave"], key=lambda k: bounds[k])
        limiter = loss if bounds[loss] > 0.05 * t_peak else "HBM (attainable peak)"
    return dict(
        kernel=rec["kernel"], grid=rec["grid"], block=rec["block"], blocks=blocks, threads=threads,
        registers=res["registers"], spills=res.get("spill_stores", 0) + res.get("spill_loads", 0),
        shared=res.get("shared_bytes", 0), blocks_per_sm=bpsm, occupancy_limit=occ_limit,
        waves=blocks / slots, tail_efficiency=(blocks / slots) / math.ceil(blocks / slots),
        inflight_per_sm=min(blocks, slots) * threads * inflight_thread / min(sms, blocks),
        inflight_thread=inflight_thread, bytes=total, time=t, t_mem=t_mem, t_sfu=t_sfu,
        t_peak=t_peak, t_fp64=t_fp64, limiter=limiter,
        needed_per_sm=eta * peak * latency(eta, wfrac) * (1 - wfrac) / sms,
    )


# ---- the preset's shapes, planned at full size ----------------------------------------


def gpu_cases():
    """(label, shape, dim) of benchmarks/bench.py's gpu preset."""
    import bench

    cases = []
    for item in bench.GPU_SHAPES.split(","):
        dims, dim = item.split(":")
        shape = tuple(int(s) for s in dims.split("x"))
        cases.append((bench.LABELS.get(item, ""), shape, int(dim)))
    return cases


def vimco_cases():
    import gpu_counts

    return [(label, preset, dim) for label, preset, _, dim in gpu_counts.VIMCO_SHAPES]


def residency(gpu, resources):
    """Resident blocks per SM of every kernel on `gpu` (what the CUDA
    occupancy API answers the host code there), from the compiler report."""
    arch = const(gpu, "arch")
    return {name: occupancy(arch, r["registers"], r.get("shared_bytes", 0),
                            128 if name.startswith("vimco") else 256)[0]
            for name, r in resources["archs"][arch].items()}


def plan(op, shape, dim, dtype, vimco=False, gpu="H100 SXM", resources=None):
    """The full-size launch plan of one benchmark step on `gpu`, from the
    host code (plan-only emulation on untouched torch.empty inputs, the
    emulated device with the GPU's SM count and each kernel's occupancy)."""
    import torch

    from iwae_fused import cuda_emulator

    import iwae_fused

    ops = torch.ops.iwae_fused
    p = torch.empty(shape, dtype=dtype)
    q = torch.empty(shape, dtype=dtype)
    out_shape = [s for i, s in enumerate(shape) if i != dim]
    g = torch.zeros(out_shape, dtype=dtype)
    cuda_emulator.clear_launches()
    device = dict(sm_count=const(gpu, "sms"))
    if resources is not None:
        device["resident_blocks"] = residency(gpu, resources)
    with cuda_emulator.emulated(plan_only=True, **device):
        if vimco:
            if op == "fwd":
                ops.vimco(p, q, dim, False)
            else:
                _, state = ops._vimco_forward(p, q, dim, False)
                ops.vimco_backward(g, state, p, q, dim, False, [True, True])
        elif op == "fwd":
            ops.iwelbo(p, q, dim, False, 0.0)
        else:  # through autograd, which decides what the forward saves
            p.requires_grad_()
            q.requires_grad_()
            iwae_fused.iwelbo(p, q, dim).backward(g)
    return cuda_emulator.launches(clear=True)


def must_move(numel, outputs, op, es):
    """benchmarks/harness.py's bytes_moved: what GB/s is reported against."""
    fwd = (2 * numel + outputs) * es
    return fwd if op == "fwd" else fwd + 4 * numel * es


def predict_all(resources, dtypes=("float32", "float16"), gpus=TABLE_GPUS):
    import torch

    rows = []
    for dt in dtypes:
        dtype = getattr(torch, dt)
        es = dtype.itemsize
        for vimco, cases in ((False, gpu_cases()), (True, vimco_cases())):
            for label, shape, dim in cases:
                numel = math.prod(shape)
                outputs = numel // shape[dim]
                for op in ("fwd", "fwdbwd"):
                    case = dict(numel=numel, outputs=outputs, op=op, stats_saved=True)
                    row = dict(label=label if not vimco or label.startswith("VIMCO") else "VIMCO " + label, shape=list(shape), dim=dim,
                               dtype=dt, op=op, must_move=must_move(numel, outputs, op, es), gpus={})
                    for gpu in gpus:
                        launches = plan(op, shape, dim, dtype, vimco, gpu, resources)
                        case["stats_saved"] = not any(
                            r["kernel"].startswith("weights_rows_kernel") for r in launches)
                        per = [predict_launch(r, case, gpu, resources) for r in launches]
                        t = sum(x["time"] for x in per)
                        peak = const(gpu, "peak_bps")
                        row["gpus"][gpu] = dict(
                            time=t, launches=per,
                            plan=[dict(kernel=r["kernel"], grid=r["grid"], block=r["block"],
                                       int_args=r["int_args"]) for r in launches],
                            frac_peak=row["must_move"] / t / peak,
                            frac_attainable=row["must_move"] / t / (peak * const(gpu, "eta")),
                            floor_s=row["must_move"] / peak,
                            limiter=max(per, key=lambda x: x["time"])["limiter"],
                        )
                    rows.append(row)
    return rows


# ---- calibration -----------------------------------------------------------------


def calibrate():
    """The model against published measurements: the stream curves it was
    fitted on (H200) and one it was not (H100 PCIe, another SM count and
    peak), and the attainable-peak constants' own sources."""
    out = []
    for gpu, props in (("H200", H200), ("H100 PCIe", H100_PCIE)):
        for col, wfrac in (("read", 0.0), ("scale", 0.5)):
            errs = []
            pts = []
            for b, meas in zip(STREAM_BLOCKS, STREAM[gpu][col]):
                inflight = props["sms"] * 2 * b * 8
                pred = bandwidth(inflight, props["peak_bps"], 1.0, wfrac) / 1e9
                errs.append(pred / meas - 1)
                pts.append((b, meas, pred))
            out.append(dict(gpu=gpu, kernel=col, fitted=gpu == "H200", points=pts,
                            mean_abs=sum(abs(e) for e in errs) / len(errs),
                            max_abs=max(abs(e) for e in errs)))
    return out


# ---- report -------------------------------------------------------------------------


def _us(t):
    return f"{t * 1e6:,.1f}"


def markdown(rows, resources, cal):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    gpus = list(TABLE_GPUS)
    lines = [
        "# Predicted GPU speed (a model: no GPU ran this)",
        "",
        f"Generated {datetime.date.today()} at commit {commit} by `python benchmarks/gpu_model.py "
        f"--markdown benchmarks/GPU-MODEL.md`; compiler report: {resources['nvcc']}. "
        "Every figure below is a **prediction** from counted facts and public constants, not a "
        "measurement; `bash scripts/gpu_check.sh` measures the same shapes on a real GPU and prints "
        "them beside these predictions.",
        "",
        "**Counted** (exact): each launch's kernel, grid, block and arguments at full size, from the "
        "host launch code in plan-only emulation; registers, spills, shared memory and the SASS hot "
        "loop's load bytes and MUFU count per kernel from nvcc/ptxas/cuobjdump; the bytes each "
        "launch must move. **Predicted**: occupancy, waves, bandwidth from bytes in flight (Little's "
        "law with a loaded latency fitted on published data), the attainable fraction of peak HBM, "
        "the SFU and launch-overhead bounds.",
        "",
        "`% peak` is bytes that must move (benchmarks/harness.py: inputs read once, outputs written "
        "once, as bench.py reports GB/s) / predicted time / peak HBM; `% attainable` is the same "
        "against the fraction of peak the best published memory-bound kernel reaches on that GPU "
        "(the constant eta below), i.e. against the speed of light in practice. `limit`: what "
        "bounds the slowest launch. Shapes whose minimum time at peak is under 20 us are dominated "
        "by launch overhead and marked (launch-bound).",
        "",
    ]
    for dt in sorted({r["dtype"] for r in rows}, key=lambda d: d != "float32"):
        lines += [f"## {dt}", "",
                  "| shape | dim | op | launches | " + " | ".join(
                      f"{g} us | {g} % peak | {g} % attainable | {g} limit" for g in gpus) + " |",
                  "|" + "---|" * (4 + 4 * len(gpus))]
        for r in rows:
            if r["dtype"] != dt:
                continue
            cells = [f"{r['label']} {r['shape']}", str(r["dim"]), r["op"],
                     str(len(r["gpus"][gpus[0]]["launches"]))]
            for g in gpus:
                x = r["gpus"][g]
                small = x["floor_s"] < 20e-6
                cells += [_us(x["time"]), f"{100 * x['frac_peak']:.0f}%",
                          f"{100 * x['frac_attainable']:.0f}%" + (" (launch-bound)" if small else ""),
                          x["limiter"]]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Per launch (float32, H100 SXM / B200)", "",
              "| shape | op | kernel | grid x block | regs | blocks/SM (limit) | waves (tail eff.) | "
              "in flight/SM, needed (KB) | us H100 | us B200 | limit H100 / B200 |",
              "|" + "---|" * 11]
    for r in rows:
        if r["dtype"] != "float32":
            continue
        h, b = r["gpus"]["H100 SXM"]["launches"], r["gpus"]["B200"]["launches"]
        for x, y in zip(h, b):
            g, bl = x["grid"], x["block"]
            lines.append(
                f"| {r['label']} {r['shape']}:{r['dim']} | {r['op']} | `{x['kernel']}` | "
                f"{g[0]}x{g[1]}x{g[2]} x {bl[0] * bl[1] * bl[2]} | {x['registers']} | "
                f"{x['blocks_per_sm']} ({x['occupancy_limit']}) | {x['waves']:.2f} ({x['tail_efficiency']:.2f}) | "
                f"{x['inflight_per_sm'] / 1024:.0f}, {x['needed_per_sm'] / 1024:.0f} | "
                f"{_us(x['time'])} | {_us(y['time'])} | {x['limiter']} / {y['limiter']} |")
    lines += ["", "## Calibration against published measurements", "",
              f"Source: {STREAM_SOURCE}. The loaded latency L(rho) = L0 + k rho^2 was fitted on the "
              "H200 columns (read: L0 = {:.0f} ns, k = {:.0f} ns; copy: L0 = {:.0f} ns, k = {:.0f} ns); "
              "the H100 PCIe columns (114 SMs, 2.0 TB/s) are predicted with the same latency, "
              "not fitted.".format(LATENCY["read"][0] * 1e9, LATENCY["read"][1] * 1e9,
                                   LATENCY["copy"][0] * 1e9, LATENCY["copy"][1] * 1e9), "",
              "| GPU | kernel | fitted here | mean abs. error | max abs. error | at 64 / 256 / 1024 threads per block: measured -> predicted GB/s |",
              "|---|---|---|---|---|---|"]
    for c in cal:
        pts = {b: (m, p) for b, m, p in c["points"]}
        sample = ", ".join(f"{pts[b][0]} -> {pts[b][1]:.0f}" for b in (64, 256, 1024))
        lines.append(f"| {c['gpu']} | {c['kernel']} | {'yes' if c['fitted'] else 'no'} | "
                     f"{100 * c['mean_abs']:.0f}% | {100 * c['max_abs']:.0f}% | {sample} |")
    lines += ["", "Attainable peak (eta): the model reproduces its two sources by construction "
              "(QuACK's softmax at 3.01 TB/s on H100 SXM; CUTLASS's RMSNorm at 6.52 TB/s on B200): "
              "both kernels keep far more bytes in flight per SM than Little's law needs, so the "
              "model predicts each at eta x peak.", ""]
    lines += ["## Constants and their sources", ""]
    for g in CONSTANTS:
        for key, (val, src) in CONSTANTS[g].items():
            lines.append(f"- {g} {key} = {val if isinstance(val, str) else f'{val:.4g}'}: {src}")
    lines += [f"- occupancy limits per architecture: {json.dumps(ARCH_LIMITS)}; registers per warp in "
              f"units of {REG_UNIT}, shared memory in units of {SMEM_UNIT} B: CUDA C++ Programming "
              "Guide (Compute Capabilities table) and the CUDA Occupancy Calculator",
              f"- MUFU (exp2/log2) throughput {MUFU_PER_CLK} per clock per SM: CUDA C++ Programming "
              "Guide, arithmetic instruction throughput table",
              f"- loaded latency: fitted on the H200 columns of {STREAM_SOURCE}; checked, not fitted, "
              "on the H100 PCIe columns", ""]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resources", default=os.path.join(ROOT, "benchmarks", "gpu_resources.json"))
    ap.add_argument("--markdown")
    ap.add_argument("--json")
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--gpus", default=",".join(CONSTANTS),
                    help="GPUs to predict (the Markdown table shows H100 SXM and B200)")
    args = ap.parse_args()
    with open(args.resources) as f:
        resources = json.load(f)
    gpus = tuple(args.gpus.split(","))
    rows = predict_all(resources, args.dtypes.split(","), gpus)
    cal = calibrate()
    text = markdown(rows, resources, cal)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)
    if args.json:  # what scripts/gpu_check.sh compares a measurement with
        slim = [dict({k: r[k] for k in ("label", "shape", "dim", "dtype", "op", "must_move")},
                     gpus={g: {k: x[k] for k in ("time", "frac_peak", "frac_attainable", "limiter", "plan")}
                           for g, x in r["gpus"].items()}) for r in rows]
        with open(args.json, "w") as f:
            json.dump(slim, f, indent=0)


if __name__ == "__main__":
    main()
