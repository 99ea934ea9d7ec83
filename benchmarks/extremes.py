"""Errors at the numerical extremes against 50-digit mpmath, on the CPU kernels
and (when built with IWAE_FUSED_CUDA_EMU=1) the emulated CUDA kernels.

    python benchmarks/extremes.py

Prints one Markdown row per case: the largest relative error of the value
and of each gradient (inf where the op returned inf or NaN; weights below
~1e-305, which may be flushed to 0, count as absolute errors), VIMCO's
log_q gradients relative to |signal| + w, and for the Renyi weights their
sum's distance from 1. benchmarks/NOTES.md (numerics
entries) records its output before and after the numerics fixes. The tests
that hold these figures to their bounds are tests/test_extremes*.py.
"""

import contextlib
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import iwae_fused  # noqa: E402
from iwae_fused import cuda_emulator  # noqa: E402

import mp_reference as mp  # noqa: E402


def backends():
    yield "cpu", contextlib.nullcontext
    if cuda_emulator.available():
        yield "cuda-emu", cuda_emulator.emulated


def max_rel(actual, exact, floor=0.0, scale=None):
    """The largest |actual - exact| / max(scale or |exact|, floor)."""
    scale = scale or [abs(e) for e in exact]
    return max(mp.rel_err(a, e, max(floor, float(sc))) if math.isfinite(float(a)) else math.inf
               for a, e, sc in zip(actual, exact, scale))


def floor(dtype):
    # Results below this may be flushed to 0 (denormals; tests/test_extremes_vimco.py).
    return max(torch.finfo(dtype).tiny, 1e3 * torch.finfo(torch.float64).tiny)


def vimco_case(values, dtype, ctx):
    """Errors of the bound (relative), the weights (relative, floored) and the
    log_q gradients signal - w, relative to |signal| + w: where the two
    nearly cancel (a sample far below the max) the difference is of second
    order in w, and that is the precision a difference can have."""
    x = torch.tensor(values, dtype=torch.float64).to(dtype)
    p = x.clone().requires_grad_()
    q = torch.zeros_like(x).requires_grad_()
    with ctx():
        out = iwae_fused.vimco(p, q)
        out.backward()
    xs = x.double().tolist()
    bound, w, sig, _ = mp.vimco(xs)
    fl = floor(dtype)
    return (mp.rel_err(out.item(), bound),
            max_rel(p.grad.double().tolist(), w, fl),
            max_rel(q.grad.double().tolist(), [s - ww for s, ww in zip(sig, w)], fl,
                    [abs(s) + ww for s, ww in zip(sig, w)]))


def renyi_case(values, counts, alpha, dtype, ctx):
    x = torch.cat([torch.full((n,), v, dtype=torch.float64) for v, n in zip(values, counts)]).to(dtype)
    p = x.clone().requires_grad_()
    with ctx():
        out = iwae_fused.iwelbo(p, alpha=alpha)
        out.backward()
    distinct = torch.tensor(values, dtype=torch.float64).to(dtype).double().tolist()
    bound, w = mp.renyi(distinct, alpha, counts)
    exact_grad = [w[i] for i, n in enumerate(counts) for _ in range(n)]
    tiny = torch.finfo(dtype).tiny
    return (mp.rel_err(out.item(), bound),
            max_rel(p.grad.double().tolist(), exact_grad, tiny),
            abs(p.grad.double().sum().item() - 1.0))


def main():
    print(f"torch {torch.__version__}; CPU kernels: {torch.backends.cpu.get_cpu_capability()}")
    print()
    print("| case | backend | value | grad log_p (w) | vimco: grad log_q (signal - w); renyi: sum(w) - 1 |")
    print("|---|---|---|---|---|")
    fmt = lambda v: "inf" if v == math.inf else f"{v:.1e}"  # noqa: E731
    for name, ctx in backends():
        for gap in (700.0, 720.0, 745.0, 800.0, 1e4):
            for dtype in (torch.float64, torch.float16):
                if dtype == torch.float16 and gap > 6e4:
                    continue
                r = vimco_case([0.0, -gap], dtype, ctx)
                print(f"| vimco [0, -{gap:g}] {str(dtype)[6:]} | {name} | " + " | ".join(map(fmt, r)) + " |")
            r = vimco_case([0.0, -gap, -gap - 1.5, -2 * gap], torch.float64, ctx)
            print(f"| vimco [0, -g, -g-1.5, -2g], g={gap:g} float64 | {name} | " + " | ".join(map(fmt, r)) + " |")
        gen = torch.Generator().manual_seed(0)
        worst = [0.0, 0.0, 0.0]
        for _ in range(20):
            vals = (torch.randn(8, generator=gen, dtype=torch.float64) * 300).tolist()
            r = vimco_case(vals, torch.float64, ctx)
            worst = [max(a, b) for a, b in zip(worst, r)]
        print(f"| vimco 20 random K=8 at scale 300, float64 | {name} | " + " | ".join(map(fmt, worst)) + " |")
        for values, counts, alpha, dtype in [
            ([0.0, -60.0], [1, 2999], 0.8, torch.float32),
            ([0.0, -60.0], [1, 225], 0.8, torch.float64),
            ([0.0, -60.0], [1, 9999], 0.8, torch.float64),
            ([0.0, -300.0], [1, 9999], 1.2, torch.float64),
            ([-100.0, -100.0 - 1e-6], [5000, 5000], 0.999999, torch.float64),
            ([123.456], [1], 1.26, torch.float32),
            ([123.456], [1], 0.5, torch.float64),
            ([10000.3, 10000.0, 9999.1], [1, 1, 1], 0.74, torch.float32),
            ([10000.3, 10000.0, 9999.1], [1, 1, 1], 0.74, torch.float64),
        ]:
            r = renyi_case(values, counts, alpha, dtype, ctx)
            desc = "renyi a={} {} x {} {}".format(alpha, values, counts, str(dtype)[6:])
            print(f"| {desc} | {name} | " + " | ".join(map(fmt, r)) + " |")


if __name__ == "__main__":
    main()
